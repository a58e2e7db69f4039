-- top-exited: finished processes that moved the most bytes in their life, largest first
-- params: :since :until :limit :command :pid :order
--
-- Rows of exited whose exit_time is in [:since, :until), ranked by their
-- final counters (works with sampling off); btime and exit_time are epoch
-- seconds.  :pid narrows to one process id; :order as in top-processes
-- (ties: more bytes in all, then more bytes sent, then the earlier exit).
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
        WHEN 'packets' THEN sndpacks + rcvpacks
        WHEN 'sent' THEN sndbytes
        WHEN 'received' THEN rcvbytes
        WHEN 'sent-packets' THEN sndpacks
        WHEN 'received-packets' THEN rcvpacks
        ELSE total_bytes
    END DESC,
    total_bytes DESC, sndbytes DESC, exit_time, tgid
LIMIT coalesce(:limit, -1);
