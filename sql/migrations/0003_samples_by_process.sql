-- Schema version 3: samples by process.
--
-- When netatopd starts, the counters of processes still running continue
-- from what their samples add up to (their last sample): it looks their
-- rows up by (tgid, btime), which the primary key (time first) cannot do.

CREATE INDEX samples_process ON samples (tgid, btime);
