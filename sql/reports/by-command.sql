-- by-command: bytes and packets per command name in a time window (from samples), largest first
-- params: :since :until :limit :command
--
-- Sample rows whose time is in [:since, :until), grouped by command;
-- processes counts the distinct processes (tgid, btime) behind each command.
SELECT
    command,
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
GROUP BY command
ORDER BY total_bytes DESC, command
LIMIT coalesce(:limit, -1);
