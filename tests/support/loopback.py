"""The HTTP plumbing the loopback fakes of Together and Kubernetes share: keep-alive connections they
can end when the fake stops (a stopped fake is down, not half up), answers withheld by a reset, and
quiet logs (tests read each fake's own request counts). Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import email.message
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    """One parsed HTTP request (its body read in full, so a kept-alive connection stays in sync)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: email.message.Message
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("true", "1")


class TrackedHandler(BaseHTTPRequestHandler):
    """A request handler whose connection the server knows about while it is open."""

    protocol_version = "HTTP/1.1"  # keep-alive like the real APIs, so connection reuse is exercised
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms delayed-ACK stalls
    server: TrackedServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client is gone already
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read the fake's own record of requests instead of stderr noise."""

    def reset_connection(self) -> None:
        """Close with SO_LINGER 0, so close() sends RST: the client sees a connection error and no
        answer (a lost answer, a dropped connection)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class TrackedServer(ThreadingHTTPServer):
    """A threaded server that can end its open keep-alive connections (``close_connections``)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[TrackedHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its kept-alive connection (a process that exits without closing it)
        is routine for an API server, not a traceback; anything else is printed as before."""
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)

    def serve(self, name: str, poll_interval: float = 0.02) -> threading.Thread:
        """Serve from a daemon thread (started; returned so ``close`` callers may join it)."""
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
        )
        thread.start()
        return thread

    def close(self) -> None:
        """Stop serving, end open keep-alive connections and release the port: the fake is down."""
        self.shutdown()
        self.close_connections()
        self.server_close()

    def close_connections(self) -> None:
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
