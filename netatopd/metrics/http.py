"""The metrics HTTP server: prometheus_client's WSGI app in threads of its own.

Owns the listening socket of --metrics-listen and its threads: one that
accepts (``serve_forever``) and one per connection.  A scraper never holds
the counting loop up: the loop only swaps the snapshot the collector reads
(book.MetricsBook).  A slow or hostile client cannot hold this server up for
ever either: at most ``MAX_CONNECTIONS`` connections are served at once
(others are closed at once, counted in ``refused``), each blocking read or
write gives up after ``IO_TIMEOUT_S``, and a connection still open after
``DEADLINE_S`` is shut down (counted in ``expired``).  Made and closed by
daemon.main.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from .book import MetricsBook
from .families import SnapshotCollector
from .options import MetricsListenError, parse_listen

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
IO_TIMEOUT_S = 10.0
DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.5  # how often the accepting thread looks for connections past their deadline


class _Handler(WSGIRequestHandler):
    timeout = IO_TIMEOUT_S  # socketserver sets it on the connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # no line per scrape


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.open_lock = threading.Lock()
        self.open: dict[socket.socket, float] = {}  # connection -> monotonic deadline
        self.refused = 0
        self.expired = 0
        self.served = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self.open_lock:
            self.open[request] = time.monotonic() + DEADLINE_S
        try:
            super().process_request(request, client_address)
        except Exception:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
            self.served += 1
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self.open_lock:
            if self.open.pop(request, None) is not None:
                self.slots.release()

    def service_actions(self) -> None:
        """Between accepts: shut down connections past their deadline (their thread ends)."""
        now = time.monotonic()
        with self.open_lock:
            late = [conn for conn, deadline in self.open.items() if deadline <= now]
        for conn in late:
            self.expired += 1
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MetricsServer:
    """The endpoint of --metrics-listen, serving the book's snapshots."""

    def __init__(self, listen: str, book: MetricsBook) -> None:
        host, port = parse_listen(listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise MetricsListenError(f"metrics-listen: {host!r}: {err.strerror}") from err
        family = infos[0][0]
        server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(lambda: book.snapshot))
        try:
            self.httpd: _Server = make_server(
                str(infos[0][4][0]),
                port,
                make_wsgi_app(self.registry),
                server_class,
                handler_class=_Handler,
            )
        except OSError as err:
            raise MetricsListenError(
                f"metrics-listen: cannot listen on {listen}: {err.strerror}"
            ) from err
        self.address: tuple[str, int] = self.httpd.server_address[:2]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="netatop-metrics",
            daemon=True,
        )
        self.thread.start()
        log.info("metrics served on http://%s/metrics", listen)

    def stats(self) -> dict[str, int]:
        httpd = self.httpd
        return {"served": httpd.served, "refused": httpd.refused, "expired": httpd.expired}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
