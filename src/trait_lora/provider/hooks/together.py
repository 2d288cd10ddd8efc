"""``TogetherHook``: the only code that talks to Together AI.

Connection ``together`` (default id ``together_default``): password = API key, host = API base URL
(default ``https://api.together.ai``; a trailing ``/v1`` is stripped because every SDK path already
starts with ``/v1/``). Every method is one API call (or one streamed download) with a docstring that
says what it is for; sync and async twins where the triggerer needs them.

The SDK is imported lazily so that importing this module (e.g. from a DAG file) stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from trait_lora.provider.connection import (
    CONN_TYPE,
    DEFAULT_BASE_URL,
    DEFAULT_CONN_ID,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    HOOK_NAME,
    hook_field_behaviour,
)

# Reading Together's answers lives in ``answers``; re-exported here, where callers always found them.
from trait_lora.provider.hooks.answers import backoff_delay as backoff_delay
from trait_lora.provider.hooks.answers import conflict_is_final
from trait_lora.provider.hooks.answers import first_error_message as first_error_message
from trait_lora.provider.hooks.answers import is_permanent as is_permanent
from trait_lora.provider.hooks.answers import job_matches_tag as job_matches_tag
from trait_lora.provider.hooks.answers import job_to_dict as job_to_dict
from trait_lora.provider.hooks.answers import output_name as output_name
from trait_lora.provider.hooks.answers import retry_after_seconds as retry_after_seconds
from trait_lora.provider.hooks.tls import shared_tls_context

if TYPE_CHECKING:
    from together import AsyncTogether, Together

    from trait_lora.core.jobs.known_jobs import KnownJobs


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


def _client_options(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in ("api_key", "base_url", "max_retries", "timeout")}


class TogetherHook(BaseHook):
    """Sync and async Together clients built from an Airflow connection."""

    conn_name_attr = "together_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(self, together_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.together_conn_id = together_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return hook_field_behaviour()

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
        from together import DefaultHttpxClient, Together

        return Together(
            **_client_options(self.settings), http_client=DefaultHttpxClient(verify=shared_tls_context())
        )

    @cached_property
    def upload_client(self) -> Together:
        """The retrying client, except that a 409 (a duplicate upload) is never retried."""
        from together import DefaultHttpxClient, Together

        return Together(
            **_client_options(self.settings),
            http_client=DefaultHttpxClient(
                verify=shared_tls_context(), event_hooks={"response": [conflict_is_final]}
            ),
        )

    @cached_property
    def no_retry_client(self) -> Together:
        """Client for job creation: SDK retries OFF, a retried POST can start a second paid job."""
        return self.client.with_options(max_retries=0)

    async def get_async_client(self) -> AsyncTogether:
        from together import AsyncTogether, DefaultAsyncHttpxClient

        return AsyncTogether(
            **_client_options(await self.asettings()),
            http_client=DefaultAsyncHttpxClient(verify=shared_tls_context()),
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
        """Upload a validated shard (streamed); bytes Together already holds resolve to that file at once.

        Together answers a known checksum with 409 and no retry hint, which the SDK retries like a 429
        (eight backoffs, ~50 s, for an answer that cannot change). The upload client marks a 409 as
        not-to-retry (``x-should-retry: false``, which the SDK obeys) and keeps the SDK's retries for
        everything else (429, 5xx, resets), so the 409 becomes the existing file id at once. A file
        found that way that is still PENDING may never have been preprocessed (a worker died between
        the PUT and the preprocess call): preprocessing is asked for again, which is harmless.
        """
        from together.lib.resources.files import FileAlreadyExistsError

        try:
            uploaded = self.upload_client.files.upload(
                file=Path(path), purpose="fine-tune", check=True, raise_if_already_exists=True
            )
            return job_to_dict(uploaded)
        except FileAlreadyExistsError as exc:
            file_id = exc.file_id
            self.log.info("Together already holds these bytes as %s; reusing it", file_id)
        found = self.get_file(file_id)
        # PENDING, or the spec's shape not yet processed: preprocessing again is harmless
        if str(found.get("processing_status") or "").upper() == "PENDING" or (
            "processing_status" not in found and found.get("Processed") is False
        ):
            from together.types import FileResponse

            found = job_to_dict(self.client.post(f"/v1/files/{file_id}/preprocess", cast_to=FileResponse))
        return found

    def get_file(self, file_id: str) -> dict[str, Any]:
        """The file object; its ``processing_status`` (where sent) says whether Together validated it."""
        return job_to_dict(self.client.files.retrieve(file_id))

    def file_verdict(self, file_id: str, model: str) -> str:
        """COMPLETED / INVALID_FORMAT / "" (not validated yet) from a price estimate for the file alone:
        the one answer that says so when the file object has only the spec's ``Processed`` flag."""
        from trait_lora.provider.hooks.answers import estimate_verdict

        estimate = self.client.fine_tuning.estimate_price(training_file=file_id, model=model)
        return estimate_verdict(job_to_dict(estimate))

    # -- jobs ---------------------------------------------------------------------------------
    def model_limits(self, model: str) -> dict[str, Any]:
        """Together's per-model limits exactly as sent (batch sizes, max rank, epochs, learning rate).

        The raw JSON, not the SDK's model: the spec promises fewer fields than SDK 3.1.1 declares, and
        ``core.limits`` checks only the ones present (``answers`` has why).
        """
        from trait_lora.provider.hooks.answers import LIMITS_ENDPOINT, UnreadableAnswer

        raw = self.client.fine_tuning.with_raw_response.model_limits(model_name=model)
        try:
            body = raw.http_response.json()
        except ValueError:
            raise UnreadableAnswer(LIMITS_ENDPOINT, "body", "not JSON") from None
        if not isinstance(body, dict):
            raise UnreadableAnswer(LIMITS_ENDPOINT, "body", f"a JSON {type(body).__name__}, not an object")
        return body

    def estimate_price(self, *, training_file: str, params: dict[str, Any]) -> dict[str, Any]:
        """What Together would charge for ``create(**params)``; the cost gate reads it before any create."""
        result = self.client.fine_tuning.estimate_price(
            training_file=training_file,
            model=params["model"],
            n_epochs=params["n_epochs"],
            n_evals=params.get("n_evals") or 0,
            **({"validation_file": params["validation_file"]} if params.get("validation_file") else {}),
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
        self, *, training_file: str, suffix: str, model_limits: dict[str, Any], **params: Any
    ) -> dict[str, Any]:
        """One POST, never retried by the SDK: the caller reconciles by listing after any failure.

        ``model_limits`` is the raw answer of ``model_limits()``, handed to the SDK as it is (never
        re-validated: see ``answers.sdk_model_limits``), which also saves the SDK a second request.
        """
        from trait_lora.provider.hooks.answers import sdk_model_limits
        from trait_lora.provider.hooks.redact import redacted

        with redacted("together", params.get("wandb_api_key")):
            job = self.no_retry_client.fine_tuning.create(
                training_file=training_file,
                suffix=suffix,
                model_limits=sdk_model_limits(model_limits, lora_r=int(params.get("lora_r") or 0)),
                **params,
            )
        return job_to_dict(job)

    def list_jobs(self) -> list[dict[str, Any]]:
        return [job_to_dict(j) for j in self.client.fine_tuning.list().data]

    def find_jobs_by_tags(
        self, tags: Sequence[str], known: KnownJobs | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """tag -> Together's jobs carrying it, newest first, from one list of the account's jobs.

        The spec's list entries promise only id, status and timestamps: an entry that shows neither a
        suffix nor an output name is matched by the names ``known`` remembers for it, else read whole
        once and remembered (``job_search``), never assumed to be someone else's job.
        """
        from trait_lora.provider.hooks.job_search import jobs_by_tag

        return jobs_by_tag(self.list_jobs(), tags, read=self._job_if_any, known=known, log=self.log)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return job_to_dict(self.client.fine_tuning.retrieve(job_id))

    def _job_if_any(self, job_id: str) -> dict[str, Any] | None:
        from together import NotFoundError

        try:
            return self.get_job(job_id)
        except NotFoundError:  # deleted since it was listed: nothing to adopt
            return None

    def find_existing_job(
        self, key_tag: str, known_ids: Sequence[str] = (), known: KnownJobs | None = None
    ) -> dict[str, Any] | None:
        """The job already paid for under this key, if any: the duplicate-job guard before every create.

        ``known_ids`` (our ledger, Airflow's task state store) are read first, then Together's own list
        by the key's tag in ``suffix`` (``known``: the names of jobs read whole before). A job is
        adopted unless it failed or is being cancelled; a status nobody documented is adopted too (and
        said loudly): duplicating a job whose status we cannot read would pay twice. A known id
        Together no longer has (404) is passed over.
        """
        from together import NotFoundError

        for job_id in dict.fromkeys(i for i in known_ids if i):
            try:
                job = self.get_job(job_id)
            except NotFoundError:
                self.log.info("earlier job %s is gone from Together; not adopting it", job_id)
                continue
            if self._adoptable(job):
                return job
        return self.find_existing_jobs([key_tag], known)[key_tag]

    def _adoptable(self, job: dict[str, Any]) -> bool:
        from trait_lora.provider.hooks.job_search import adoptable

        return adoptable(job, self.log)

    def find_existing_jobs(
        self, key_tags: Sequence[str], known: KnownJobs | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """``find_existing_job`` by tags alone for several keys at once, from one list."""
        found = self.find_jobs_by_tags(key_tags, known)
        return {tag: next((job for job in found[tag] if self._adoptable(job)), None) for tag in found}

    def list_events(self, job_id: str) -> list[dict[str, Any]]:
        return [job_to_dict(e) for e in self.client.fine_tuning.list_events(job_id).data]

    def training_figures(self, job_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """Loss per step ``[{"step", "loss"}]``, held-out loss per evaluation ``[{"step",
        "eval_loss"}]`` and every metric key seen, from one ``GET /fine-tunes/{id}/metrics``.

        The spec documents only ``train/*`` keys (``train/loss``, ``train/global_step``); the held-out
        key is not documented, so the names Together's W&B-style logging and the SDK's early-stopping
        help use are all read (``answers.HELD_OUT_KEYS``). The keys seen let the caller say so when
        rows came back but none held a held-out loss we know, instead of a silent null.
        """
        from trait_lora.provider.hooks.answers import held_out_loss

        raw = job_to_dict(self.client.fine_tuning.list_metrics(job_id))
        rows = raw.get("metrics") or raw.get("data") or []
        steps: list[dict[str, Any]] = []
        evals: list[dict[str, Any]] = []
        keys: set[str] = set()
        for i, row in enumerate(r for r in rows if isinstance(r, dict)):
            keys.update(map(str, row))
            loss = row.get("train/loss", row.get("loss"))
            step = row.get("train/global_step", row.get("step", i + 1))
            if isinstance(loss, int | float) and not isinstance(loss, bool):
                steps.append({"step": int(step), "loss": float(loss)})
            held_out = held_out_loss(row)
            if held_out is not None:
                at = row.get("train/global_step", row.get("eval/global_step", row.get("step")))
                evals.append({"step": int(at) if at is not None else len(evals) + 1, "eval_loss": held_out})
        return steps, evals, sorted(keys)

    def download_adapter(self, job_id: str, dest: Path) -> tuple[int, int | None]:
        """Stream the adapter archive to ``dest``; returns (bytes received on the wire, Content-Length).

        The SDK advertises gzip/zstd and httpx decodes transparently, so a compressed reply's
        Content-Length counts encoded bytes, not what lands in ``dest``. We ask for identity and compare
        the length with the bytes actually received (``num_bytes_downloaded``), which holds either way.
        Never buffered whole in memory; the caller checks the lengths and verifies the archive.
        """
        fine_tuning = self.client.fine_tuning.with_streaming_response
        with fine_tuning.content(
            ft_id=job_id, checkpoint="adapter", extra_headers={"Accept-Encoding": "identity"}
        ) as response:
            length = response.headers.get("content-length")
            with open(dest, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
            received = response.http_response.num_bytes_downloaded
        return received, int(length) if length else None

    # -- async twins (the triggerer) ----------------------------------------------------------
    async def aget_job(self, client: AsyncTogether, job_id: str) -> dict[str, Any]:
        return job_to_dict(await client.fine_tuning.retrieve(job_id))

    async def alist_events(self, client: AsyncTogether, job_id: str) -> list[dict[str, Any]]:
        return [job_to_dict(e) for e in (await client.fine_tuning.list_events(job_id)).data]

    async def acancel_job(self, client: AsyncTogether, job_id: str) -> dict[str, Any]:
        return job_to_dict(await client.fine_tuning.cancel(job_id))

    async def aget_file(self, client: AsyncTogether, file_id: str) -> dict[str, Any]:
        return job_to_dict(await client.files.retrieve(file_id))

    async def afile_verdict(self, client: AsyncTogether, file_id: str, model: str) -> str:
        from trait_lora.provider.hooks.answers import estimate_verdict

        estimate = await client.fine_tuning.estimate_price(training_file=file_id, model=model)
        return estimate_verdict(job_to_dict(estimate))
