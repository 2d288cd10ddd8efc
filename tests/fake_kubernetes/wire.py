"""HTTP plumbing: requests, replies (whole or streamed in chunks), the API's ``Status`` errors, and a
threaded loopback server whose ``stop`` also ends keep-alive and streaming connections.

Streams (``pods/log?follow=true``, ``?watch=true``) go out with ``Transfer-Encoding: chunked``, one
chunk per log line or watch event, as the API server sends them; the ``kubernetes`` client reads them
chunk by chunk (``urllib3`` ``stream()``), ``kubernetes_asyncio`` line by line.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback import Request, TrackedHandler, TrackedServer

MAX_BODY = 8 * 1024 * 1024  # the API server's limit is 3 MiB per object; leave room, refuse the absurd


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None  # chunks; an empty one is a chance to notice a gone client
    reset: bool = False  # no answer at all: the connection is reset (a lost reply)


class ApiError(Exception):
    """An API ``Status`` failure; ``reply()`` is what the API server sends for it."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def reply(self) -> Reply:
        return json_reply(status_body(self.code, self.reason, self.message, self.details), self.code)


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


class Dispatcher(Protocol):
    def dispatch(self, request: Request) -> Reply: ...


class _Handler(TrackedHandler):
    timeout = 60
    server: Server

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self._write(ApiError(413, "RequestEntityTooLarge", "request entity too large").reply())
            return
        body = self.rfile.read(length) if length else b""
        request = Request(
            self.command, split.path, parse_qs(split.query, keep_blank_values=True), self.headers, body
        )
        self._write(self.server.fake.dispatch(request))

    def _write(self, reply: Reply) -> None:
        if reply.reset:  # the client sees a connection error
            self.reset_connection()
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream is None:
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self._write_stream(reply.stream)
        except OSError:  # the client went away (a follower that stopped reading, a closed watch)
            self.close_connection = True

    def _write_stream(self, stream: Iterator[bytes]) -> None:
        try:
            for chunk in stream:
                if not chunk:
                    if self._client_gone():
                        self.close_connection = True
                        return
                    continue
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class Server(TrackedServer):
    fake: Dispatcher

    def __init__(self, address: tuple[str, int], fake: Dispatcher) -> None:
        super().__init__(address, _Handler)
        self.fake = fake
