-- recent-exits: finished processes with their final counters, most recent exit first
-- params: :since :until :limit :command :pid :order
--
-- Rows of exited whose exit_time is in [:since, :until); btime and
-- exit_time are epoch seconds (netatop report shows them in local time in
-- its table format).  :pid narrows to one process id (a reused pid shows
-- each of its processes); with :order (as in top-processes) the largest
-- come first, ties most recent first.
SELECT
    tgid AS pid,
    btime,
    command,
    uid,
    exit_time,
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
  AND (:pid IS NULL OR tgid = :pid)
ORDER BY
    CASE :order
        WHEN 'bytes' THEN total_bytes
        WHEN 'packets' THEN sndpacks + rcvpacks
        WHEN 'sent' THEN sndbytes
        WHEN 'received' THEN rcvbytes
        WHEN 'sent-packets' THEN sndpacks
        WHEN 'received-packets' THEN rcvpacks
    END DESC,
    exit_time DESC, tgid
LIMIT coalesce(:limit, -1);
