-- Schema version 4: where each process ran.
--
-- The cgroup v2 path of a process (the "0::" line of /proc/PID/cgroup, read
-- at exec or when the process was first seen), the systemd unit it names
-- and the container ("runtime:id", or "pod:UID" for a Kubernetes pod).
-- NULL where unknown: rows written before this version keep their data.

ALTER TABLE exited ADD COLUMN cgroup TEXT;
ALTER TABLE exited ADD COLUMN unit TEXT;
ALTER TABLE exited ADD COLUMN container TEXT;
ALTER TABLE samples ADD COLUMN cgroup TEXT;
ALTER TABLE samples ADD COLUMN unit TEXT;
ALTER TABLE samples ADD COLUMN container TEXT;
