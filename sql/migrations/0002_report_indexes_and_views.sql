-- Schema version 2: what the reports in sql/reports need.
--
-- An index on exited.exit_time (recent exits, retention, `netatop exited`)
-- and two views that add the sums reports keep asking for.  samples needs no
-- new index: its primary key starts with time.

CREATE INDEX exited_exit_time ON exited (exit_time);

-- exited plus totals: packets and bytes sent and received (TCP + UDP).
CREATE VIEW exited_totals AS
SELECT
    exited.*,
    tcpsndpacks + udpsndpacks AS sndpacks,  -- packets sent
    tcpsndbytes + udpsndbytes AS sndbytes,  -- bytes sent (wire)
    tcprcvpacks + udprcvpacks AS rcvpacks,  -- packets received
    tcprcvbytes + udprcvbytes AS rcvbytes,  -- bytes received (wire)
    tcpsndbytes + udpsndbytes + tcprcvbytes + udprcvbytes AS total_bytes
FROM exited;

-- samples plus the same totals, over each row's interval.
CREATE VIEW sample_totals AS
SELECT
    samples.*,
    tcpsndpacks + udpsndpacks AS sndpacks,
    tcpsndbytes + udpsndbytes AS sndbytes,
    tcprcvpacks + udprcvpacks AS rcvpacks,
    tcprcvbytes + udprcvbytes AS rcvbytes,
    tcpsndbytes + udpsndbytes + tcprcvbytes + udprcvbytes AS total_bytes
FROM samples;
