-- top-exited-groups: top-exited summed per command, user, unit or container (--by), largest first
-- params: :since :until :limit :command :pid :order :by
--
-- Rows of exited whose exit_time is in [:since, :until), their final
-- counters summed per :by: command (the default), user (the uid; NULL:
-- not read), unit or container (the rule of netatop query --by,
-- place_group).  key is the group, processes how many finished in it.
-- :command, :pid and :order as in top-processes (ties: more bytes in
-- all, then more bytes sent, then the key).
SELECT
    CASE coalesce(:by, 'command')
        WHEN 'command' THEN command
        WHEN 'user' THEN uid
        ELSE place_group(:by, cgroup, unit, container)
    END AS key,
    count(*) AS processes,
    sum(sndpacks) AS sndpacks,
    sum(sndbytes) AS sndbytes,
    sum(rcvpacks) AS rcvpacks,
    sum(rcvbytes) AS rcvbytes,
    sum(total_bytes) AS total_bytes
FROM exited_totals
WHERE (:since IS NULL OR exit_time >= :since)
  AND (:until IS NULL OR exit_time < :until)
  AND (:command IS NULL OR command = :command)
  AND (:pid IS NULL OR tgid = :pid)
GROUP BY 1
ORDER BY
    CASE :order
        WHEN 'packets' THEN sum(sndpacks) + sum(rcvpacks)
        WHEN 'sent' THEN sum(sndbytes)
        WHEN 'received' THEN sum(rcvbytes)
        WHEN 'sent-packets' THEN sum(sndpacks)
        WHEN 'received-packets' THEN sum(rcvpacks)
        ELSE sum(total_bytes)
    END DESC,
    sum(total_bytes) DESC, sum(sndbytes) DESC, 1
LIMIT coalesce(:limit, -1);
