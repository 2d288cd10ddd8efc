"""A fake Together AI fine-tuning server on 127.0.0.1, for the real ``together==3.1.1`` SDK.

Why a server and not mocks: the SDK's own behaviour is part of what we must get right (it retries
``POST /v1/fine-tunes`` with no idempotency key, follows a 302 into an unauthenticated PUT, buffers
downloads unless streamed, parses responses into pydantic models). Only real HTTP exercises that.

Wire facts this server follows (checked in the SDK source, see /work/shared/notes/together-api.md):

* every API path starts with ``/v1/``; ``Authorization: Bearer <key>`` or 401;
* upload = ``POST /v1/files`` (multipart: purpose, file_name, file_type, checksum; no bytes) -> 302 with an
  absolute ``Location`` and ``X-Together-File-Id`` (or 409 ``{"file_id": ...}`` for a known checksum), then a
  ``PUT`` of the raw bytes to that URL without auth (must answer exactly 200), then
  ``POST /v1/files/{id}/preprocess``;
* ``fine_tuning.create`` = ``GET /v1/fine-tunes/models/limits`` + ``POST /v1/fine-tunes/estimate-price`` +
  ``POST /v1/fine-tunes``;
* errors are JSON ``{"error": {"message", "type", "param", "code"}}``; 429 carries ``Retry-After``.

The server validates what the client sends (auth, multipart fields, JSON shapes, required fields, limits)
so that client bugs fail loudly, and its JSON is shaped to pass the SDK's models in strict validation
(except ``status="user_error"``, which Together sends although the generated Literal omits it).

Where the real service is inconvenient, this fake is too, by default (checked against the SDK source and
Together's OpenAPI spec; see the notes): ``estimate-price`` omits ``estimation_available`` when a price
is available; an uploaded file is validated asynchronously (``processing_status`` PENDING -> QUEUED ->
RUNNING -> COMPLETED or INVALID_FORMAT over ``file_polls`` retrieves); a duplicate upload's 409 carries
no retry hint (the SDK then backs off as for a 429); a job's own ``events`` list is empty (the events
endpoint has them); error events use the hand-written SDK spelling (level ``Error``, type
``JOB_ERROR``/``JOB_USER_ERROR``); job statuses nobody documented can be seeded; adapter archives carry a
README, tokenizer files, a pickled ``training_args.bin`` and a ``checkpoint-N/`` folder beside the
adapter; downloads are gzip-encoded when the client accepts gzip.

Simplifications, all deliberate: tokens are estimated as ``ceil(bytes / 4)``; a job has at least
``min_total_steps`` steps so events and metrics have something to show; a job only advances when it is
retrieved (``GET /v1/fine-tunes/{id}``), never with wall-clock time, so tests are deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import email
import email.message
import gzip
import hashlib
import hmac
import io
import json
import math
import os
import pickle
import random
import re
import secrets
import socket
import struct
import tarfile
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_together import shapes
from tests.support.adapters import LLAMA_8B_SHAPES, adapter_archive, adapter_files, zstd_bytes

TERMINAL_STATUSES = frozenset({"completed", "cancelled", "error", "user_error"})
OUTCOME_STATUSES = ("error", "user_error", "cancelled", "completed")
DOWNLOAD_KINDS = (
    "good",
    "minimal",
    "truncated",
    "hostile-traversal",
    "hostile-symlink",
    "hostile-pickle",
    "wrong-rank",
    "garbage",
)
FILE_PURPOSES = ("fine-tune", "calibration", "eval", "batch-api")
FILE_TYPES = ("jsonl", "parquet", "csv")
# The happy path, in order; a job never moves backwards along it.
STAGES = ("pending", "queued", "running", "compressing", "uploading", "completed")
# Events Together logs on entering each stage (types from the SDK's FinetuneEventType Literal).
STAGE_EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "pending": (("job_pending", "Fine-tuning request created"),),
    "queued": (("job_pending", "Fine-tuning job queued"),),
    "running": (
        ("job_start", "Fine-tuning job started"),
        ("model_downloading", "Downloading base model"),
        ("model_download_complete", "Base model downloaded"),
        ("training_data_downloading", "Downloading training data"),
        ("training_data_download_complete", "Training data downloaded"),
        ("training_start", "Training started"),
    ),
    "compressing": (
        ("training_complete", "Training completed"),
        ("model_compressing", "Compressing output model"),
    ),
    "uploading": (
        ("model_compression_complete", "Output model compressed"),
        ("model_uploading", "Uploading output model"),
    ),
    "completed": (
        ("model_upload_complete", "Output model uploaded"),
        ("job_complete", "Fine-tuning job completed"),
    ),
}
DEFAULT_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
LLAMA_8B_PARAM_COUNT = 8_030_261_248
NANODOLLARS_PER_DOLLAR = 1_000_000_000
ZSTD_CONTENT_TYPE = "application/zstd"
MAX_BODY = 256 * 1024 * 1024
# Keys of a stored job that never go on the wire.
PRIVATE_JOB_KEYS = frozenset({"request"})
# The "truncated" job shape Together returns from create, list and cancel (the SDK's
# FineTuningListResponse.Data fields); retrieve returns everything, events included.
TRUNCATED_JOB_KEYS = frozenset(
    {
        "id", "created_at", "status", "updated_at", "user_id", "batch_size", "from_checkpoint",
        "from_hf_model", "hf_model_revision", "learning_rate", "lr_scheduler", "max_grad_norm",
        "max_seq_length", "model", "model_output_name", "adapter_output_name", "n_checkpoints", "n_epochs",
        "n_evals", "owner_address", "packing", "progress", "random_seed", "started_at", "suffix",
        "token_count", "total_price", "training_file", "training_method", "training_type",
        "validation_file", "wandb_name", "wandb_entity", "wandb_project_name", "warmup_ratio",
        "weight_decay",
    }
)  # fmt: skip


def _now() -> str:
    """ISO 8601 UTC with a ``Z``, the form Together uses and pydantic parses into ``datetime``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _is_int(value: object) -> bool:
    """JSON integers only: ``True`` is an ``int`` in Python but a boolean on the wire."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float)) and not isinstance(value, bool)


def default_model_limits(model_name: str) -> dict[str, Any]:
    """A ``FinetuneModelLimits`` body for a Llama-3.1-8B-class model (every required field present)."""
    return {
        "model_name": model_name,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            "default_rank": 64,
            "max_rank": 64,
            "min_batch_size": 8,
            "max_batch_size": 128,
            "max_batch_size_dpo": 64,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "full_training": {"min_batch_size": 8, "max_batch_size": 96, "max_batch_size_dpo": 48},
        "min_learning_rate": 1e-8,
        "max_learning_rate": 1.0,
        "max_num_checkpoints": 10,
        "max_num_epochs": 20,
        "max_num_evals": 100,
        "max_seq_length_sft": 8192,
        "max_seq_length_dpo": 8192,
        "min_max_seq_length": 512,
        "merge_output_lora": True,
        "supports_full_training": True,
        "supports_reasoning": False,
        "supports_tools": True,
        "supports_vision": False,
    }


# --------------------------------------------------------------------------------------------------
# Archives served by GET /v1/finetune/download (cached: building a 4-8 MB adapter costs ~0.1-0.3 s)
# --------------------------------------------------------------------------------------------------


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar built member by member, so hostile members (links, ``..`` names) can be placed exactly."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mode = 0o777
    return info, None


class _HostilePickle:
    """Unpickling this raises instead of doing harm: a consumer that loads it fails loudly in tests."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, ("raise RuntimeError('hostile pickle from the fake Together server was unpickled')",))


