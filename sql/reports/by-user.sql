-- by-user: bytes and packets per user (uid) in a time window (from samples), largest first
-- params: :since :until :limit :command :pid :order
--
-- Sample rows whose time is in [:since, :until), grouped by uid (NULL: the
-- owner could not be read); :command narrows to one command name, :pid to
-- one process; :order as in top-processes (ties: more bytes in all, then
-- more bytes sent, then the uid).
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
  AND (:pid IS NULL OR tgid = :pid)
GROUP BY uid
ORDER BY
    CASE :order
        WHEN 'packets' THEN sum(sndpacks) + sum(rcvpacks)
        WHEN 'sent' THEN sum(sndbytes)
        WHEN 'received' THEN sum(rcvbytes)
        WHEN 'sent-packets' THEN sum(sndpacks)
        WHEN 'received-packets' THEN sum(rcvpacks)
        ELSE sum(total_bytes)
    END DESC,
    sum(total_bytes) DESC, sum(sndbytes) DESC, uid
LIMIT coalesce(:limit, -1);
