-- top-processes: processes that moved the most bytes in a time window (from samples), largest first
-- params: :since :until :limit :command
--
-- Sums the sample rows whose time is in [:since, :until) per process
-- (tgid, btime); running and finished processes alike.  NULL :since or
-- :until leaves that side open, NULL :command means every command, NULL
-- :limit every row.  Needs sampling (netatopd's default).
SELECT
    tgid,
    btime,
    command,
    uid,
    sum(sndpacks) AS sndpacks,
    sum(sndbytes) AS sndbytes,
    sum(rcvpacks) AS rcvpacks,
    sum(rcvbytes) AS rcvbytes,
    sum(total_bytes) AS total_bytes
FROM sample_totals
WHERE (:since IS NULL OR time >= :since)
  AND (:until IS NULL OR time < :until)
  AND (:command IS NULL OR command = :command)
GROUP BY tgid, btime
ORDER BY total_bytes DESC, tgid, btime
LIMIT coalesce(:limit, -1);
