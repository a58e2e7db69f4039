-- recent-exits: finished processes with their final counters, most recent exit first
-- params: :since :until :limit :command
--
-- Rows of exited whose exit_time is in [:since, :until); exit_time is shown
-- in local time.
SELECT
    tgid,
    btime,
    command,
    uid,
    strftime('%Y-%m-%d %H:%M:%S', exit_time, 'unixepoch', 'localtime') AS exit_time,
    sndpacks,
    sndbytes,
    rcvpacks,
    rcvbytes,
    total_bytes,
    cmdline
FROM exited_totals
WHERE (:since IS NULL OR exit_time >= :since)
  AND (:until IS NULL OR exit_time < :until)
  AND (:command IS NULL OR command = :command)
ORDER BY exited_totals.exit_time DESC, tgid
LIMIT coalesce(:limit, -1);
