-- hourly: network totals per hour (from samples), oldest hour first
-- params: :since :until :limit :command :pid :order
--
-- A sample row counts in the hour its interval ends in.  hour_start is
-- the hour's first second (epoch seconds; netatop report shows it in local
-- time in its table format).  Hours are cut in UTC: in a zone like
-- UTC+05:30 they start at :30.  :pid narrows to one process; with :order
-- (as in top-processes) the busiest hours come first, ties oldest first.
SELECT
    CAST(time / 3600 AS INTEGER) * 3600 AS hour_start,
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
GROUP BY hour_start
ORDER BY
    CASE :order
        WHEN 'bytes' THEN sum(total_bytes)
        WHEN 'packets' THEN sum(sndpacks) + sum(rcvpacks)
        WHEN 'sent' THEN sum(sndbytes)
        WHEN 'received' THEN sum(rcvbytes)
        WHEN 'sent-packets' THEN sum(sndpacks)
        WHEN 'received-packets' THEN sum(rcvpacks)
    END DESC,
    hour_start
LIMIT coalesce(:limit, -1);
