-- top-processes: processes that moved the most bytes in a time window (from samples), largest first
-- params: :since :until :limit :command :pid :order
--
-- Sums the sample rows whose time is in [:since, :until) per process
-- (pid, btime); running and finished processes alike.  NULL :since or
-- :until leaves that side open, NULL :command means every command, NULL
-- :pid every process, NULL :limit every row.  :order is bytes (the
-- default), packets, sent, received, sent-packets or received-packets,
-- largest first; ties go to more bytes in all, then to more bytes sent,
-- then to the lower pid.  Needs sampling (netatopd's default).
SELECT
    tgid AS pid,
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
  AND (:pid IS NULL OR tgid = :pid)
GROUP BY tgid, btime
ORDER BY
    CASE :order
        WHEN 'packets' THEN sum(sndpacks) + sum(rcvpacks)
        WHEN 'sent' THEN sum(sndbytes)
        WHEN 'received' THEN sum(rcvbytes)
        WHEN 'sent-packets' THEN sum(sndpacks)
        WHEN 'received-packets' THEN sum(rcvpacks)
        ELSE sum(total_bytes)
    END DESC,
    sum(total_bytes) DESC, sum(sndbytes) DESC, tgid, btime
LIMIT coalesce(:limit, -1);
