-- netatop history database: schema version 1 (the baseline).
--
-- A fresh database gets this file, then every numbered migration in
-- sql/migrations/ in order; netatopd.history.open_db() runs each file in one
-- transaction and sets PRAGMA user_version itself (files never touch it).
-- Times are REAL seconds since the epoch (UTC), except btime which is the
-- INTEGER process start in seconds since the epoch, as atop computes it.
-- Counters are the kernel module's struct taskcount: packets and bytes,
-- where the bytes of one packet are its load on the wire (IP length + link
-- header + 4).

-- One row per finished process: its final counters.
CREATE TABLE exited (
    tgid            INTEGER NOT NULL,   -- process id (thread group id)
    btime           INTEGER NOT NULL,   -- process start, seconds since the epoch
    command         TEXT    NOT NULL,   -- comm, at most 15 characters
    cmdline         TEXT,               -- full command line; NULL if it could not be read
    uid             INTEGER,            -- owner uid; NULL if unknown
    first_activity  REAL,               -- first packet counted, epoch seconds; NULL if none
    last_activity   REAL,               -- last packet counted, epoch seconds; NULL if none
    exit_time       REAL    NOT NULL,   -- when the daemon saw the process gone, epoch seconds
    tcpsndpacks     INTEGER NOT NULL DEFAULT 0,  -- TCP packets sent
    tcpsndbytes     INTEGER NOT NULL DEFAULT 0,  -- TCP bytes sent (wire)
    tcprcvpacks     INTEGER NOT NULL DEFAULT 0,  -- TCP packets received
    tcprcvbytes     INTEGER NOT NULL DEFAULT 0,  -- TCP bytes received (wire)
    udpsndpacks     INTEGER NOT NULL DEFAULT 0,  -- UDP packets sent
    udpsndbytes     INTEGER NOT NULL DEFAULT 0,  -- UDP bytes sent (wire)
    udprcvpacks     INTEGER NOT NULL DEFAULT 0,  -- UDP packets received
    udprcvbytes     INTEGER NOT NULL DEFAULT 0,  -- UDP bytes received (wire)
    PRIMARY KEY (tgid, btime)
) STRICT;

-- One row per process and sample: what its counters grew by in the interval
-- (time - interval_s, time].  Only non-zero deltas are stored.  A process's
-- exit adds one last row at its exit_time, so the sum of a process's rows is
-- its final counters when sampling ran for its whole life.
CREATE TABLE samples (
    time            REAL    NOT NULL,   -- end of the interval, epoch seconds
    interval_s      REAL    NOT NULL,   -- length of the interval, seconds
    tgid            INTEGER NOT NULL,   -- process id (thread group id)
    btime           INTEGER NOT NULL,   -- process start, seconds since the epoch
    command         TEXT    NOT NULL,   -- comm, at most 15 characters
    uid             INTEGER,            -- owner uid; NULL if unknown
    tcpsndpacks     INTEGER NOT NULL DEFAULT 0,  -- TCP packets sent in the interval
    tcpsndbytes     INTEGER NOT NULL DEFAULT 0,  -- TCP bytes sent in the interval (wire)
    tcprcvpacks     INTEGER NOT NULL DEFAULT 0,  -- TCP packets received in the interval
    tcprcvbytes     INTEGER NOT NULL DEFAULT 0,  -- TCP bytes received in the interval (wire)
    udpsndpacks     INTEGER NOT NULL DEFAULT 0,  -- UDP packets sent in the interval
    udpsndbytes     INTEGER NOT NULL DEFAULT 0,  -- UDP bytes sent in the interval (wire)
    udprcvpacks     INTEGER NOT NULL DEFAULT 0,  -- UDP packets received in the interval
    udprcvbytes     INTEGER NOT NULL DEFAULT 0,  -- UDP bytes received in the interval (wire)
    PRIMARY KEY (time, tgid, btime)
) STRICT;
