"""What the eBPF ownership helper adds to a sendmsg and to a TCP connection.

Run as root: ``.venv/bin/python bench/bench_ebpf.py``.  Each measurement is
taken with the helper off, then loaded, then off again (to see the drift),
on the host's loopback only, with bounded counts; the best of REPEATS rounds
is kept for each.  A small UDP ``sendto`` is the worst case for the
send program (the syscall itself is cheap); a TCP connection (connect,
accept, one exchange, close on both sides) runs the state program about ten
times and the send/recv programs four times.

``--every-namespace`` loads the helper as the kernel counting path does
(every namespace, owners by socket cookie) and gives the UDP sockets their
cookies first, as that path's cgroup_skb programs would at the first packet,
so the send program's cheap case (asked by cookie) is what is measured;
``--run-stats`` adds the send program's own nanoseconds a run (BPF run
statistics).
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable

from netatopd.ebpf import EbpfUnavailable, KernelOwnership

SENDS = 20000
CONNECTIONS = 500
REPEATS = 5
PAYLOAD = b"x" * 32
SO_COOKIE = 57  # asm-generic/socket.h: asking gives the socket its cookie
COOKIES = False  # --every-namespace: the UDP sockets get their cookies first


def time_udp_sends(count: int) -> float:
    """Seconds per sendto of a 32-byte datagram to a loopback socket."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        target = receiver.getsockname()
        if COOKIES:
            for sock in (sender, receiver):
                sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
        sendto = sender.sendto
        started = time.perf_counter()
        for _ in range(count):
            sendto(PAYLOAD, target)
        elapsed = time.perf_counter() - started
        # empty the receive queue (bounded: at most what was sent)
        for _ in range(count):
            try:
                receiver.recv(64)
            except BlockingIOError:
                break
    return elapsed / count


def time_tcp_connections(count: int) -> float:
    """Seconds per loopback TCP connection: connect, accept, 32 bytes each way, close."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        address = listener.getsockname()
        started = time.perf_counter()
        for _ in range(count):
            client = socket.create_connection(address)
            server, _ = listener.accept()
            client.sendall(PAYLOAD)
            server.recv(64)
            server.sendall(PAYLOAD)
            client.recv(64)
            client.close()
            server.close()
        elapsed = time.perf_counter() - started
    return elapsed / count


def best(measure: Callable[[int], float], count: int, between: Callable[[], None]) -> float:
    results = []
    for _ in range(REPEATS):
        results.append(measure(count))
        between()
    return min(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=SENDS)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--every-namespace", action="store_true", help="as --capture kernel")
    parser.add_argument("--run-stats", action="store_true", help="BPF run statistics on")
    args = parser.parse_args()
    global COOKIES
    COOKIES = args.every_namespace

    def nothing() -> None:
        pass

    off_send = best(time_udp_sends, args.sends, nothing)
    off_conn = best(time_tcp_connections, args.connections, nothing)
    try:
        helper = KernelOwnership.load(
            every_namespace=args.every_namespace, run_stats=args.run_stats
        )
    except EbpfUnavailable as err:
        print(f"helper unavailable: {err.reason}")
        return
    try:

        def drain() -> None:
            helper.drain()

        on_send = best(time_udp_sends, args.sends, drain)
        on_conn = best(time_tcp_connections, args.connections, drain)
        status = helper.status()
    finally:
        helper.close()
    again_send = best(time_udp_sends, args.sends, nothing)
    again_conn = best(time_tcp_connections, args.connections, nothing)

    print(f"{'':28}{'off':>10}{'on':>10}{'off again':>11}{'added':>10}{'ratio':>8}")
    for label, off, on, again in (
        (f"UDP sendto 32 B (x{args.sends})", off_send, on_send, again_send),
        (f"TCP connection (x{args.connections})", off_conn, on_conn, again_conn),
    ):
        base = min(off, again)
        print(
            f"{label:28}{off * 1e6:>8.2f}us{on * 1e6:>8.2f}us{again * 1e6:>9.2f}us"
            f"{(on - base) * 1e6:>8.2f}us{on / base:>8.2f}"
        )
    print(
        "recursion misses: "
        + ", ".join(
            f"{name} {status[f'{name}_recursion_misses']}"
            for name in ("ntp_send", "ntp_recv", "ntp_state")
        )
        + f"; drops {status['ebpf_drops']}"
        + f", connect records not found {status['ebpf_connect_not_found']}"
    )
    if args.run_stats and status["ntp_send_run_cnt"]:
        runs = int(status["ntp_send_run_cnt"])
        print(f"ntp_send: {int(status['ntp_send_run_time_ns']) / runs:.0f} ns a run ({runs} runs)")


if __name__ == "__main__":
    main()
