-- hourly: network totals per hour (from samples), oldest hour first
-- params: :since :until :limit :command
--
-- A sample row counts in the hour its interval ends in.  hour_start is
-- the hour's first second (epoch seconds), hour the same in local time
-- (hours are cut in UTC: in a zone like UTC+05:30 they start at :30).
SELECT
    CAST(time / 3600 AS INTEGER) * 3600 AS hour_start,
    strftime('%Y-%m-%d %H:%M', CAST(time / 3600 AS INTEGER) * 3600, 'unixepoch', 'localtime') AS hour,
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
GROUP BY hour_start
ORDER BY hour_start
LIMIT coalesce(:limit, -1);
