"""What the fake holds: the account, its files and jobs, what clients sent, and the behaviour knobs.

The routes (``files``, ``jobs``, ``simulation``, ``downloads``, ``faults``) are mixins over this one
state, and ``server`` puts them together. Apart so that every route module imports the state it reads
from below it, instead of relying on attributes that only the server's ``__init__`` sets (the import
circle the route modules and the server used to make).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

from tests.fake_together import shapes
from tests.fake_together.common import default_model_limits
from tests.fake_together.wire import _Fault, _RandomFaults, _Run, _Server


class FakeState:
    """The state of ``FakeTogether``; every change happens under ``_lock``."""

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

    def _sign(self, name: str) -> str:
        """The signature of a storage URL (uploads and downloads alike): only the fake can make one."""
        return hmac.new(self._signing_key, name.encode(), hashlib.sha256).hexdigest()
