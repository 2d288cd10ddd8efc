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

import copy
import json
import re
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from tests.fake_together import shapes
from tests.fake_together.common import (
    DEFAULT_MODEL,
    DOWNLOAD_KINDS,
    OUTCOME_STATUSES,
    STAGES,
    TERMINAL_STATUSES,
    default_model_limits,
)
from tests.fake_together.downloads import DownloadsMixin
from tests.fake_together.faults import FaultsMixin
from tests.fake_together.files import FilesMixin
from tests.fake_together.jobs import JobsMixin
from tests.fake_together.simulation import JobSimulationMixin
from tests.fake_together.wire import (
    _BadRequest,
    _error,
    _message_of,
    _Reply,
    _Request,
    _Server,
)

# What other tests import from here besides ``FakeTogether``.
__all__ = ["DOWNLOAD_KINDS", "OUTCOME_STATUSES", "FakeTogether", "default_model_limits"]

# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FakeTogether(FaultsMixin, FilesMixin, DownloadsMixin, JobsMixin, JobSimulationMixin):
    """Together's fine-tuning API on ``127.0.0.1:<free port>``, with readable state and injectable faults.

    Use as a context manager (or ``start()``/``stop()``). All state lives behind one lock; the public
    dicts and lists are safe to read once the client calls that changed them have returned. The state
    is ``state.FakeState``; each route mixin builds on it (downloads on jobs, jobs on the simulation).
    """

    def __init__(self, *, job_polls: int = 3, answers: str | None = None) -> None:
        super().__init__(job_polls=job_polls, answers=answers)
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
        self._thread = server.serve("fake-together")
        return self

    def stop(self) -> None:
        """Stop serving, release the port and end open keep-alive connections: the API is then down."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
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
