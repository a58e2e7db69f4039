"""Traffic actors for the end-to-end tests, run as separate processes in a namespace.

Usage: python actors.py ROLE JSON-ARGS.  An actor prints JSON lines on stdout:
first {"pid": ...} (plus its port for servers), then its results; between
steps it waits for a command line on stdin ("measure", "exit").  Every loop is
bounded in count and guarded by socket timeouts.  Traffic goes only to the
addresses the test passes (loopback or namespace addresses).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

TIMEOUT_S = 10.0
SQUATTER_LIFETIME_S = 120.0  # an idle process holding a reused pid leaves after this at most
SQUATTER_PIPES: list[int] = []  # write ends that keep the idle pid holders (take_pid) waiting
TCP_INFO_BYTES = 232
# struct tcp_info (linux/tcp.h): offsets of the members the tests read.
TCPI_UNACKED = 24  # __u32 tcpi_unacked
TCPI_BYTES_RECEIVED = 128  # __u64 tcpi_bytes_received (payload)
TCPI_SEGS_OUT = 136  # __u32 tcpi_segs_out (every segment sent, SYN/ACK/FIN included)
TCPI_SEGS_IN = 140  # __u32 tcpi_segs_in
TCPI_BYTES_SENT = 200  # __u64 tcpi_bytes_sent (payload, retransmissions included)


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def wait_for(command: str) -> None:
    line = sys.stdin.readline().strip()
    if line != command:
        raise SystemExit(f"expected {command!r} on stdin, got {line!r}")


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_info(sock: socket.socket) -> dict[str, int]:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    return {
        "segs_out": struct.unpack_from("=I", raw, TCPI_SEGS_OUT)[0],
        "segs_in": struct.unpack_from("=I", raw, TCPI_SEGS_IN)[0],
        "bytes_sent": struct.unpack_from("=Q", raw, TCPI_BYTES_SENT)[0],
        "bytes_received": struct.unpack_from("=Q", raw, TCPI_BYTES_RECEIVED)[0],
    }


def wait_acked(sock: socket.socket) -> None:
    """Until every byte sent is acknowledged (bounded): the segment has left and no merge can happen."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
        if struct.unpack_from("=I", raw, TCPI_UNACKED)[0] == 0:
            return
        time.sleep(0.0005)
    raise SystemExit("data not acknowledged in time")


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SystemExit("peer closed early")
        data += chunk
    return bytes(data)


def udp_server(addr: str, count: int, reply_bytes: int, v6only: bool = True, port: int = 0) -> None:
    """Receive count datagrams; answer each with reply_bytes bytes unless reply_bytes < 0.

    port 0: any free port."""
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    if family_of(addr) == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    sock.settimeout(TIMEOUT_S)
    sock.bind((addr, port))
    say(pid=os.getpid(), port=sock.getsockname()[1])
    sizes = []
    for _ in range(count):
        data, peer = sock.recvfrom(65536)
        sizes.append(len(data))
        if reply_bytes >= 0:
            sock.sendto(b"r" * reply_bytes, peer)
    say(received=len(sizes), sizes=sorted(set(sizes)))
    wait_for("exit")


def udp_client(
    addr: str, port: int, count: int, size: int, expect_reply: bool, bind_port: int = 0
) -> None:
    """Send count datagrams of size bytes (from bind_port when not 0), each answered
    when expect_reply."""
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT_S)
    if bind_port:
        sock.bind((addr, bind_port))
    say(pid=os.getpid())
    replies = 0
    for _ in range(count):
        sock.sendto(b"q" * size, (addr, port))
        if expect_reply:
            sock.recvfrom(65536)
            replies += 1
        else:
            time.sleep(0.001)  # paced: the receiver never loses one
    say(sent=count, replies=replies)
    wait_for("exit")


