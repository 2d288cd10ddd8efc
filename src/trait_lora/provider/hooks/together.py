"""``TogetherHook``: the only code that talks to Together AI.

Connection ``together`` (default id ``together_default``): password = API key, host = API base URL
(default ``https://api.together.ai``; a trailing ``/v1`` is stripped because every SDK path already
starts with ``/v1/``). Every method is one API call (or one streamed download) with a docstring that
says what it is for; sync and async twins where the triggerer needs them.

The SDK is imported lazily so that importing this module (e.g. from a DAG file) stays cheap.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk.bases.hook import BaseHook

if TYPE_CHECKING:
    from together import AsyncTogether, Together

DEFAULT_BASE_URL = "https://api.together.ai"
DEFAULT_MAX_RETRIES = 8
DEFAULT_TIMEOUT = 60.0
NANODOLLARS = 1e9  # ``total_price`` is an integer in nano-USD (the SDK's CLI divides by 1e9)
TERMINAL_STATUSES = frozenset({"completed", "cancelled", "error", "user_error"})
FAILED_STATUSES = frozenset({"cancelled", "error", "user_error"})
ACTIVE_STATUSES = frozenset({"pending", "queued", "running", "compressing", "uploading", "cancel_requested"})

T = TypeVar("T")


class TogetherConfigError(Exception):
    """The Together connection is missing or incomplete."""


def normalise_base_url(host: str | None) -> str:
    """Accept ``api.together.ai``, ``https://api.together.ai/`` or ``.../v1``; return the host URL."""
    url = (host or "").strip() or DEFAULT_BASE_URL
    if "://" not in url:
        url = f"https://{url}"
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def job_to_dict(job: Any) -> dict[str, Any]:
    """A JSON-safe dict of an SDK job object (keeps fields the generated model does not declare)."""
    if isinstance(job, dict):
        return dict(job)
    data = job.model_dump(mode="json", by_alias=True) if hasattr(job, "model_dump") else dict(vars(job))
    extra = getattr(job, "model_extra", None) or {}
    for key, value in extra.items():
        data.setdefault(key, value)
    return data


def output_name(job: dict[str, Any]) -> str | None:
    """Sync ``create`` says ``output_name``, ``retrieve`` says ``model_output_name``: read both."""
    return job.get("model_output_name") or job.get("output_name") or job.get("x_model_output_name")


def job_matches_tag(job: dict[str, Any], tag: str) -> bool:
    """A job is ours for a key when its suffix (or, failing that, its output name) carries the tag."""
    suffix = job.get("suffix") or ""
    if suffix:
        return suffix.endswith(tag)
    return tag in (output_name(job) or "")


def is_permanent(exc: BaseException) -> bool:
    """A 4xx other than 408/409/429: the request itself is wrong, retrying the task cannot help."""
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


