-- by-user: bytes and packets per user (uid) in a time window (from samples), largest first
-- params: :since :until :limit :command
--
-- Sample rows whose time is in [:since, :until), grouped by uid (NULL: the
-- owner could not be read); :command narrows to one command name.
SELECT
    uid,
    count(DISTINCT tgid || '/' || btime) AS processes,
    sum(sndpacks) AS sndpacks,
    sum(sndbytes) AS sndbytes,
    sum(rcvpacks) AS rcvpacks,
    sum(rcvbytes) AS rcvbytes,
    sum(total_bytes) AS total_bytes
FROM sample_totals
WHERE (:since IS NULL OR time >= :since)
  AND (:until IS NULL OR time < :until)
  AND (:command IS NULL OR command = :command)
GROUP BY uid
ORDER BY total_bytes DESC, uid
LIMIT coalesce(:limit, -1);