TRAINING_ARGS = {"learning_rate": 0.0002, "per_device_train_batch_size": 32, "num_train_epochs": 1}


def _realistic_archive(prefix: str, r: int, alpha: int, modules: tuple[str, ...]) -> bytes:
    """What a trainer's output folder holds beside the adapter: a README, tokenizer files, a pickled
    ``training_args.bin`` (harmless here, but a pickle) and an intermediate ``checkpoint-N/`` folder with an
    adapter of its own (different weights) and a pickled optimizer state."""
    final = adapter_files(r=r, alpha=alpha, modules=modules, seed=0)
    intermediate = adapter_files(r=r, alpha=alpha, modules=modules, seed=1)
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode()
    entries = [
        _regular(prefix + "README.md", b"---\nlibrary_name: peft\n---\n# LoRA adapter\n"),
        _regular(prefix + "checkpoint-2/adapter_config.json", intermediate["adapter_config.json"]),
        _regular(
            prefix + "checkpoint-2/adapter_model.safetensors", intermediate["adapter_model.safetensors"]
        ),
        _regular(prefix + "checkpoint-2/optimizer.pt", pickle.dumps({"state": {}}, protocol=2)),
        _regular(prefix + "adapter_config.json", final["adapter_config.json"]),
        _regular(prefix + "adapter_model.safetensors", final["adapter_model.safetensors"]),
        _regular(prefix + "tokenizer.json", tokenizer),
        _regular(prefix + "tokenizer_config.json", b'{"model_max_length": 131072}'),
        _regular(prefix + "special_tokens_map.json", b'{"bos_token": "<|begin_of_text|>"}'),
        _regular(prefix + "training_args.bin", pickle.dumps(TRAINING_ARGS, protocol=2)),
    ]
    return zstd_bytes(_tar(entries))


@lru_cache(maxsize=32)
def build_download(
    kind: str,
    r: int = 4,
    alpha: int = 16,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    prefix: str = "",
) -> bytes:
    """The body served for one download kind (see ``FakeTogether.set_download``).

    ``good``/``truncated`` are a real adapter of the job's rank, alpha and modules; ``wrong-rank`` has
    tensors of rank ``2r`` under a config that still claims ``r`` (a consumer trusting the config is wrong);
    ``hostile-traversal`` adds ``../`` and absolute member names; ``hostile-symlink`` makes the weights a
    symlink to ``/etc/passwd`` and adds a link-then-write-through-it pair (the tarfile CVE-2025-4517
    pattern); ``hostile-pickle`` ships ``adapter_model.bin`` (a pickle) and no safetensors, which is what
    makes PEFT fall back to ``torch.load``; ``garbage`` is random bytes, not zstd.
    Truncation is done by the server (it cuts the body short), not here.
    """
    if kind in ("good", "truncated"):
        return _realistic_archive(prefix, r, alpha, modules)
    if kind == "minimal":
        return adapter_archive(prefix=prefix, r=r, alpha=alpha, modules=modules)
    if kind == "wrong-rank":
        files = adapter_files(r=2 * r, alpha=alpha, modules=modules, config_r=r)
        return zstd_bytes(_tar([_regular(prefix + name, data) for name, data in files.items()]))
    if kind == "garbage":
        return random.Random(0).randbytes(64 * 1024)
    files = adapter_files(r=r, alpha=alpha, modules=modules)
    config, weights = files["adapter_config.json"], files["adapter_model.safetensors"]
    entries: list[tuple[tarfile.TarInfo, bytes | None]]
    if kind == "hostile-traversal":
        entries = [
            _regular(prefix + "adapter_config.json", config),
            _regular(prefix + "adapter_model.safetensors", weights),
            _regular("../../trait_lora_escaped.txt", b"written outside the extraction directory\n"),
            _regular("/tmp/trait_lora_absolute.txt", b"written to an absolute path\n"),
        ]
    elif kind == "hostile-symlink":
        entries = [
            _regular(prefix + "adapter_config.json", config),
            _link(prefix + "adapter_model.safetensors", "/etc/passwd"),
            _link(prefix + "escape", "/tmp"),
            _regular(prefix + "escape/trait_lora_through_link.txt", b"written through a symlink\n"),
            _link(prefix + "hardlink", "/etc/hostname", tarfile.LNKTYPE),
        ]
    elif kind == "hostile-pickle":
        entries = [
            _regular(prefix + "adapter_config.json", config),
            _regular(prefix + "adapter_model.bin", pickle.dumps(_HostilePickle(), protocol=2)),
        ]
    else:
        raise ValueError(f"unknown download kind {kind!r}; known: {', '.join(DOWNLOAD_KINDS)}")
    return zstd_bytes(_tar(entries))