def _exchange(
    sock: socket.socket, rounds: int, send_bytes: int, recv_bytes: int, first: bool
) -> None:
    for _ in range(rounds):
        if first:
            if send_bytes:
                sock.sendall(b"s" * send_bytes)
                wait_acked(sock)
            if recv_bytes:
                recv_exact(sock, recv_bytes)
        else:
            if recv_bytes:
                recv_exact(sock, recv_bytes)
            if send_bytes:
                sock.sendall(b"s" * send_bytes)
                wait_acked(sock)


def tcp_server(
    addr: str, rounds: int, request_bytes: int, reply_bytes: int, fork: bool = False
) -> None:
    """Accept one connection; per round read request_bytes, answer reply_bytes.

    With fork, the accepting parent says "accepted" and waits for "fork" on stdin, then
    hands the connection to a child and closes its copy; the child waits for "go" on
    stdin and then serves the rounds.
    """
    listener = socket.socket(family_of(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.settimeout(TIMEOUT_S)
    listener.bind((addr, 0))
    listener.listen(8)
    say(pid=os.getpid(), port=listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT_S)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if fork:
        # The test forks only once the daemon has charged the handshake to this process.
        say(accepted=True)
        wait_for("fork")
        child = os.fork()
        if child:
            conn.close()
            listener.close()
            say(child=child)
            os.waitpid(child, 0)
            return
        say(forked=os.getpid(), at_fork=tcp_info(conn))
        wait_for("go")
    _exchange(conn, rounds, reply_bytes, request_bytes, first=False)
    say(done=True)
    wait_for("measure")
    say(**tcp_info(conn))
    wait_for("exit")


def tcp_client(
    addr: str, port: int, rounds: int, request_bytes: int, reply_bytes: int, wait_go: bool = False
) -> None:
    sock = socket.socket(family_of(addr), socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    say(pid=os.getpid())
    sock.connect((addr, port))
    if wait_go:
        wait_for("go")
    _exchange(sock, rounds, request_bytes, reply_bytes, first=True)
    say(done=True)
    wait_for("measure")
    say(**tcp_info(sock))
    wait_for("exit")


def tcp_echo_server(addr: str, connections: int, message_bytes: int) -> None:
    """Serve connections one after another: read a message, answer it, close after the peer."""
    listener = socket.socket(family_of(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.settimeout(TIMEOUT_S)
    listener.bind((addr, 0))
    listener.listen(64)
    say(pid=os.getpid(), port=listener.getsockname()[1])
    for _ in range(connections):
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT_S)
        conn.sendall(recv_exact(conn, message_bytes))
        while conn.recv(4096):  # until the client's FIN
            pass
        conn.close()
    say(served=connections)
    wait_for("exit")


def take_pid(pid: int, attempts: int = 20) -> int:
    """Fork an idle process that holds ``pid`` (the pid of a process that just ended).

    The kernel gives the pid after /proc/sys/kernel/ns_last_pid to the next
    fork (of the pid namespace: any process's); another fork on the host may
    take it first, so this tries a bounded number of times.  The idle process
    leaves when this one does (its pipe reaches end of file) or after
    SQUATTER_LIFETIME_S.  Returns the pid it got, 0 when none got ``pid``.
    """
    for _ in range(attempts):
        read_end, write_end = os.pipe()
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write(str(pid - 1))
        squatter = os.fork()
        if squatter == 0:
            # Nothing of the actor's kept open (its stdout, the other holders' pipes).
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 1 << 16)
            select.select([read_end], [], [], SQUATTER_LIFETIME_S)
            os._exit(0)
        os.close(read_end)
        if squatter == pid:
            SQUATTER_PIPES.append(write_end)  # closed when this process exits
            return pid
        os.close(write_end)  # another pid: that one leaves now
        os.waitpid(squatter, 0)
    return 0


def short_lived_clients(
    addr: str,
    port: int,
    count: int,
    message_bytes: int,
    lifetime_ms: int,
    reuse_pids: bool = False,
) -> None:
    """Fork count children one after another; each lives about lifetime_ms doing one exchange.

    A child connects, sends a message, reads the answer, shuts down its side,
    reads until the server's FIN (its ACK of that FIN is sent before recv returns
    0), then reports its TCP_INFO segment counters: the ground truth of every
    packet its connection sent and received.  reuse_pids: once a child has
    exited, an idle process takes its pid at once (``take_pid``), as a busy
    host or a small pid_max does sooner or later; the report names them
    (squatters).
    """
    say(pid=os.getpid())
    results = []
    squatters = []
    for _ in range(count):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read_end)
            started = time.monotonic()
            sock = socket.socket(family_of(addr), socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((addr, port))
            sock.sendall(b"m" * message_bytes)
            recv_exact(sock, message_bytes)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
            info = tcp_info(sock)
            info["pid"] = os.getpid()
            os.write(write_end, json.dumps(info).encode())
            os.close(write_end)
            time.sleep(max(0.0, lifetime_ms / 1000 - (time.monotonic() - started)))
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        os.waitpid(child, 0)
        results.append(json.loads(report))
        if reuse_pids and take_pid(child):
            squatters.append(child)
    say(children=results, squatters=squatters)
    wait_for("exit")


def threaded_tcp_server(
    addr: str, connections: int, rounds: int, request_bytes: int, reply_bytes: int
) -> None:
    """Serve each connection in its own thread: rounds of request and reply."""
    import threading

    listener = socket.socket(family_of(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.settimeout(TIMEOUT_S)
    listener.bind((addr, 0))
    listener.listen(16)
    udp = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    udp.settimeout(TIMEOUT_S)
    udp.bind((addr, 0))
    say(pid=os.getpid(), port=listener.getsockname()[1], udp_port=udp.getsockname()[1])

    def serve(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _exchange(conn, rounds, reply_bytes, request_bytes, first=False)

    def echo_udp() -> None:
        try:
            while True:
                data, peer = udp.recvfrom(65536)
                udp.sendto(data, peer)
        except OSError:
            return

    threading.Thread(target=echo_udp, daemon=True).start()
    workers = []
    kept = []  # open until exit: a close would send a FIN the clients then count
    for _ in range(connections):
        conn, _ = listener.accept()
        kept.append(conn)
        worker = threading.Thread(target=serve, args=(conn,))
        worker.start()
        workers.append(worker)
    for worker in workers:
        worker.join(TIMEOUT_S)
    say(served=connections)
    wait_for("exit")


def threaded_client(
    addr: str,
    port: int,
    udp_port: int,
    threads: int,
    rounds: int,
    request_bytes: int,
    reply_bytes: int,
    datagrams: int,
    datagram_bytes: int,
) -> None:
    """Each thread its own TCP connection; thread 0 also exchanges UDP datagrams.

    Reports per thread its tid, its connection's TCP_INFO (taken when every
    thread is done and the connections are quiet) and its datagram counts.
    """
    import threading

    say(pid=os.getpid())
    results: dict[int, dict[str, int]] = {}
    socks: dict[int, socket.socket] = {}
    done = threading.Barrier(threads + 1)
    measure = threading.Event()

    def work(index: int) -> None:
        tid = threading.get_native_id()
        sock = socket.socket(family_of(addr), socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((addr, port))
        _exchange(sock, rounds, request_bytes, reply_bytes, first=True)
        sent = 0
        if index == 0:
            udp = socket.socket(family_of(addr), socket.SOCK_DGRAM)
            udp.settimeout(TIMEOUT_S)
            for _ in range(datagrams):
                udp.sendto(b"u" * datagram_bytes, (addr, udp_port))
                udp.recvfrom(65536)
                sent += 1
        socks[index] = sock
        done.wait(TIMEOUT_S)
        measure.wait(TIMEOUT_S)
        results[index] = {"tid": tid, "datagrams": sent, **tcp_info(sock)}
        measured.wait(TIMEOUT_S)
        leave.wait(TIMEOUT_S * 6)  # alive while the test asks about this thread

    measured = threading.Barrier(threads + 1)
    leave = threading.Event()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    done.wait(TIMEOUT_S)
    say(done=True)
    wait_for("measure")
    time.sleep(0.05)
    measure.set()
    measured.wait(TIMEOUT_S)
    say(threads=[results[i] for i in range(threads)])
    wait_for("exit")
    leave.set()
    for worker in workers:
        worker.join(TIMEOUT_S)


def handoff_client(addr: str, port: int, rounds: int, request_bytes: int, reply_bytes: int) -> None:
    """One thread connects, another does all the sending and receiving."""
    import threading

    sock = socket.socket(family_of(addr), socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    say(pid=os.getpid())
    tids: dict[str, int] = {}

    def connect() -> None:
        tids["connector"] = threading.get_native_id()
        sock.connect((addr, port))

    def use() -> None:
        tids["user"] = threading.get_native_id()
        _exchange(sock, rounds, request_bytes, reply_bytes, first=True)

    for job in (connect, use):
        worker = threading.Thread(target=job)
        worker.start()
        worker.join(TIMEOUT_S)
    say(**tids)
    wait_for("measure")
    say(**tcp_info(sock))
    wait_for("exit")


def idle(seconds: float) -> None:
    """A process that only exists (for pid and exit-list tests)."""
    say(pid=os.getpid())
    wait_for("exit")


def own_identity() -> dict[str, object]:
    """This process as /proc shows it: pid, btime (atop's formula), comm, cmdline, uid.

    btime = (start time in ticks + boot time x ticks per second) // ticks per second,
    from field 22 of /proc/self/stat and the btime line of /proc/stat.
    """
    with open("/proc/self/stat", "rb") as stat_file:
        stat = stat_file.read()
    start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])  # field 22: starttime
    with open("/proc/stat", "rb") as proc_stat:
        boot_s = next(int(x.split()[1]) for x in proc_stat if x.startswith(b"btime "))
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/comm", "rb") as comm_file:
        comm = comm_file.read().rstrip(b"\n").decode("utf-8", "replace")
    with open("/proc/self/cmdline", "rb") as cmdline_file:
        raw = cmdline_file.read()
    return {
        "pid": os.getpid(),
        "btime": (start_ticks + boot_s * hz) // hz,
        "comm": comm,
        "cmdline": raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace"),
        "uid": os.getuid(),
    }


def udp_short_lived(
    addr: str,
    port: int,
    count: int,
    datagrams: int,
    size: int,
    lifetime_ms: int,
    name: str = "",
    uid: int = -1,
) -> None:
    """Fork count children one after another; each exchanges datagrams with a UDP server.

    A child names itself name + its index (/proc/self/comm), takes uid (when >= 0),
    sends datagrams of size bytes and waits for each reply, reports its identity
    (own_identity) and what it sent, lives about lifetime_ms and exits.  The
    parent prints every child's report once all have exited.
    """
    say(pid=os.getpid())
    results = []
    for index in range(count):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.close(read_end)
                started = time.monotonic()
                if name:
                    with open("/proc/self/comm", "w") as comm:
                        comm.write(f"{name}{index}"[:15])
                if uid >= 0:
                    os.setuid(uid)
                sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
                sock.settimeout(TIMEOUT_S)
                replies = 0
                for _ in range(datagrams):
                    sock.sendto(b"h" * size, (addr, port))
                    sock.recvfrom(65536)
                    replies += 1
                identity = {**own_identity(), "sent": datagrams, "replies": replies}
                os.write(write_end, json.dumps(identity).encode())
                os.close(write_end)
                time.sleep(max(0.0, lifetime_ms / 1000 - (time.monotonic() - started)))
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        _, status = os.waitpid(child, 0)
        if status != 0 or not report:
            raise SystemExit(f"child {child} failed (wait status {status})")
        results.append(json.loads(report))
    say(children=results)
    wait_for("exit")


def udp_burst(addr: str, port: int, count: int, batch: int, size: int, lifetime_ms: int) -> None:
    """Fork count children in batches of batch at a time; each sends one datagram and exits.

    A child sends one datagram of size bytes to (addr, port), tells the parent
    its source port through a pipe, lives about lifetime_ms and exits 0 (1 if
    the send failed).  After each batch the parent prints {"batch": n, "ports":
    {pid: source port}, "failed": [...]}; at the end {"done": total}.
    """
    say(pid=os.getpid())
    made = 0
    number = 0
    read_end, write_end = os.pipe()  # one line per child: "pid port" (atomic, < PIPE_BUF)
    reports = os.fdopen(read_end, "rb")
    while made < count:
        children = []
        for _ in range(min(batch, count - made)):
            child = os.fork()
            if child == 0:
                code = 1
                try:
                    started = time.monotonic()
                    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
                    sock.sendto(b"b" * size, (addr, port))
                    os.write(write_end, f"{os.getpid()} {sock.getsockname()[1]}\n".encode())
                    time.sleep(max(0.0, lifetime_ms / 1000 - (time.monotonic() - started)))
                    code = 0
                finally:
                    os._exit(code)
            children.append(child)
        made += len(children)
        failed: list[int] = []
        for child in children:
            _, status = os.waitpid(child, 0)
            if status != 0:
                failed.append(child)
        ports: dict[int, int] = {}
        for _ in range(len(children) - len(failed)):
            pid, source_port = reports.readline().split()
            ports[int(pid)] = int(source_port)
        say(batch=number, ports=ports, failed=failed)
        number += 1
    say(done=made)
    wait_for("exit")


def udp_load(addr: str, count: int, chunk: int, pause_ms: float, size: int) -> None:
    """Send count datagrams of size bytes to a socket of our own, chunk at a time.

    A pause of pause_ms after each chunk keeps the rate near chunk / pause (a
    sustained load, bounded by count and by TIMEOUT_S).  The receiving socket
    is never read: the datagrams it cannot hold are dropped after the capture
    has seen them.  Says {"sent": n} when done.
    """
    sink = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    sink.bind((addr, 0))
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    say(pid=os.getpid())
    target = sink.getsockname()[:2]
    data = b"l" * size
    deadline = time.monotonic() + TIMEOUT_S
    sent = 0
    while sent < count and time.monotonic() < deadline:
        for _ in range(min(chunk, count - sent)):
            sock.sendto(data, target)
        sent += min(chunk, count - sent)
        time.sleep(pause_ms / 1000)
    say(sent=sent)
    wait_for("exit")


def udp_phases(addr: str, port: int, size: int) -> None:
    """A long-running sender: on each "send N" line, send N datagrams of size bytes (paced).

    Says {"sent": total so far} after each phase; stops on "exit".
    """
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    say(pid=os.getpid())
    total = 0
    for _ in range(100):  # phases, bounded
        line = sys.stdin.readline().split()
        if not line or line[0] == "exit":
            return
        if line[0] != "send":
            raise SystemExit(f"expected 'send N' or 'exit', got {line!r}")
        for _ in range(int(line[1])):
            sock.sendto(b"p" * size, (addr, port))
            total += 1
            time.sleep(0.002)  # paced: the receiver never loses one
        say(sent=total)


def raw_frames(interface: str, destination_mac: str, frames_hex: list[str], repeat: int) -> None:
    """Send each frame (hex: a whole Ethernet frame) repeat times on interface (AF_PACKET).

    For frames the kernel's IP stack would never build (a total length that
    claims more than the frame carries).
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((interface, 0))
    source = sock.getsockname()[4][:6]
    destination = bytes.fromhex(destination_mac.replace(":", ""))
    frames = [destination + source + bytes.fromhex(text) for text in frames_hex]
    sent = 0
    for _ in range(repeat):
        for frame in frames:
            sock.send(frame)
            sent += 1
        time.sleep(0.001)  # paced: no ring overflows
    say(pid=os.getpid(), sent=sent)
    wait_for("exit")


def same_pid_children(
    addr: str, port: int, datagrams: list[int], size: int, pid: int, gap_s: float, lifetime_ms: int
) -> None:
    """In a PID namespace of our own: fork one child per entry of datagrams, each on pid.

    Before each fork kernel.ns_last_pid is set to pid - 1, so every child gets
    pid (the pid wraps on purpose).  Child i sends datagrams[i] datagrams of
    size bytes to (addr, port), lives about lifetime_ms and exits; the children
    are gap_s apart
    (btime, the key's second half, counts whole seconds).  Says the children's
    identities (own_identity) once all exited.
    """
    say(pid=os.getpid())
    children = []
    for index, count in enumerate(datagrams):
        if index:
            time.sleep(gap_s)
        with open("/proc/sys/kernel/ns_last_pid", "w") as last_pid:
            last_pid.write(str(pid - 1))
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.close(read_end)
                sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
                for _ in range(count):
                    sock.sendto(b"w" * size, (addr, port))
                os.write(write_end, json.dumps({**own_identity(), "sent": count}).encode())
                time.sleep(lifetime_ms / 1000)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        _, status = os.waitpid(child, 0)
        if status != 0 or not report:
            raise SystemExit(f"child {child} failed (wait status {status})")
        children.append(json.loads(report))
    say(children=children)
    wait_for("exit")


def flow_churn(
    addr: str,
    udp_port: int,
    tcp_port: int,
    exchanges: int,
    connections: int,
    size: int,
    limit_s: float,
) -> None:
    """Many short flows: exchanges UDP exchanges, each from a new socket (a new source
    port), and connections short TCP connections (send size bytes, read the echo, close),
    interleaved; bounded by limit_s as well as by the counts."""
    say(pid=os.getpid())
    deadline = time.monotonic() + limit_s
    udp_done = tcp_done = 0
    every = max(1, exchanges // max(1, connections))
    while (udp_done < exchanges or tcp_done < connections) and time.monotonic() < deadline:
        if udp_done < exchanges:
            with socket.socket(family_of(addr), socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT_S)
                sock.sendto(b"f" * size, (addr, udp_port))
                sock.recvfrom(65536)
            udp_done += 1
        if tcp_done < connections and (udp_done % every == 0 or udp_done >= exchanges):
            with socket.create_connection((addr, tcp_port), timeout=TIMEOUT_S) as conn:
                conn.sendall(b"t" * size)
                recv_exact(conn, size)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):  # until the server closes
                    pass
            tcp_done += 1
    say(exchanges=udp_done, connections=tcp_done)
    wait_for("exit")


def flow_flood(addr: str, count: int, size: int, limit_s: float) -> None:
    """A flood of new flows: count datagrams, each from a new socket (a new source port),
    to a socket of our own that never reads (the kernel drops what overflows it)."""
    sink = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    sink.bind((addr, 0))
    say(pid=os.getpid())
    deadline = time.monotonic() + limit_s
    sent = 0
    while sent < count and time.monotonic() < deadline:
        with socket.socket(family_of(addr), socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x" * size, sink.getsockname())
        sent += 1
    say(sent=sent)
    wait_for("exit")


ROLES = {
    "udp_server": udp_server,
    "udp_client": udp_client,
    "tcp_server": tcp_server,
    "tcp_client": tcp_client,
    "tcp_echo_server": tcp_echo_server,
    "short_lived_clients": short_lived_clients,
    "threaded_tcp_server": threaded_tcp_server,
    "threaded_client": threaded_client,
    "handoff_client": handoff_client,
    "idle": idle,
    "udp_short_lived": udp_short_lived,
    "udp_burst": udp_burst,
    "udp_load": udp_load,
    "udp_phases": udp_phases,
    "raw_frames": raw_frames,
    "same_pid_children": same_pid_children,
    "flow_churn": flow_churn,
    "flow_flood": flow_flood,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](**json.loads(sys.argv[2]))