def retry_after_seconds(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def backoff_delay(
    attempt: int, exc: BaseException | None = None, base: float = 1.0, cap: float = 60.0
) -> float:
    """Retry-After when the server gave one, else exponential backoff with full jitter."""
    hinted = retry_after_seconds(exc) if exc is not None else None
    if hinted is not None:
        return min(cap, hinted) + random.uniform(0, min(1.0, hinted * 0.1 + 0.01))
    return random.uniform(0, min(cap, base * (2**attempt)))


class TogetherHook(BaseHook):
    """Sync and async Together clients built from an Airflow connection."""

    conn_name_attr = "together_conn_id"
    default_conn_name = "together_default"
    conn_type = "together"
    hook_name = "Together AI"

    def __init__(self, together_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.together_conn_id = together_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login", "extra"],
            "relabeling": {"host": "API base URL", "password": "API key"},
            "placeholders": {"host": DEFAULT_BASE_URL},
        }

    # -- credentials --------------------------------------------------------------------------
    def _settings_from_connection(self, conn: Any) -> dict[str, Any]:
        extra = conn.extra_dejson or {}
        api_key = conn.password
        if not api_key:
            raise TogetherConfigError(
                f"connection {self.together_conn_id!r} has no API key: put the Together API key in its "
                "password field (or define AIRFLOW_CONN_TOGETHER_DEFAULT)"
            )
        return {
            "api_key": api_key,
            "base_url": normalise_base_url(conn.host),
            "max_retries": int(extra.get("max_retries", DEFAULT_MAX_RETRIES)),
            "timeout": float(extra.get("timeout", DEFAULT_TIMEOUT)),
        }

    @cached_property
    def settings(self) -> dict[str, Any]:
        """API key, base URL and retry policy; the key lives only here and in the SDK clients."""
        conn = self.get_connection(self.together_conn_id)
        settings = self._settings_from_connection(conn)
        self._mask(settings["api_key"])
        return settings

    async def asettings(self) -> dict[str, Any]:
        if "settings" in self.__dict__:
            return self.__dict__["settings"]
        conn = await self.aget_connection(self.together_conn_id)
        settings = self._settings_from_connection(conn)
        self._mask(settings["api_key"])
        self.__dict__["settings"] = settings
        return settings

    @staticmethod
    def _mask(secret: str) -> None:
        try:
            from airflow.sdk.log import mask_secret

            mask_secret(secret)
        except Exception:  # masking is best effort outside a task (e.g. the CLI)
            pass

    @property
    def base_url(self) -> str:
        return self.settings["base_url"]

    # -- clients ------------------------------------------------------------------------------
    def get_conn(self) -> Together:
        return self.client

    @cached_property
    def client(self) -> Together:
        """Client for idempotent calls: the SDK's retries (429 with Retry-After, 5xx, resets) are on."""
        from together import Together

        s = self.settings
        return Together(
            api_key=s["api_key"], base_url=s["base_url"], max_retries=s["max_retries"], timeout=s["timeout"]
        )

    @cached_property
    def create_client(self) -> Together:
        """Client for job creation: retries OFF, because a retried POST can start a second paid job."""
        return self.client.with_options(max_retries=0)

    async def get_async_client(self) -> AsyncTogether:
        from together import AsyncTogether

        s = await self.asettings()
        return AsyncTogether(
            api_key=s["api_key"], base_url=s["base_url"], max_retries=s["max_retries"], timeout=s["timeout"]
        )

    def test_connection(self) -> tuple[bool, str]:
        """Called by the UI's Test button: one cheap authenticated call."""
        try:
            base_url = self.settings["base_url"]
        except TogetherConfigError as exc:  # no key: say so instead of raising out of the Test button
            return False, str(exc)
        try:
            self.client.fine_tuning.list()
        except Exception as exc:
            return False, f"Together API at {base_url} refused the request: {type(exc).__name__}"
        return True, f"Connected to Together API at {base_url}"

    # -- files --------------------------------------------------------------------------------
    def upload_file(self, path: Path) -> dict[str, Any]:
        """Upload a validated shard (streamed); Together answers 409 for known bytes and we reuse them."""
        result = self.client.files.upload(file=Path(path), purpose="fine-tune", check=True)
        return job_to_dict(result)

    def get_file(self, file_id: str) -> dict[str, Any]:
        return job_to_dict(self.client.files.retrieve(file_id))

    # -- jobs ---------------------------------------------------------------------------------
    def model_limits(self, model: str) -> Any:
        return self.client.fine_tuning.model_limits(model_name=model)

    def estimate_price(self, *, training_file: str, params: dict[str, Any]) -> dict[str, Any]:
        """What Together would charge for ``create(**params)``; the cost gate reads it before any create."""
        result = self.client.fine_tuning.estimate_price(
            training_file=training_file,
            model=params["model"],
            n_epochs=params["n_epochs"],
            n_evals=0,
            training_type={
                "type": "Lora",
                "lora_r": params["lora_r"],
                "lora_alpha": params["lora_alpha"],
                "lora_dropout": params["lora_dropout"],
                "lora_trainable_modules": params["lora_trainable_modules"],
            },
            training_method={"method": "sft", "train_on_inputs": params["train_on_inputs"]},
        )
        return job_to_dict(result)

    def create_job(
        self, *, training_file: str, suffix: str, model_limits: Any, **params: Any
    ) -> dict[str, Any]:
        """One POST, never retried by the SDK: the caller reconciles by listing after any failure."""
        job = self.create_client.fine_tuning.create(
            training_file=training_file, suffix=suffix, model_limits=model_limits, **params
        )
        return job_to_dict(job)

    def list_jobs(self) -> list[dict[str, Any]]:
        return [job_to_dict(j) for j in self.client.fine_tuning.list().data]

    def find_jobs(self, tag: str) -> list[dict[str, Any]]:
        """Together's jobs whose suffix carries ``tag``, newest first (the duplicate-job guard)."""
        jobs = [j for j in self.list_jobs() if job_matches_tag(j, tag)]
        return sorted(jobs, key=lambda j: str(j.get("created_at") or ""), reverse=True)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return job_to_dict(self.client.fine_tuning.retrieve(job_id))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return job_to_dict(self.client.fine_tuning.cancel(job_id))

    def list_events(self, job_id: str) -> list[dict[str, Any]]:
        return [job_to_dict(e) for e in self.client.fine_tuning.list_events(job_id).data]

    def list_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Loss per step (events carry no loss) as ``[{"step", "loss"}]``, for the summary and the plot.

        Together answers ``{"metrics": [{"train/global_step", "train/loss", ...}]}`` (the keys the
        SDK's own CLI plots); plain ``step``/``loss`` keys are accepted too.
        """
        raw = job_to_dict(self.client.fine_tuning.list_metrics(job_id))
        rows = raw.get("metrics") or raw.get("data") or []
        steps = []
        for i, row in enumerate(rows):
            loss = row.get("train/loss", row.get("loss"))
            step = row.get("train/global_step", row.get("step", i + 1))
            if loss is not None:
                steps.append({"step": int(step), "loss": float(loss)})
        return steps

    def download_adapter(self, job_id: str, dest: Path) -> tuple[int, int | None]:
        """Stream the adapter archive to ``dest``; returns (bytes written, Content-Length).

        Never buffered whole in memory; the caller checks the length and verifies the archive.
        """
        fine_tuning = self.client.fine_tuning.with_streaming_response
        with fine_tuning.content(ft_id=job_id, checkpoint="adapter") as response:
            length = response.headers.get("content-length")
            response.stream_to_file(dest)
        return Path(dest).stat().st_size, int(length) if length else None

    # -- async twins (the triggerer) ----------------------------------------------------------
    async def aget_job(self, client: AsyncTogether, job_id: str) -> dict[str, Any]:
        return job_to_dict(await client.fine_tuning.retrieve(job_id))

    async def alist_events(self, client: AsyncTogether, job_id: str) -> list[dict[str, Any]]:
        return [job_to_dict(e) for e in (await client.fine_tuning.list_events(job_id)).data]

    async def acancel_job(self, client: AsyncTogether, job_id: str) -> dict[str, Any]:
        return job_to_dict(await client.fine_tuning.cancel(job_id))


def with_backoff(
    call: Callable[[], T],
    *,
    attempts: int,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Run ``call`` until it succeeds, sleeping Retry-After or jittered backoff between tries."""
    for attempt in range(attempts):
        try:
            return call()
        except retry_on as exc:
            if attempt + 1 >= attempts:
                raise
            delay = backoff_delay(attempt, exc)
            if on_retry:
                on_retry(attempt + 1, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def env_fallback_connection() -> dict[str, str] | None:
    """For the CLI outside Airflow: TOGETHER_API_KEY / TOGETHER_BASE_URL as a connection URI's parts."""
    key = os.environ.get("TOGETHER_API_KEY")
    if not key:
        return None
    return {"conn_type": "together", "password": key, "host": os.environ.get("TOGETHER_BASE_URL", "")}


def first_error_message(events: Iterable[dict[str, Any]]) -> str | None:
    """Together's own words for a failed job: the last error (or stop) event's message.

    The job objects have no error field; the events are the only place Together says why.
    """
    message = None
    for event in events:
        if event.get("level") in ("error", "legacy_ierror") or event.get("type") in (
            "job_error",
            "job_failed",
            "job_stopped",  # cancelled: Together says why in a stop event (level warning, not error)
        ):
            message = event.get("message") or message
    return message
