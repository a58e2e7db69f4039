"""Traffic and load makers for bench_daemon.py, run inside the benchmark's namespace.

Stage: none (a benchmark helper, not part of the daemon).  Each role is one
process started with ``ip netns exec NS python bench/traffic.py ROLE JSON``;
it pins itself to the CPU it is given, prints one JSON line when it is ready
and then obeys commands read from stdin, one per line, answering each with a
JSON line.  Every loop is bounded in packets and in time; traffic goes to
loopback addresses (127.0.0.1, ::1) only.

Roles:
  udp     established UDP flows: ``go RATE COUNT`` sends COUNT datagrams at
          RATE per second (0: as fast as it can) round robin over the flows.
  mixed   IPv4/IPv6 TCP/UDP: ``go RATE COUNT`` sends COUNT messages over four
          kinds (UDP v4, UDP v6, TCP v4, TCP v6, small TCP writes with
          TCP_NODELAY read by the other end); answers the packets that left,
          counted by the kernel (datagrams + tcpi_segs_out of all four TCP ends).
  newflow ``go``: forks a child that opens a new UDP socket, sends one
          datagram and keeps the socket open; answers its pid and send time.
  idle    holds PROCESSES forked children with DESCRIPTORS open descriptors in
          total (pipes), all asleep until ``exit``.
  flood   ``go COUNT``: one datagram from each of COUNT distinct source ports.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

TIME_LIMIT_S = 60.0  # no single command sends for longer than this
PR_SET_PDEATHSIG = 1
TCP_INFO_SEGS_OUT_OFFSET = 136  # struct tcp_info: __u32 tcpi_segs_out (linux/tcp.h)
TCP_INFO_BYTES = 232


def reply(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def pin(cpu: int | None) -> None:
    if cpu is not None and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def paced_send(senders: list[socket.socket], payload: bytes, rate: float, count: int) -> int:
    """Send count datagrams round robin, rate per second (0: unpaced); returns sent."""
    sent = 0
    flows = len(senders)
    start = time.perf_counter()
    deadline = start + TIME_LIMIT_S
    while sent < count:
        now = time.perf_counter()
        if now > deadline:
            break
        if rate:
            due = min(count, int((now - start) * rate) + 1)
            if due <= sent:
                time.sleep(0.0002)
                continue
        else:
            due = min(count, sent + 256)
        while sent < due:
            try:
                senders[sent % flows].send(payload)
            except OSError:  # ENOBUFS and friends: not offered
                pass
            else:
                sent += 1
    return sent


def udp_role(args: dict[str, Any]) -> None:
    flows = int(args.get("flows", 8))
    payload = b"\xa5" * int(args.get("payload_bytes", 64))
    receivers, senders = [], []
    for _ in range(flows):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.connect(receiver.getsockname())
        receivers.append(receiver)
        senders.append(sender)
    reply(pid=os.getpid(), flows=flows)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            break
        if words[0] == "go":
            started = time.time()
            sent = paced_send(senders, payload, float(words[1]), int(words[2]))
            reply(sent=sent, elapsed_s=time.time() - started)


def _tcp_pair(family: socket.AddressFamily, host: str) -> tuple[socket.socket, socket.socket]:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(1)
    client = socket.socket(family, socket.SOCK_STREAM)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect(listener.getsockname()[:2])
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    return client, server


def segs_out(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    return int(struct.unpack_from("=I", info, TCP_INFO_SEGS_OUT_OFFSET)[0])


def mixed_role(args: dict[str, Any]) -> None:
    payload = b"\x5a" * int(args.get("payload_bytes", 64))
    udp = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        receiver = socket.socket(family, socket.SOCK_DGRAM)
        receiver.bind((host, 0))
        sender = socket.socket(family, socket.SOCK_DGRAM)
        sender.connect(receiver.getsockname()[:2])
        udp.append((sender, receiver))
    tcp = [_tcp_pair(socket.AF_INET, "127.0.0.1"), _tcp_pair(socket.AF_INET6, "::1")]
    ends = [end for pair in tcp for end in pair]
    reply(pid=os.getpid())
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            break
        if words[0] != "go":
            continue
        rate, count = float(words[1]), int(words[2])
        segs_before = sum(segs_out(end) for end in ends)
        datagrams = 0
        start = time.perf_counter()
        deadline = start + TIME_LIMIT_S
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            if rate and sent >= int((time.perf_counter() - start) * rate) + 1:
                time.sleep(0.0002)
                continue
            kind = sent % 4
            if kind < 2:
                udp[kind][0].send(payload)
                datagrams += 1
            else:
                client, server = tcp[kind - 2]
                client.send(payload)
                try:
                    while server.recv(65536):
                        pass
                except BlockingIOError:
                    pass
            sent += 1
        time.sleep(0.2)  # let the last ACKs leave
        for _, server in tcp:
            try:
                while server.recv(65536):
                    pass
            except BlockingIOError:
                pass
        time.sleep(0.1)
        segments = sum(segs_out(end) for end in ends) - segs_before
        reply(sent=datagrams + segments, datagrams=datagrams, tcp_segments=segments)


def newflow_role(args: dict[str, Any]) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    destination = receiver.getsockname()
    children: list[int] = []
    reply(pid=os.getpid(), port=destination[1])
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            break
        if words[0] != "go":
            continue
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a brand-new socket, one datagram, then wait
            try:
                os.close(read_end)
                die_with_parent()
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sent_s = time.time()
                sock.sendto(b"x" * 32, destination)
                os.write(write_end, struct.pack("=d", sent_s))
                os.close(write_end)
                time.sleep(TIME_LIMIT_S)
            finally:
                os._exit(0)
        os.close(write_end)
        sent_s = struct.unpack("=d", os.read(read_end, 8))[0]
        os.close(read_end)
        children.append(pid)
        reply(pid=pid, sent_s=sent_s)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def idle_role(args: dict[str, Any]) -> None:
    processes = int(args["processes"])
    descriptors = int(args["descriptors"])
    per_process = max(1, descriptors // processes)
    children: list[int] = []
    try:
        for _ in range(processes):
            pid = os.fork()
            if pid == 0:
                try:
                    die_with_parent()
                    for _ in range(per_process // 2):
                        os.pipe()
                    if per_process % 2:
                        os.open("/dev/null", os.O_RDONLY)
                    time.sleep(600)
                finally:
                    os._exit(0)
            children.append(pid)
        time.sleep(0.5)  # let the children open their descriptors
        reply(pid=os.getpid(), processes=len(children), descriptors=per_process * len(children))
        sys.stdin.readline()
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


def flood_role(args: dict[str, Any]) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    destination = receiver.getsockname()
    reply(pid=os.getpid())
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            break
        sent = 0
        deadline = time.monotonic() + TIME_LIMIT_S
        for _ in range(int(words[1])):
            if time.monotonic() > deadline:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.sendto(b"f", destination)
            sock.close()
            sent += 1
        reply(sent=sent)


ROLES = {
    "udp": udp_role,
    "mixed": mixed_role,
    "newflow": newflow_role,
    "idle": idle_role,
    "flood": flood_role,
}


def main() -> None:
    role = sys.argv[1]
    args: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    pin(args.get("cpu"))
    die_with_parent()
    ROLES[role](args)


if __name__ == "__main__":
    main()
