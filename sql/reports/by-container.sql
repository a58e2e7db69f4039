-- by-container: bytes and packets per container (runtime:id, or pod:UID) in a time window (from samples), largest first
-- params: :since :until :limit :command :pid :order
--
-- Sample rows whose time is in [:since, :until), grouped by
-- place_group('container', ...), the rule of netatop query --by container: the
-- container, else '(no container)' (the root cgroup, a .service, init.scope or
-- session-N.scope), else '(unknown)' (cgroup not read, or a row
-- written before schema version 4), else the cgroup path itself (a
-- layout netatopd does not name).  :command narrows to one command name,
-- :pid to one process; :order as in top-processes (ties: more bytes in
-- all, then more bytes sent, then the container).
SELECT
    place_group('container', cgroup, unit, container) AS container,
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
