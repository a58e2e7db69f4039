"""A UDP sender at its maximum rate, run with ``python -c`` in a benchmark's namespace.

Used by bench_daemon.py (what the monitored application pays) and bench_skbcount.py.
Arguments: seconds, the most datagrams to send, the payload bytes; it sends to a
socket of its own on 127.0.0.1 and prints one JSON line: {"sent": N, "per_s": R}.
"""

UDP_MAX_RATE = """
import json, socket, sys, time
seconds, max_sends, size = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
sink.setblocking(False)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.connect(sink.getsockname())
send, payload = sender.send, b"b" * size
sent, started = 0, time.perf_counter()
deadline = started + seconds
while sent < max_sends:
    for _ in range(1000):
        send(payload)
    sent += 1000
    if time.perf_counter() >= deadline:
        break
print(json.dumps({"sent": sent, "per_s": sent / (time.perf_counter() - started)}))
"""
