"""HTTP plumbing of the fake (requests, replies, faults, the threaded server) and the checks it
applies to what clients send."""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from tests.fake_together.common import (
    MAX_BODY,
    _is_int,
    _is_number,
)
from tests.support.loopback import Request as _Request
from tests.support.loopback import TrackedHandler, TrackedServer

# --------------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Reply:
    """What the handler thread does: answer, answer with a body cut short, or reset the connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "send"  # "send" | "truncate" | "reset"
    body_factory: Callable[[], bytes] | None = None  # built outside the state lock (big archives)


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    kind: str  # "status" | "reset"
    status: int = 503
    retry_after: float | None = None
    body: dict[str, Any] | None = None


@dataclass
class _RandomFaults:
    rate: float
    statuses: tuple[int, ...]
    rng: random.Random
    retry_after: float | None
    include_storage: bool


@dataclass
class _Run:
    """Simulation state of one job that is not part of the job object."""

    polls_needed: int
    schedule: tuple[str, ...]
    total_steps: int
    steps_per_epoch: int
    full_price: int  # nanodollars
    polls: int = 0
    step: int = 0


def _schedule(polls: int) -> tuple[str, ...]:
    """Status after each retrieve: ends in ``completed``; the stages in between fill the polls available."""
    if polls <= 0:
        return ()
    short = {0: [], 1: ["running"], 2: ["queued", "running"], 3: ["queued", "running", "compressing"]}
    slots = polls - 1
    if slots in short:
        middle = short[slots]
    else:
        middle = ["queued", *(["running"] * (slots - 3)), "compressing", "uploading"]
    return (*middle, "completed")


def _json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(
        status,
        json.dumps(obj).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> _Reply:
    return _json_reply(
        status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers
    )


class _BadRequest(Exception):
    """Raised by validators; becomes a 400 (or the given status) with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Dispatcher(Protocol):
    """What the HTTP server needs of the fake: an answer per request (``FakeTogether`` is one)."""

    def _dispatch(self, req: _Request) -> _Reply: ...


class _Handler(TrackedHandler):
    """Reads a request, lets ``FakeTogether`` decide, writes (or withholds) the answer."""

    timeout = 30  # an idle keep-alive connection must not pin a thread forever
    server: _Server

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._write(_error(400, f"unreadable request body: {exc}"))
            return
        request = _Request(
            self.command, split.path, parse_qs(split.query, keep_blank_values=True), self.headers, body
        )
        reply = self.server.fake._dispatch(request)
        if reply.action == "reset":  # the client sees a connection error, no response
            self.reset_connection()
            return
        if reply.body_factory is not None:
            reply.body = reply.body_factory()
        self._write(reply)

    def _write(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.action == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.action == "truncate":
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.close_connection = True
            return
        if reply.body:
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _Server(TrackedServer):
    """Tracks open connections so that ``stop()`` also ends keep-alive ones (a stopped fake is down)."""

    fake: _Dispatcher  # set by FakeTogether.start()

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _encoded(body: bytes, gzip_it: bool) -> bytes:
    return gzip.compress(body, compresslevel=1, mtime=0) if gzip_it else body


def _seconds(value: float) -> str:
    """Retry-After as the SDK parses it (it accepts floats; it honours only 0 < value <= 60)."""
    return f"{value:g}"


def _message_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        return str(data.get("message", ""))
    return ""


def _json_object(req: _Request) -> dict[str, Any]:
    content_type = req.headers.get("Content-Type", "")
    if not content_type.startswith("application/json"):
        raise _BadRequest(f"expected an application/json body, got Content-Type {content_type!r}")
    try:
        body = json.loads(req.body)
    except ValueError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


def _batch_bounds(training_type: object, limits: dict[str, Any]) -> tuple[int, int]:
    section = (
        limits["full_training"]
        if isinstance(training_type, dict) and training_type.get("type") == "Full"
        else limits["lora_training"]
    )
    return int(section["min_batch_size"]), int(section["max_batch_size"])


def _check_training_type(training_type: object, limits: dict[str, Any] | None) -> None:
    if training_type is None:
        return
    if not isinstance(training_type, dict) or training_type.get("type") not in ("Lora", "Full"):
        raise _BadRequest("training_type must be an object with type 'Lora' or 'Full'")
    if training_type["type"] == "Full":
        return
    r, alpha = training_type.get("lora_r"), training_type.get("lora_alpha")
    max_rank = limits["lora_training"]["max_rank"] if limits else 1024
    if not _is_int(r) or not 1 <= r <= max_rank:
        raise _BadRequest(f"training_type.lora_r must be an integer in [1, {max_rank}]")
    if not _is_int(alpha) or alpha < 1:
        raise _BadRequest("training_type.lora_alpha must be a positive integer")
    dropout = training_type.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise _BadRequest("training_type.lora_dropout must be in [0, 1)")
    modules = training_type.get("lora_trainable_modules", "all-linear")
    if not isinstance(modules, str) or not modules:
        raise _BadRequest("training_type.lora_trainable_modules must be a comma-separated string")
    if limits and modules != "all-linear":
        allowed = set(limits["lora_training"]["target_modules"])
        unknown = [m for m in modules.split(",") if m.strip() not in allowed]
        if unknown:
            raise _BadRequest(f"unknown LoRA target module(s) {unknown}; allowed: {sorted(allowed)}")


def _check_training_method(method: object) -> None:
    if method is None:
        return
    if not isinstance(method, dict) or method.get("method") not in ("sft", "dpo"):
        raise _BadRequest("training_method must be an object with method 'sft' or 'dpo'")
    if method["method"] == "sft":
        value = method.get("train_on_inputs")
        if not isinstance(value, bool) and value != "auto":
            raise _BadRequest("training_method.train_on_inputs must be true, false or 'auto'")


def _validate_dataset(content: bytes, file_type: str, purpose: str) -> dict[str, Any]:
    """Together's server-side dataset check, reduced: each jsonl line is an object of a known format."""
    if file_type != "jsonl" or purpose != "fine-tune":
        return {"valid": True}
    formats: set[str] = set()
    lines = 0
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        lines += 1
        try:
            row = json.loads(raw)
        except ValueError:
            return _invalid(f"line {number} is not JSON")
        if not isinstance(row, dict):
            return _invalid(f"line {number} is not a JSON object")
        if isinstance(row.get("messages"), list) and row["messages"]:
            bad = [
                m for m in row["messages"] if not isinstance(m, dict) or "role" not in m or "content" not in m
            ]
            if bad:
                return _invalid(f"line {number}: every message needs 'role' and 'content'")
            formats.add("CONVERSATION")
        elif isinstance(row.get("text"), str):
            formats.add("GENERAL")
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            formats.add("INSTRUCTION")
        else:
            return _invalid(f"line {number} has no 'messages', 'text' or 'prompt'/'completion'")
    if not lines:
        return _invalid("the file has no samples")
    if len(formats) > 1:
        return _invalid(f"mixed dataset formats: {sorted(formats)}")
    return {"valid": True, "nlines": lines, "dataset_format": formats.pop()}


def _invalid(message: str) -> dict[str, Any]:
    return {"valid": False, "error": message, "error_type": "INVALID_FORMAT"}