# --------------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    """One parsed HTTP request (body already read in full, so keep-alive stays in sync)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: email.message.Message
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


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


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets ``FakeTogether`` decide, writes (or withholds) the answer."""

    protocol_version = "HTTP/1.1"  # keep-alive like the real API, so connection reuse is exercised
    timeout = 30  # an idle keep-alive connection must not pin a thread forever
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms delayed-ACK stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read ``FakeTogether.calls`` and ``errors`` instead of stderr noise."""

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
        if reply.action == "reset":
            # SO_LINGER 0 makes close() send RST: the client sees a connection error, no response.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
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


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that ``stop()`` also ends keep-alive ones (a stopped fake is down)."""

    daemon_threads = True
    fake: FakeTogether

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FakeTogether:
    """Together's fine-tuning API on ``127.0.0.1:<free port>``, with readable state and injectable faults.

    Use as a context manager (or ``start()``/``stop()``). All state lives behind one lock; the public
    dicts and lists are safe to read once the client calls that changed them have returned.
    """

    def __init__(self, *, job_polls: int = 3, answers: str | None = None) -> None:
        self.api_key: str = f"tgp_fake_{secrets.token_hex(16)}"
        self.account: str = "fake-account"
        self.user_id: str = f"fake-user-{secrets.token_hex(6)}"
        self.owner_address: str = "0x" + secrets.token_hex(20)
        # --- state a test inspects ---
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str, int, str]] = []  # (METHOD, path, status, message) of every error
        self.estimates: list[dict[str, Any]] = []  # bodies of POST /v1/fine-tunes/estimate-price
        self.bugs: list[str] = []  # tracebacks of exceptions inside the fake (answered 500, not retried)
        # --- behaviour knobs (plain attributes: set them before the calls they should affect) ---
        # "full": every field SDK 3.1.1's types declare; "spec-minimal": only what Together's OpenAPI
        # spec requires, plus unknown fields (tests/fake_together/shapes.py). Default from the
        # environment (FAKE_TOGETHER_ANSWERS), so a live deployment's fake can run either way.
        self.answers: str = answers or os.environ.get("FAKE_TOGETHER_ANSWERS") or "full"
        if self.answers not in shapes.MODES:
            raise ValueError(f"answers must be one of {shapes.MODES}, got {self.answers!r}")
        self.job_polls: int = job_polls
        # The metric key of a held-out loss row: not documented by the spec, so tests vary it.
        self.eval_metric_key: str = "eval/loss"
        self.min_total_steps: int = 4
        self.known_models: set[str] | None = None  # None: any model name has limits; a set: others 404
        self.model_limits: Callable[[str], dict[str, Any]] = default_model_limits
        self.price_per_million_tokens: float = 0.48
        self.user_limit: float = 100.0
        self.retry_after_default: float = 0.01  # Retry-After on a 429 injected without an explicit value
        # The SDK retries 409 like 429. Together sends no retry hint with the duplicate-upload 409
        # (None): the SDK then backs off ~0.5-8 s per retry. A client must not wait for that.
        self.conflict_retry_after: float | None = None
        # Retrieves of a file after preprocess until its validation ends (0: at once, inside preprocess).
        self.file_polls: int = 2
        # "negotiate": gzip when the client's Accept-Encoding allows it (as a CDN would); "gzip": always
        # (a proxy that ignores Accept-Encoding); "identity": never.
        self.download_encoding: str = "negotiate"
        self._lock = threading.RLock()
        self._runs: dict[str, _Run] = {}
        self._faults: list[_Fault] = []
        self._random: _RandomFaults | None = None
        self._drop_creates = 0
        self._outcomes: list[tuple[str, str, str]] = []
        self._file_verdicts: list[tuple[str, str]] = []  # (file name contains, Together's error)
        self.unvalidated_uses: list[tuple[str, str]] = []  # (path, file id) of estimates/creates too early
        self.max_in_flight: int = 0  # the most jobs not yet ended at any create (poll-driven clock)
        self.download_accept_encodings: list[str] = []  # Accept-Encoding of every adapter download
        # Downloads answered with a 302 to signed storage on another host name ("localhost" instead of
        # 127.0.0.1), as a download served from object storage is; what each storage GET carried.
        self.download_redirect: bool = False
        self.storage_downloads: list[tuple[str, str | None]] = []  # (Host, Authorization) per GET
        self._signed_downloads: dict[str, tuple[Callable[[], bytes], dict[str, str]]] = {}
        self._downloads: list[tuple[str, str, str]] = []
        self._creates = 0
        self._uploads = 0
        self._signing_key = secrets.token_bytes(32)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url: str = ""
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., _Reply]]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in (
                ("POST", r"/v1/files", self._files_create),
                ("GET", r"/v1/files", self._files_list),
                ("GET", r"/v1/files/(?P<id>[^/]+)", self._files_retrieve),
                ("DELETE", r"/v1/files/(?P<id>[^/]+)", self._files_delete),
                ("GET", r"/v1/files/(?P<id>[^/]+)/content", self._files_content),
                ("POST", r"/v1/files/(?P<id>[^/]+)/preprocess", self._files_preprocess),
                ("GET", r"/v1/fine-tunes/models/limits", self._limits),
                ("POST", r"/v1/fine-tunes/estimate-price", self._estimate_price),
                ("POST", r"/v1/fine-tunes", self._jobs_create),
                ("GET", r"/v1/fine-tunes", self._jobs_list),
                ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)", self._jobs_retrieve),
                ("DELETE", r"/v1/fine-tunes/(?P<id>[^/]+)", self._jobs_delete),
                ("POST", r"/v1/fine-tunes/(?P<id>[^/]+)/cancel", self._jobs_cancel),
                ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)/events", self._jobs_events),
                ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)/metrics", self._jobs_metrics),
                ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)/checkpoints", self._jobs_checkpoints),
                ("GET", r"/v1/finetune/download", self._download),
            )
        ]

    # ----------------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------------

    def start(self) -> FakeTogether:
        """Bind a free loopback port and serve from a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0))
        server.fake = self
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-together", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release the port and end open keep-alive connections: the API is then down."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeTogether:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------
    # Inspection
    # ----------------------------------------------------------------------------------------------

    def count(self, method: str, path_regex: str) -> int:
        """How many requests with this method had a path (query excluded) matching ``re.search``."""
        pattern = re.compile(path_regex)
        with self._lock:
            return sum(1 for m, p in self.calls if m == method.upper() and pattern.search(p))

    @property
    def creates(self) -> int:
        """POSTs to /v1/fine-tunes that created a job (a dropped answer still counts: the job exists)."""
        return self._creates

    @property
    def uploads(self) -> int:
        """PUTs of file bytes that the storage accepted."""
        return self._uploads

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """A copy of the job's event log (what GET /v1/fine-tunes/{id}/events answers)."""
        with self._lock:
            return copy.deepcopy(self.jobs[job_id]["events"])

    # ----------------------------------------------------------------------------------------------
    # Job behaviour
    # ----------------------------------------------------------------------------------------------

    def set_outcome(self, suffix_contains: str, status: str, message: str = "Injected failure") -> None:
        """Jobs whose suffix contains this end in ``status`` (error, user_error, cancelled, or completed).

        Decided when the job reaches its end, so it applies to jobs already running too; the latest
        matching rule wins. The message goes into the job's final event (type ``job_error`` for error and
        user_error, ``job_stopped`` for cancelled, level ``error``/``warning``): the SDK's job models have
        no error/message field, so events are the only place a client can read it.
        """
        if status not in OUTCOME_STATUSES:
            raise ValueError(f"status must be one of {OUTCOME_STATUSES}, not {status!r}")
        with self._lock:
            self._outcomes.append((suffix_contains, status, message))

    def set_download(self, suffix_contains: str, kind: str, *, prefix: str = "") -> None:
        """What GET /v1/finetune/download serves for jobs whose suffix contains this (latest rule wins).

        ``prefix`` puts the archive members under a directory (Together's real layout is unverified).
        """
        if kind not in DOWNLOAD_KINDS:
            raise ValueError(f"kind must be one of {DOWNLOAD_KINDS}, not {kind!r}")
        with self._lock:
            self._downloads.append((suffix_contains, kind, prefix))

    def reject_file(self, name_contains: str, error: str) -> None:
        """Together's own validation rejects files whose name contains this (INVALID_FORMAT, ``error`` in
        the report), even when the content looks fine to a client-side check."""
        with self._lock:
            self._file_verdicts.append((name_contains, error))

    def advance(self, job_id: str, polls: int = 1) -> dict[str, Any]:
        """Move a job on as ``polls`` retrieves would, without a request (for jobs a test only lists)."""
        with self._lock:
            for _ in range(polls):
                self._advance(job_id)
            return self._view(self.jobs[job_id], full=True)

    def complete_all(self) -> None:
        """Bring every unfinished job to its end: its outcome rule, else completed (or cancelled)."""
        with self._lock:
            for job_id, job in self.jobs.items():
                if job["status"] == "cancel_requested":
                    self._advance(job_id)
                elif job["status"] not in TERMINAL_STATUSES:
                    self._finish_by_outcome(job, self._runs[job_id])

    def add_job(self, **fields: Any) -> str:
        """Seed a job as if created earlier (e.g. one our ledger lost); returns its id. Not in ``creates``.

        Any job-object field may be given (``suffix``, ``status``, ``model``, ``training_file``,
        ``created_at``...), plus the shortcuts ``lora_r``, ``lora_alpha``, ``lora_dropout``,
        ``lora_trainable_modules`` (into ``training_type``) and ``message`` (for a failed status). The
        default (no ``status``) is a LoRA r=4 q/v job that behaves exactly like a created one (so
        ``job_polls=0`` completes it at once); an explicit ``status`` is applied as given, and the job
        advances from there on retrieve.
        """
        message = fields.pop("message", "Injected failure")
        lora = {
            "lora_r": fields.pop("lora_r", 4),
            "lora_alpha": fields.pop("lora_alpha", 16),
            "lora_dropout": fields.pop("lora_dropout", 0.0),
            "lora_trainable_modules": fields.pop("lora_trainable_modules", "q_proj,v_proj"),
            "type": "Lora",
        }
        status = fields.pop("status", None)
        if status is not None and (not isinstance(status, str) or not status):
            raise ValueError(f"status must be a non-empty string, got {status!r}")
        request: dict[str, Any] = {
            "training_file": fields.pop("training_file", f"file-{uuid.uuid4()}"),
            "model": fields.pop("model", DEFAULT_MODEL),
            "suffix": fields.pop("suffix", None),
            "n_epochs": fields.pop("n_epochs", 1),
            "batch_size": fields.pop("batch_size", 32),
            "learning_rate": fields.pop("learning_rate", 2e-4),
            "training_type": fields.pop("training_type", lora),
            "training_method": fields.pop("training_method", {"method": "sft", "train_on_inputs": False}),
        }
        with self._lock:
            job = self._new_job(request, job_id=fields.pop("id", None), settle=status is None)
            job.update(fields)
            run = self._runs[job["id"]]
            if status in ("error", "user_error", "cancelled"):
                self._finish(job, run, status, message)
            elif status in STAGES:
                self._move(job, run, status)
            elif status == "cancel_requested":
                job["status"] = status
                self._event(job, "cancel_requested", "Cancellation requested by the user")
            elif status is not None:  # a status nobody documented: advances like any job on retrieve
                job["status"] = status
            return str(job["id"])

    # ----------------------------------------------------------------------------------------------
    # Faults
    # ----------------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 503,
        times: int = 1,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next ``times`` matching requests get ``status`` before anything happens (no state change).

        Rules are consumed in the order added. A 429 always carries ``Retry-After`` (``retry_after`` or
        ``retry_after_default``); other statuses carry it only when ``retry_after`` is given. ``body``
        replaces the default ``{"error": {...}}`` JSON.
        """
        with self._lock:
            self._faults.append(
                _Fault(method.upper(), re.compile(path_regex), times, "status", status, retry_after, body)
            )

    def reset_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """The next ``times`` matching requests are read, then the connection is reset with no answer."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), times, "reset"))

    def drop_create_response(self, times: int = 1) -> None:
        """The next ``times`` successful ``POST /v1/fine-tunes`` CREATE the job, then reset the connection.

        This is the lost-answer case: the client sees a connection error although a paid job exists.
        """
        with self._lock:
            self._drop_creates += times

    def fail_randomly(
        self,
        rate: float,
        statuses: tuple[int, ...] = (429, 503),
        seed: int = 0,
        retry_after: float | None = 0.01,
        *,
        include_storage: bool = False,
    ) -> None:
        """That share of API requests (every ``/v1/...`` path, download included) fail before doing anything.

        The storage PUT of an upload is left alone unless ``include_storage``: the SDK sends that PUT
        through bare httpx with no retry, so a random failure there fails the whole upload instead of
        exercising retries. Seeded, so a single-threaded test sees the same failures every run.
        ``fail_randomly(0)`` turns it off. Explicit ``fail_next``/``reset_next`` rules are applied first.
        """
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._random = (
                _RandomFaults(rate, tuple(statuses), random.Random(seed), retry_after, include_storage)
                if rate
                else None
            )

    # ----------------------------------------------------------------------------------------------
    # Dispatch
    # ----------------------------------------------------------------------------------------------

    def _dispatch(self, req: _Request) -> _Reply:
        with self._lock:
            self.calls.append((req.method, req.path))
            reply = self._fault_for(req)
            if reply is None:
                try:
                    reply = self._route(req)
                except _BadRequest as exc:
                    reply = _error(exc.status, str(exc))
                except Exception as exc:  # a bug in the fake must fail loudly, not look like a network error
                    self.bugs.append(traceback.format_exc())
                    reply = _error(
                        500,
                        f"fake server bug: {exc!r}",
                        type_="fake_bug",
                        headers={"x-should-retry": "false"},
                    )
            if reply.status >= 400:
                self.errors.append((req.method, req.path, reply.status, _message_of(reply.body)))
            return reply

    def _fault_for(self, req: _Request) -> _Reply | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == req.method and fault.pattern.search(req.path):
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                if fault.kind == "reset":
                    return _Reply(action="reset")
                return self._fault_reply(fault.status, fault.retry_after, fault.body)
        rnd = self._random
        in_scope = rnd is not None and (req.path.startswith("/v1/") or rnd.include_storage)
        if rnd is not None and in_scope and rnd.rng.random() < rnd.rate:
            return self._fault_reply(rnd.rng.choice(rnd.statuses), rnd.retry_after, None)
        return None

    def _fault_reply(self, status: int, retry_after: float | None, body: dict[str, Any] | None) -> _Reply:
        if retry_after is None and status == 429:
            retry_after = self.retry_after_default
        headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else {}
        if body is not None:
            return _json_reply(status, body, headers)
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return _error(status, f"injected fault: HTTP {status}", type_=kind, headers=headers)

    def _route(self, req: _Request) -> _Reply:
        if req.path.startswith("/storage/downloads/"):
            return self._storage_get(req)
        if req.path.startswith("/storage/"):
            return self._storage_put(req)
        if req.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Invalid API key provided", code="invalid_api_key")
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(req.path)
            if match:
                path_matched = True
                if method == req.method:
                    return self._shaped(handler.__name__, handler(req, **match.groupdict()))
        if path_matched:
            return _error(405, f"{req.method} is not allowed on {req.path}")
        return _error(404, f"no route for {req.method} {req.path}", code="not_found")

    def _shaped(self, handler: str, reply: _Reply) -> _Reply:
        """In spec-minimal mode, cut a JSON answer down to what the spec promises."""
        if self.answers != "spec-minimal" or not reply.body or reply.body_factory is not None:
            return reply
        if not reply.headers.get("Content-Type", "").startswith("application/json"):
            return reply
        body = shapes.shape(handler, reply.status, json.loads(reply.body))
        return _Reply(reply.status, json.dumps(body).encode(), reply.headers, reply.action)

    # ----------------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------------

    def _file_view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in record.items() if k not in ("checksum", "content") and not k.startswith("_")}
        # the spec's flag beside the SDK's status: both shapes in one answer
        view["Processed"] = record.get("processing_status") in shapes.FILE_VERDICTS
        return view

    def _file(self, file_id: str) -> dict[str, Any]:
        record = self.files.get(file_id)
        if record is None:
            raise _BadRequest(f"file {file_id} not found", 404)
        return record

    def _sign(self, file_id: str) -> str:
        return hmac.new(self._signing_key, file_id.encode(), hashlib.sha256).hexdigest()

    def _files_create(self, req: _Request) -> _Reply:
        content_type = req.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
            raise _BadRequest(f"POST /v1/files needs multipart/form-data, got {content_type!r}")
        message = email.message_from_bytes(
            b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + req.body
        )
        if not message.is_multipart():
            raise _BadRequest("malformed multipart body")
        form: dict[str, str] = {}
        for part in message.get_payload():
            assert isinstance(part, email.message.Message)
            name = part.get_param("name", header="content-disposition")
            if part.get_param("filename", header="content-disposition") is not None:
                raise _BadRequest("file bytes must be PUT to the upload URL, not posted to /v1/files")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                form[name] = payload.decode()
        missing = [k for k in ("purpose", "file_name", "file_type", "checksum") if not form.get(k)]
        if missing:
            raise _BadRequest(f"missing form field(s): {', '.join(missing)}")
        if form["purpose"] not in FILE_PURPOSES:
            raise _BadRequest(f"purpose must be one of {FILE_PURPOSES}")
        if form["file_type"] not in FILE_TYPES:
            raise _BadRequest(f"file_type must be one of {FILE_TYPES}")
        if not form["file_name"].endswith("." + form["file_type"]):
            raise _BadRequest(
                f"file_name {form['file_name']!r} does not match file_type {form['file_type']!r}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", form["checksum"]):
            raise _BadRequest("checksum must be a lower-case sha256 hex digest")
        for record in self.files.values():
            if record["checksum"] == form["checksum"] and record["content"] is not None:
                headers = (
                    {"Retry-After": _seconds(self.conflict_retry_after)}
                    if self.conflict_retry_after is not None
                    else {}
                )
                return _json_reply(409, {"message": "File already exists", "file_id": record["id"]}, headers)
        file_id = f"file-{uuid.uuid4()}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": 0,
            "created_at": int(datetime.now(UTC).timestamp()),
            "filename": form["file_name"],
            "FileType": form["file_type"],
            "purpose": form["purpose"],
            "processing_status": "PENDING",
            "checksum": form["checksum"],
            "content": None,
        }
        location = f"{self.base_url}/storage/uploads/{file_id}?sig={self._sign(file_id)}"
        return _Reply(302, b"", {"Location": location, "X-Together-File-Id": file_id})

    def _storage_put(self, req: _Request) -> _Reply:
        """The presigned-URL side: no API key allowed (S3 refuses two auth mechanisms), exact sha256."""
        match = re.fullmatch(r"/storage/uploads/(?P<id>[^/]+)", req.path)
        if match is None:
            return _error(404, "no such storage object")
        if req.method != "PUT":
            return _error(405, "storage accepts PUT only")
        if req.headers.get("Authorization") is not None:
            return _error(400, "Only one auth mechanism allowed: presigned URL and an Authorization header")
        file_id = match["id"]
        if not hmac.compare_digest(req.arg("sig") or "", self._sign(file_id)):
            return _error(403, "upload URL signature does not match")
        record = self.files.get(file_id)
        if record is None:
            return _error(404, f"no pending upload for {file_id}")
        if req.headers.get("Content-Length") is None and "chunked" not in (
            req.headers.get("Transfer-Encoding") or ""
        ):
            return _error(411, "Content-Length required")
        digest = hashlib.sha256(req.body).hexdigest()
        if digest != record["checksum"]:
            return _error(400, f"body sha256 {digest} does not match announced checksum {record['checksum']}")
        record["content"] = req.body
        record["bytes"] = len(req.body)
        self._uploads += 1
        return _Reply(200, b"", {"ETag": f'"{digest[:32]}"'})

    def _files_preprocess(self, req: _Request, id: str) -> _Reply:
        record = self._file(id)
        if record["content"] is None:
            raise _BadRequest(f"file {id} has no uploaded bytes yet")
        report = _validate_dataset(record["content"], record["FileType"], record["purpose"])
        for contains, error in self._file_verdicts:
            if contains in record["filename"]:
                report = _invalid(error)
        record["_report"] = {"file_id": id, **report}
        record["_polls"] = 0
        record["processing_status"] = "PENDING"
        record.pop("validation_report", None)
        if self.file_polls <= 0:
            self._settle_file(record)
        return _json_reply(200, self._file_view(record))

    def _settle_file(self, record: dict[str, Any]) -> None:
        report = record["_report"]
        record["processing_status"] = "COMPLETED" if report["valid"] else "INVALID_FORMAT"
        record["validation_report"] = report

    def _advance_file(self, record: dict[str, Any]) -> None:
        """One retrieve's worth of validation progress (like jobs, files only move when read)."""
        if record.get("processing_status") not in ("PENDING", "QUEUED", "RUNNING") or "_report" not in record:
            return
        record["_polls"] += 1
        if record["_polls"] >= self.file_polls:
            self._settle_file(record)
        else:
            record["processing_status"] = "QUEUED" if record["_polls"] == 1 else "RUNNING"

    def _files_retrieve(self, req: _Request, id: str) -> _Reply:
        record = self._file(id)
        self._advance_file(record)
        return _json_reply(200, self._file_view(record))

    def _files_list(self, req: _Request) -> _Reply:
        return _json_reply(200, {"object": "list", "data": [self._file_view(f) for f in self.files.values()]})

    def _files_delete(self, req: _Request, id: str) -> _Reply:
        self._file(id)
        del self.files[id]
        return _json_reply(200, {"id": id, "deleted": True})

    def _files_content(self, req: _Request, id: str) -> _Reply:
        record = self._file(id)
        return _Reply(200, record["content"] or b"", {"Content-Type": "application/octet-stream"})

    # ----------------------------------------------------------------------------------------------
    # Limits and price
    # ----------------------------------------------------------------------------------------------

    def _limits_for(self, model: str) -> dict[str, Any]:
        if self.known_models is not None and model not in self.known_models:
            raise _BadRequest(f"model {model!r} is not available for fine-tuning", 404)
        return self.model_limits(model)

    def _limits(self, req: _Request) -> _Reply:
        model = req.arg("model_name")
        if not model:
            raise _BadRequest("model_name query parameter is required")
        return _json_reply(200, self._limits_for(model))

    def _price_nanodollars(self, record: dict[str, Any], n_epochs: int) -> int:
        tokens = math.ceil(record["bytes"] / 4) * n_epochs
        return round(tokens * self.price_per_million_tokens / 1e6 * NANODOLLARS_PER_DOLLAR)

    def _estimate_price(self, req: _Request) -> _Reply:
        body = _json_object(req)
        self.estimates.append(copy.deepcopy(body))
        training_file = body.get("training_file")
        if not isinstance(training_file, str) or not training_file:
            raise _BadRequest("training_file is required")
        record = self.files.get(training_file)
        if record is None:
            raise _BadRequest(f"training_file {training_file} not found")
        n_epochs = body.get("n_epochs", 1)
        if not _is_int(n_epochs) or n_epochs < 1:
            raise _BadRequest("n_epochs must be an integer >= 1")
        _check_training_type(body.get("training_type"), None)
        _check_training_method(body.get("training_method"))
        if record["processing_status"] != "COMPLETED":
            self.unvalidated_uses.append((req.path, training_file))
        if record["processing_status"] == "INVALID_FORMAT":
            return _json_reply(
                200, {"estimation_available": False, "unavailable_reason": "train_file_invalid"}
            )
        if record["processing_status"] != "COMPLETED":
            return _json_reply(
                200, {"estimation_available": False, "unavailable_reason": "train_file_not_validated"}
            )
        price = self._price_nanodollars(record, n_epochs) / NANODOLLARS_PER_DOLLAR
        return _json_reply(
            200,
            {  # no "estimation_available": Together's spec has no such field in this answer
                "allowed_to_proceed": price <= self.user_limit,
                "estimated_total_price": price,
                "user_limit": self.user_limit,
                "estimated_train_token_count": math.ceil(record["bytes"] / 4) * n_epochs,
                "estimated_eval_token_count": 0,
            },
        )

    # ----------------------------------------------------------------------------------------------
    # Jobs
    # ----------------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise _BadRequest(f"fine-tune job {job_id} not found", 404)
        return job

    def _view(self, job: dict[str, Any], *, full: bool) -> dict[str, Any]:
        if full:  # the job object's own events list is empty: GET .../events has them
            view = copy.deepcopy({k: v for k, v in job.items() if k not in PRIVATE_JOB_KEYS})
            view["events"] = []
            return view
        return copy.deepcopy({k: v for k, v in job.items() if k in TRUNCATED_JOB_KEYS})

    def _jobs_create(self, req: _Request) -> _Reply:
        body = _json_object(req)
        self._validate_create(body)
        job = self._new_job(body)
        self._creates += 1
        in_flight = sum(1 for j in self.jobs.values() if j["status"] not in TERMINAL_STATUSES)
        self.max_in_flight = max(self.max_in_flight, in_flight)
        if self._drop_creates > 0:
            self._drop_creates -= 1
            return _Reply(action="reset")
        return _json_reply(200, self._view(job, full=False))

    def _validate_create(self, body: dict[str, Any]) -> None:
        """Reject what Together would (or what would be a bug in our client): 400 with the reason."""
        training_file = body.get("training_file")
        if not isinstance(training_file, str) or not training_file:
            raise _BadRequest("training_file is required")
        self._check_usable_file(training_file, "training_file")
        validation_file = body.get("validation_file")
        if validation_file not in (None, ""):
            if not isinstance(validation_file, str):
                raise _BadRequest("validation_file must be a file id")
            self._check_usable_file(validation_file, "validation_file")
        model = body.get("model")
        if model is None and not body.get("from_checkpoint"):
            raise _BadRequest("model (or from_checkpoint) is required")
        if model is not None and (not isinstance(model, str) or not model):
            raise _BadRequest("model must be a non-empty string")
        limits = self._limits_for(model) if model else default_model_limits(str(body["from_checkpoint"]))
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 40):
            raise _BadRequest("suffix must be a string of at most 40 characters")
        n_epochs = body.get("n_epochs")
        if not _is_int(n_epochs) or not 1 <= n_epochs <= limits["max_num_epochs"]:
            raise _BadRequest(f"n_epochs must be an integer in [1, {limits['max_num_epochs']}]")
        lr = body.get("learning_rate")
        if not _is_number(lr) or not limits["min_learning_rate"] <= lr <= limits["max_learning_rate"]:
            raise _BadRequest(
                f"learning_rate must be within [{limits['min_learning_rate']}, {limits['max_learning_rate']}]"
            )
        training_type = body.get("training_type")
        _check_training_type(training_type, limits)
        _check_training_method(body.get("training_method"))
        batch = body.get("batch_size")
        if batch is not None and batch != "max":
            if not _is_int(batch):
                raise _BadRequest("batch_size must be an integer or 'max'")
            bounds = _batch_bounds(training_type, limits)
            if not bounds[0] <= batch <= bounds[1]:
                raise _BadRequest(f"batch_size must be within [{bounds[0]}, {bounds[1]}]")
        scheduler = body.get("lr_scheduler")
        if scheduler is not None and (
            not isinstance(scheduler, dict) or scheduler.get("lr_scheduler_type") not in ("linear", "cosine")
        ):
            raise _BadRequest("lr_scheduler.lr_scheduler_type must be 'linear' or 'cosine'")
        for name, low, high in (
            ("warmup_ratio", 0, 1),
            ("weight_decay", 0, None),
            ("max_grad_norm", 0, None),
        ):
            value = body.get(name)
            if value is not None and (
                not _is_number(value) or value < low or (high is not None and value > high)
            ):
                raise _BadRequest(f"{name} is out of range")
        for name in ("n_checkpoints", "n_evals", "gradient_accumulation_steps", "random_seed"):
            value = body.get(name)
            if value is not None and (not _is_int(value) or value < 0):
                raise _BadRequest(f"{name} must be a non-negative integer")
        seq = body.get("max_seq_length")
        if seq is not None and (
            not _is_int(seq) or not limits["min_max_seq_length"] <= seq <= limits["max_seq_length_sft"]
        ):
            raise _BadRequest(
                f"max_seq_length must be within [{limits['min_max_seq_length']}, "
                f"{limits['max_seq_length_sft']}]"
            )
        for name in ("packing", "early_stopping_enabled"):
            if body.get(name) is not None and not isinstance(body.get(name), bool):
                raise _BadRequest(f"{name} must be a boolean")

    def _check_usable_file(self, file_id: str, what: str) -> None:
        record = self.files.get(file_id)
        if record is None:
            raise _BadRequest(f"{what} {file_id} not found")
        if record["content"] is None:
            raise _BadRequest(f"{what} {file_id} was never uploaded")
        if record["purpose"] != "fine-tune":
            raise _BadRequest(f"{what} {file_id} has purpose {record['purpose']!r}, not 'fine-tune'")
        if record["processing_status"] != "COMPLETED":
            self.unvalidated_uses.append(("/v1/fine-tunes", file_id))
            raise _BadRequest(f"{what} {file_id} is {record['processing_status']}, not a validated dataset")

    def _new_job(
        self, body: dict[str, Any], job_id: str | None = None, settle: bool = True
    ) -> dict[str, Any]:
        """Build and store a job from a create body (already validated, or seeded by ``add_job``).

        ``settle``: apply ``job_polls <= 0`` (finish at once), as a create does.
        """
        job_id = job_id or f"ft-{uuid.uuid4()}"
        now = _now()
        model = body.get("model") or str(body.get("from_checkpoint", "")).split(":")[0]
        limits = default_model_limits(model)
        training_type = body.get("training_type")
        is_lora = not isinstance(training_type, dict) or training_type.get("type") == "Lora"
        batch = body.get("batch_size")
        if batch in (None, "max"):
            batch = _batch_bounds(training_type, limits)[1]
        record = self.files.get(body["training_file"]) or {}
        size = int(record.get("bytes", 0))
        lines = int((record.get("validation_report") or {}).get("nlines", 0))
        n_epochs = int(body.get("n_epochs") or 1)
        steps_per_epoch = max(1, math.ceil(lines / batch)) if lines else 1
        total_steps = max(self.min_total_steps, steps_per_epoch * n_epochs)
        steps_per_epoch = max(1, total_steps // n_epochs)
        suffix = body.get("suffix")
        base = model.split("/")[-1]
        rand = secrets.token_hex(4)
        output_name = f"{self.account}/{base}-{suffix}-{rand}" if suffix else f"{self.account}/{base}-{rand}"
        method = body.get("training_method")
        job: dict[str, Any] = {
            "id": job_id,
            "status": "pending",
            "user_id": self.user_id,
            "owner_address": self.owner_address,
            "created_at": now,
            "updated_at": now,
            "model": model,
            "model_output_name": output_name,
            "adapter_output_name": f"{output_name}-adapter" if is_lora else None,
            "suffix": suffix,
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "n_epochs": n_epochs,
            "n_checkpoints": body.get("n_checkpoints"),
            "n_evals": body.get("n_evals"),
            "batch_size": batch,
            "learning_rate": body.get("learning_rate"),
            "lr_scheduler": body.get("lr_scheduler"),
            "warmup_ratio": body.get("warmup_ratio"),
            "max_grad_norm": body.get("max_grad_norm"),
            "weight_decay": body.get("weight_decay"),
            "packing": body.get("packing"),
            "max_seq_length": body.get("max_seq_length"),
            "random_seed": body.get("random_seed"),
            "training_type": training_type,
            "training_method": method,
            "train_on_inputs": method.get("train_on_inputs") if isinstance(method, dict) else None,
            "multimodal_params": body.get("multimodal_params"),
            "from_checkpoint": body.get("from_checkpoint"),
            "from_hf_model": body.get("from_hf_model"),
            "hf_model_revision": body.get("hf_model_revision"),
            "wandb_project_name": body.get("wandb_project_name"),
            "wandb_name": body.get("wandb_name"),
            "wandb_entity": body.get("wandb_entity"),
            "token_count": math.ceil(size / 4) * n_epochs,
            "param_count": LLAMA_8B_PARAM_COUNT,
            "trainingfile_numlines": lines,
            "trainingfile_size": size,
            "total_price": 0,
            "epochs_completed": 0,
            "queue_depth": 0,
            "progress": {"estimate_available": True, "seconds_remaining": 60 * max(self.job_polls, 1)},
            "events": [],
            "request": copy.deepcopy(body),
        }
        keep_none = {"model_output_name", "adapter_output_name"}
        job = {k: v for k, v in job.items() if v is not None or k in keep_none}
        self.jobs[job_id] = job
        run = _Run(
            polls_needed=self.job_polls,
            schedule=_schedule(self.job_polls),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            full_price=self._price_nanodollars({"bytes": size}, n_epochs),
        )
        self._runs[job_id] = run
        self._event(job, "job_pending", "Fine-tuning request created")
        if settle and self.job_polls <= 0:
            self._finish_by_outcome(job, run)
        return job

    def _jobs_retrieve(self, req: _Request, id: str) -> _Reply:
        self._job(id)
        self._advance(id)
        return _json_reply(200, self._view(self.jobs[id], full=True))

    def _jobs_list(self, req: _Request) -> _Reply:
        return _json_reply(200, {"data": [self._view(job, full=False) for job in self.jobs.values()]})

    def _jobs_delete(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        if job["status"] not in TERMINAL_STATUSES:
            raise _BadRequest(f"fine-tune job {id} is {job['status']}; cancel it before deleting")
        del self.jobs[id]
        return _json_reply(200, {"message": f"fine-tune job {id} deleted"})

    def _jobs_cancel(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        if job["status"] in TERMINAL_STATUSES:
            raise _BadRequest(f"fine-tune job {id} is already {job['status']} and cannot be cancelled")
        if job["status"] != "cancel_requested":
            job["status"] = "cancel_requested"
            job["updated_at"] = _now()
            self._event(job, "cancel_requested", "Cancellation requested by the user")
        return _json_reply(200, self._view(job, full=False))

    def _jobs_events(self, req: _Request, id: str) -> _Reply:
        return _json_reply(200, {"data": copy.deepcopy(self._job(id)["events"])})

    def _jobs_metrics(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        run = self._runs[id]
        bounds: dict[str, int] = {}
        for name in ("global_step_from", "global_step_to", "resolution"):
            raw = req.arg(name)
            if raw is not None:
                if not re.fullmatch(r"\d+", raw):
                    raise _BadRequest(f"{name} must be a non-negative integer")
                bounds[name] = int(raw)
        low, high = bounds.get("global_step_from", 0), bounds.get("global_step_to", run.step)
        rows = []
        for step in range(max(1, low), min(run.step, high) + 1):
            rows.append(self._metric_row(job, run, step))
            if step in self._eval_steps(job, run):
                # Evaluations are rows of their own (as HF's Trainer logs them): only eval figures.
                rows.append(
                    {
                        "train/global_step": float(step),
                        self.eval_metric_key: round(0.5 + 1.6 * math.exp(-2.0 * step / run.total_steps), 6),
                    }
                )
        if bounds.get("resolution") and len(rows) > bounds["resolution"]:
            stride = len(rows) / bounds["resolution"]
            rows = [rows[int(i * stride)] for i in range(bounds["resolution"])]
        return _json_reply(200, {"metrics": rows})

    @staticmethod
    def _eval_steps(job: dict[str, Any], run: _Run) -> set[int]:
        """Where a job with a validation file evaluates: ``n_evals`` steps spread evenly, the last one at
        the final step; none without a validation file (Together ignores ``n_evals`` then)."""
        n = int(job.get("n_evals") or 0)
        if not job.get("validation_file") or n <= 0:
            return set()
        total = run.total_steps
        return {max(1, round(total * (i + 1) / n)) for i in range(n)}

    def _metric_row(self, job: dict[str, Any], run: _Run, step: int) -> dict[str, float]:
        fraction = step / run.total_steps
        lr = float(job.get("learning_rate") or 1e-5)
        scheduler = (job.get("lr_scheduler") or {}).get("lr_scheduler_type", "linear")
        lr_now = lr * (0.5 * (1 + math.cos(math.pi * fraction)) if scheduler == "cosine" else 1 - fraction)
        return {
            "train/global_step": float(step),
            "train/epoch": step / run.steps_per_epoch,
            "train/loss": round(0.35 + 1.85 * math.exp(-2.5 * fraction), 6),
            "train/learning_rate": lr_now,
        }

    def _jobs_checkpoints(self, req: _Request, id: str) -> _Reply:
        job = self._job(id)
        if job["status"] != "completed":
            return _json_reply(200, {"data": []})
        step = self._runs[id].total_steps
        data = [
            {
                "checkpoint_type": f"Final (step {step})",
                "created_at": job["updated_at"],
                "path": f"s3://fake-together/{id}/{kind}",
                "step": step,
                "checkpoint": kind,
            }
            for kind in ("adapter", "model")
        ]
        return _json_reply(200, {"data": data})

    def _download(self, req: _Request) -> _Reply:
        ft_id = req.arg("ft_id")
        if not ft_id:
            raise _BadRequest("ft_id is required")
        checkpoint = req.arg("checkpoint")
        if checkpoint != "adapter":
            raise _BadRequest(f"this fake serves checkpoint=adapter only, got {checkpoint!r}")
        step = req.arg("checkpoint_step")
        if step is not None and not re.fullmatch(r"\d+", step):
            raise _BadRequest("checkpoint_step must be a non-negative integer")
        job = self._job(ft_id)
        if job["status"] != "completed":
            raise _BadRequest(
                f"fine-tune job {ft_id} is {job['status']}; only completed jobs can be downloaded"
            )
        kind, prefix = "good", ""
        for contains, rule_kind, rule_prefix in self._downloads:
            if contains in (job.get("suffix") or ""):
                kind, prefix = rule_kind, rule_prefix
        training_type = job.get("training_type") or {}
        r = int(training_type.get("lora_r", 4))
        alpha = int(training_type.get("lora_alpha", 16))
        modules = tuple(
            m.strip() for m in str(training_type.get("lora_trainable_modules", "")).split(",") if m.strip()
        )
        if not modules or not set(modules) <= set(LLAMA_8B_SHAPES):
            modules = ("q_proj", "v_proj")  # "all-linear" and MLP modules: the builder knows attention only
        name = str(job["model_output_name"]).split("/")[-1]
        headers = {
            "Content-Type": ZSTD_CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="{name}-adapter.tar.zst"',
        }
        self.download_accept_encodings.append(req.headers.get("Accept-Encoding") or "")
        accepts = [
            part.split(";")[0].strip().lower()
            for part in (req.headers.get("Accept-Encoding") or "").split(",")
        ]
        encode = self.download_encoding == "gzip" or (
            self.download_encoding == "negotiate" and "gzip" in accepts
        )
        if encode:
            headers["Content-Encoding"] = "gzip"
        factory = lambda: _encoded(build_download(kind, r, alpha, modules, prefix), encode)  # noqa: E731
        if self.download_redirect:
            token = secrets.token_hex(12)
            self._signed_downloads[token] = (factory, headers)
            port = urlsplit(self.base_url).port
            location = f"http://localhost:{port}/storage/downloads/{token}?sig={self._sign(token)}"
            return _Reply(302, b"", {"Location": location})
        return _Reply(
            200,
            headers=headers,
            action="truncate" if kind == "truncated" else "send",
            body_factory=factory,
        )

    def _storage_get(self, req: _Request) -> _Reply:
        """Signed storage for downloads: like S3, a second credential (our API key) is refused."""
        token = req.path.rsplit("/", 1)[-1]
        self.storage_downloads.append((str(req.headers.get("Host")), req.headers.get("Authorization")))
        if req.method != "GET":
            return _error(405, "storage serves GET only")
        if not hmac.compare_digest(req.arg("sig") or "", self._sign(token)):
            return _error(403, "download URL signature does not match")
        if req.headers.get("Authorization") is not None:
            return _error(400, "Only one auth mechanism allowed: presigned URL and an Authorization header")
        signed = self._signed_downloads.get(token)
        if signed is None:
            return _error(404, "no such storage object")
        factory, headers = signed
        return _Reply(200, headers=dict(headers), body_factory=factory)

    # ----------------------------------------------------------------------------------------------
    # Simulation
    # ----------------------------------------------------------------------------------------------

    def _event(
        self, job: dict[str, Any], type_: str, message: str, level: str = "info", **extra: Any
    ) -> None:
        event = {
            "object": "fine-tune-event",
            "created_at": _now(),
            "type": type_,
            "level": level,
            "message": message,
            "hash": secrets.token_hex(8),
            # required by the spec's FineTuneEvent; Together fills them with zeros and "" when unset
            "param_count": LLAMA_8B_PARAM_COUNT,
            "token_count": int(job.get("token_count") or 0),
            "total_steps": run.total_steps if (run := self._runs.get(job["id"])) else 0,
            "step": run.step if run else 0,
            "wandb_url": "",
            "checkpoint_path": "",
            "model_path": "",
            "training_offset": 0,
            **{k: v for k, v in extra.items() if v is not None},
        }
        job["events"].append(event)

    def _advance_step(self, job: dict[str, Any], run: Any, step: int) -> None:
        """Move a running job's step forward (never back), with Together's checkpoint event."""
        step = min(run.total_steps - 1, step)
        if step > run.step:
            run.step = step
            job["epochs_completed"] = step // run.steps_per_epoch
            self._event(
                job,
                "checkpoint_save",
                f"Checkpoint saved at step {step} of {run.total_steps}",
                step=step,
                total_steps=run.total_steps,
            )

    def _move(self, job: dict[str, Any], run: _Run, target: str) -> None:
        """Go forward along STAGES to ``target``, logging every stage passed (skipped ones included)."""
        current = job["status"]
        start = STAGES.index(current) + 1 if current in STAGES else 0
        end = STAGES.index(target)
        for stage in STAGES[start : end + 1]:
            for type_, message in STAGE_EVENTS[stage]:
                extra: dict[str, Any] = {}
                if type_ == "training_start":
                    extra = {"step": 0, "total_steps": run.total_steps, "param_count": job.get("param_count")}
                    job["started_at"] = _now()
                elif type_ == "training_complete":
                    run.step = run.total_steps
                    extra = {
                        "step": run.step,
                        "total_steps": run.total_steps,
                        "token_count": job.get("token_count"),
                    }
                    job["epochs_completed"] = job.get("n_epochs", 1)
                self._event(job, type_, message, **extra)
        if end >= STAGES.index("running") and "started_at" not in job:
            job["started_at"] = _now()
        job["status"] = target
        job["updated_at"] = _now()
        job["queue_depth"] = 1 if target == "queued" else 0
        remaining = max(0, run.polls_needed - run.polls)
        job["progress"] = {"estimate_available": target != "completed", "seconds_remaining": 60 * remaining}
        if target == "completed":
            job["total_price"] = run.full_price

    def _advance(self, job_id: str) -> None:
        """One retrieve's worth of progress (the only clock this fake has)."""
        job, run = self.jobs[job_id], self._runs[job_id]
        status = job["status"]
        if status in TERMINAL_STATUSES:
            return
        if status == "cancel_requested":
            self._finish(job, run, "cancelled", "Job cancelled at the user's request", level="info")
            return
        run.polls += 1
        if run.polls >= run.polls_needed:
            self._finish_by_outcome(job, run)
            return
        target = run.schedule[run.polls - 1]
        if status in STAGES and STAGES.index(target) < STAGES.index(status):
            target = status
        self._move(job, run, target)
        if target == "running":
            self._advance_step(job, run, run.total_steps * run.polls // run.polls_needed)

    def _finish_by_outcome(self, job: dict[str, Any], run: _Run) -> None:
        status, message = "completed", ""
        for contains, rule_status, rule_message in self._outcomes:
            if contains in (job.get("suffix") or ""):
                status, message = rule_status, rule_message
        if status == "completed":
            self._move(job, run, "completed")
        else:
            self._finish(job, run, status, message)

    def _finish(self, job: dict[str, Any], run: _Run, status: str, message: str, level: str = "") -> None:
        if status == "cancelled":
            job["total_price"] = run.full_price * run.step // run.total_steps  # billed for steps done
            self._event(job, "job_stopped", message, level=level or "warning", step=run.step or None)
        else:
            job["total_price"] = 0
            # The SDK's hand-written enums spell these "Error" / "JOB_ERROR" / "JOB_USER_ERROR".
            kind = "JOB_USER_ERROR" if status == "user_error" else "JOB_ERROR"
            self._event(job, kind, message, level="Error", step=run.step or None)
        job["status"] = status
        job["updated_at"] = _now()
        job["queue_depth"] = 0
        job["progress"] = {"estimate_available": False, "seconds_remaining": 0}


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
