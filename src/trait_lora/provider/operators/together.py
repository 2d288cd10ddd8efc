"""Per-trait Together operators: upload -> launch -> wait (deferrable) -> download.

Each takes the previous step's result dict (which always carries its own ``trait``), does one step,
and returns a small JSON dict for the next. Remote effects are checked for before they are caused:
the upload looks for the same bytes first, the launch looks for a job with the same key first.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from trait_lora.core import runs
from trait_lora.core.ledger import Ledger
from trait_lora.provider.hooks.together import (
    ACTIVE_STATUSES,
    FAILED_STATUSES,
    NANODOLLARS,
    TERMINAL_STATUSES,
    TogetherHook,
    backoff_delay,
    first_error_message,
    is_permanent,
    output_name,
)
from trait_lora.provider.links import JOB_URL_XCOM_KEY, TogetherJobLink, dashboard_url

if TYPE_CHECKING:
    from trait_lora.core.config import TrainingConfig

# The core's validation, adapter and budget modules are imported where they are used: DAG files import
# this module, and a DAG file's parse time is paid by the DAG processor on every parse.

STATE_JOB_ID = "together_job_id"
LAUNCH_RESULT_XCOM_KEY = "launch_result"
METRICS_DIR = "metrics"


class TogetherJobFailed(AirflowFailException):
    """Together ended the job in error / user_error / cancelled: retrying the task cannot fix it."""


def label(context: Any, trait: str) -> None:
    """What ``map_index_template`` renders: the trait, so the UI shows names instead of indexes."""
    context["trait_label"] = trait


def guarded(context: Any, output_dir: str, trait: str, step: str, body: Any) -> Any:
    """Run one step; on failure record why (a failed task has no XCom for the fan-in) and re-raise."""
    try:
        return body()
    except AirflowSkipException:
        raise
    except Exception as exc:
        runs.record_failure(output_dir, context["run_id"], trait, step, f"{step}: {exc}")
        if is_permanent(exc):
            raise AirflowFailException(f"{trait}: Together refused the request: {exc}") from exc
        raise


MAP_INDEX_TEMPLATE = "{{ trait_label | default('') }}"


class _TogetherStep(BaseOperator):
    """Shared plumbing: the incoming dict, the hook, the ledger, the config, failure records.

    ``output_dir`` and ``config`` default to the values the ``discover`` task put in every trait's
    dict, so the mapped group needs no extra wiring; pass them to override.
    """

    ui_color = "#e8f0ff"
    input_field = ""

    def __init__(
        self,
        *,
        output_dir: str | None = None,
        config: dict[str, Any] | None = None,
        together_conn_id: str = TogetherHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        super().__init__(**kwargs)
        self.output_dir = output_dir
        self.config = config
        self.together_conn_id = together_conn_id

    @property
    def incoming(self) -> dict[str, Any]:
        return dict(getattr(self, self.input_field))

    @property
    def out_dir(self) -> str:
        return str(self.output_dir or self.incoming["output_dir"])

    @cached_property
    def hook(self) -> TogetherHook:
        return TogetherHook(together_conn_id=self.together_conn_id)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.out_dir)

    @property
    def training_config(self) -> TrainingConfig:
        from trait_lora.core.config import from_mapping

        values = self.config or self.incoming.get("config") or {}
        return from_mapping({**values, "backend": "together"}, source="DAG params")

    def execute(self, context: Any) -> Any:
        data = self.incoming
        label(context, data["trait"])
        return guarded(
            context, self.out_dir, data["trait"], self.task_id, lambda: self.run_step(context, data)
        )

    def run_step(self, context: Any, data: dict[str, Any]) -> Any:
        raise NotImplementedError


class TogetherUploadOperator(_TogetherStep):
    """Validate the shard, then upload it unless Together already holds the same bytes."""

    template_fields: Sequence[str] = ("trait_plan", "output_dir", "config")
    input_field = "trait_plan"

    def __init__(self, *, trait_plan: dict[str, Any] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trait_plan = trait_plan

    def run_step(self, context: Any, plan: dict[str, Any]) -> dict[str, Any]:
        from trait_lora.core.errors import ShardError
        from trait_lora.core.validation import require_valid

        trait = plan["trait"]
        if plan["action"] == "skip":
            raise AirflowSkipException(f"{trait}: {plan['reason']}; no remote call")
        if plan["action"] == "invalid":
            raise AirflowFailException(
                f"{trait}: shard is invalid, nothing sent to Together:\n" + "\n".join(plan["problems"])
            )
        try:
            report = require_valid(plan["shard_path"])
        except ShardError as exc:
            raise AirflowFailException(f"{exc}\n" + "\n".join(exc.problems)) from None
        if report.sha256 != plan["shard_sha256"]:
            raise AirflowFailException(
                f"{trait}: {plan['shard_path']} changed since this run planned it "
                f"(sha256 {plan['shard_sha256'][:12]} -> {report.sha256[:12]}); trigger a new run"
            )
        file_id = self._reusable_file(plan)
        if file_id:
            self.log.info("%s: reusing uploaded file %s (same sha256)", trait, file_id)
        else:
            self.log.info("%s: uploading %s (%d bytes)", trait, plan["shard_path"], report.size)
            uploaded = self.hook.upload_file(Path(plan["shard_path"]))
            file_id = uploaded["id"]
            self.log.info("%s: uploaded as %s", trait, file_id)
        self.ledger.update_job(
            trait, job_key=plan["job_key"], file_id=file_id, shard_sha256=report.sha256, suffix=plan["suffix"]
        )
        return {**plan, "file_id": file_id}

    def _reusable_file(self, plan: dict[str, Any]) -> str | None:
        from together import NotFoundError

        file_id = self.ledger.find_uploaded_file(plan["shard_sha256"])
        if not file_id:
            return None
        try:
            self.hook.get_file(file_id)
        except NotFoundError:
            self.log.info("%s: file %s recorded in the ledger is gone from Together", plan["trait"], file_id)
            return None
        return file_id


class TogetherLaunchOperator(_TogetherStep):
    """Start the training job exactly once per job key, or adopt the one that already exists.

    Order of lookups before any create: our ledger, Airflow's ``task_state_store`` (survives retries,
    unlike XCom), then Together's own job list by the key's tag. The create itself is sent with SDK
    retries off; after any failure the list is read again before another create is ever sent.

    ``wait_for_completion=True``: after the create (or adoption) the task defers on the job until it
    ends, so a pool slot taken by this task spans the whole job. That is what makes a pool bound the
    jobs in flight: a slot shared by a separate launch and wait task is free between the two, and the
    scheduler can hand it to the next launch (seen on a live deployment: 8 jobs in flight on a 6-slot
    pool). The result then carries the job's final status; failed jobs are reported by the wait task.
    """

    operator_extra_links = (TogetherJobLink(),)
    template_fields: Sequence[str] = (
        "upload_result",
        "output_dir",
        "config",
        "max_job_price_usd",
        "max_run_price_usd",
    )
    input_field = "upload_result"

    def __init__(
        self,
        *,
        upload_result: dict[str, Any] | Any,
        max_job_price_usd: float | None = None,
        max_run_price_usd: float | None = None,
        stagger_seconds: float = 0.0,
        create_attempts: int = 6,
        wait_for_completion: bool = False,
        poll_interval: float = 30.0,
        wait_timeout: float = 24 * 3600.0,
        max_transient_errors: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.upload_result = upload_result
        self.max_job_price_usd = max_job_price_usd
        self.max_run_price_usd = max_run_price_usd
        self.stagger_seconds = stagger_seconds
        self.create_attempts = create_attempts
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.max_transient_errors = max_transient_errors

    def execute(self, context: Any) -> Any:
        result = super().execute(context)
        if not self.wait_for_completion or result.get("status") in TERMINAL_STATUSES:
            return result
        # For execute_complete: an XCom pushed before defer() survives the deferral (defer kwargs would
        # too, but dag.test() replaces them with the event alone).
        context["ti"].xcom_push(key=LAUNCH_RESULT_XCOM_KEY, value=result)
        defer_on_job(self, result, result.get("status"))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """The job ended (any terminal status: the wait task reports failures) or the wait gave up."""
        ti = context["ti"]
        pushed = ti.xcom_pull(task_ids=ti.task_id, key=LAUNCH_RESULT_XCOM_KEY, map_indexes=ti.map_index)
        if isinstance(pushed, list):  # some pull paths wrap a single mapped value in a list
            pushed = pushed[0] if pushed else None
        result = {**self.incoming, "job_id": event["job_id"], **(pushed or {})}
        trait = result["trait"]
        label(context, trait)
        if event.get("status") in ("timeout", "poll_error"):

            def give_up() -> None:  # retried: the retry adopts the same job and waits again
                raise AirflowException(f"{trait}: {event.get('message')}")

            return guarded(context, self.out_dir, trait, self.task_id, give_up)
        self.log.info("%s: %s", trait, event.get("message"))
        # Re-read: the result carries the job as Together has it now, not the event's snapshot.
        job = guarded(context, self.out_dir, trait, self.task_id, lambda: self.hook.get_job(result["job_id"]))
        return {**result, "status": str(job.get("status") or event.get("status"))}

    def run_step(self, context: Any, request: dict[str, Any]) -> dict[str, Any]:
        trait, key = request["trait"], request["job_key"]
        store = context.get("task_state_store")
        job = self._existing_job(trait, key, store)
        adopted = job is not None
        estimate = None
        if job is None:
            estimate = self._cost_gate(context, request)
            job = self._create(request, store)
        job_id = job["id"]
        if store is not None:
            store.set(STATE_JOB_ID, job_id)
        status = str(job.get("status") or "pending")
        self.ledger.update_job(
            trait,
            job_key=key,
            job_id=job_id,
            status=status,
            estimated_price=estimate,
            output_name=output_name(job),
        )
        context["ti"].xcom_push(key=JOB_URL_XCOM_KEY, value=dashboard_url(job_id))
        self.log.info("%s: %s job %s (%s)", trait, "adopted" if adopted else "created", job_id, status)
        return {
            **request,
            "job_id": job_id,
            "status": status,
            "adopted": adopted,
            "estimated_price": estimate,
        }

    def _existing_job(self, trait: str, key: str, store: Any) -> dict[str, Any] | None:
        from together import NotFoundError

        record = self.ledger.job(trait) or {}
        candidates: list[str] = []
        if record.get("job_key") == key and record.get("job_id"):
            candidates.append(record["job_id"])
        if store is not None and (stored := store.get(STATE_JOB_ID)):
            candidates.append(str(stored))
        for job_id in dict.fromkeys(candidates):
            try:
                job = self.hook.get_job(job_id)
            except NotFoundError:  # deleted on Together: a 404 here must not fail every later run
                self.log.info("%s: earlier job %s is gone from Together; not adopting it", trait, job_id)
                continue
            if job.get("status") not in FAILED_STATUSES:
                return job
            self.log.info("%s: earlier job %s ended %s; not adopting it", trait, job_id, job.get("status"))
        return self._listed_job(key)

    def _listed_job(self, key: str) -> dict[str, Any] | None:
        from trait_lora.core.keys import job_tag

        for job in self.hook.find_jobs(job_tag(key)):
            if job.get("status") in ACTIVE_STATUSES or job.get("status") == "completed":
                return job
        return None

    def _cost_gate(self, context: Any, request: dict[str, Any]) -> float | None:
        from trait_lora.core import budget

        cfg = self.training_config
        trait = request["trait"]
        estimate = self.hook.estimate_price(
            training_file=request["file_id"], params=cfg.together_create_kwargs()
        )
        price = estimate.get("estimated_total_price") if estimate.get("estimation_available") else None
        self.log.info(
            "%s: Together estimates %s (allowed_to_proceed=%s)",
            trait,
            budget.usd(price) if price is not None else f"no price ({estimate.get('unavailable_reason')})",
            estimate.get("allowed_to_proceed"),
        )
        if estimate.get("allowed_to_proceed") is False:
            raise AirflowFailException(
                f"{trait}: Together says this account may not proceed (estimated ${price}, limit "
                f"${estimate.get('user_limit')}); add credit, nothing was created"
            )
        job_budget = _as_float(self.max_job_price_usd, request.get("max_job_price_usd"))
        run_budget = _as_float(self.max_run_price_usd, request.get("max_run_price_usd"))
        if price is None and (job_budget is not None or run_budget is not None):
            # A budget that an unknown price could pass is no budget: refuse, and let a retry ask again
            # (an estimate is often unavailable only until Together has validated the file).
            why = estimate.get("unavailable_reason", "none given")
            raise AirflowException(
                f"{trait}: Together gave no price estimate ({why}) and a budget is set, so no job was "
                "created; the task retries, or clear the budget"
            )
        if price is not None and (job_budget is not None or run_budget is not None):
            try:
                budget.reserve(
                    self.out_dir,
                    context["run_id"],
                    trait,
                    float(price),
                    job_budget=job_budget,
                    run_budget=run_budget,
                )
            except budget.BudgetError as exc:
                raise AirflowFailException(str(exc)) from None
        return price

    def _create(self, request: dict[str, Any], store: Any) -> dict[str, Any]:
        from together import APIConnectionError, APIStatusError

        cfg = self.training_config
        trait, key = request["trait"], request["job_key"]
        if self.stagger_seconds:
            time.sleep(random.uniform(0, self.stagger_seconds))
        limits = self.hook.model_limits(cfg.together_model)
        self.ledger.update_job(trait, job_key=key, status="creating")
        for attempt in range(self.create_attempts):
            try:
                job = self.hook.create_job(
                    training_file=request["file_id"],
                    suffix=request["suffix"],
                    model_limits=limits,
                    **{k: v for k, v in cfg.together_create_kwargs().items()},
                )
            except (APIConnectionError, APIStatusError) as exc:
                status_code = getattr(exc, "status_code", None)
                if status_code is not None and status_code < 500 and status_code not in (408, 409, 429):
                    raise AirflowFailException(
                        f"{trait}: Together refused the job ({status_code}): {exc}"
                    ) from None
                self.log.warning(
                    "%s: create attempt %d failed (%s); reconciling before any new create",
                    trait,
                    attempt + 1,
                    type(exc).__name__,
                )
                found = self._reconcile(key)
                if found is not None:
                    self.log.info("%s: the job exists after all: %s", trait, found["id"])
                    return found
                if attempt + 1 >= self.create_attempts:
                    raise
                time.sleep(backoff_delay(attempt, exc, base=0.5))
                continue
            if store is not None:
                store.set(STATE_JOB_ID, job["id"])
            return job
        raise AssertionError("unreachable")

    def _reconcile(self, key: str) -> dict[str, Any] | None:
        """List with the retrying client; an unreachable API here must fail the try, not re-post."""
        return self._listed_job(key)


def _as_float(*values: Any) -> float | None:
    """The first value that is set (operator argument, then the run's params)."""
    for value in values:
        if value not in (None, "", "None"):
            return float(value)
    return None


def defer_on_job(op: Any, result: dict[str, Any], status: str | None) -> None:
    """Hand the wait for ``result``'s job to the triggerer: no worker slot, an absolute deadline."""
    from trait_lora.provider.triggers.together import TogetherFineTuneTrigger

    op.defer(
        trigger=TogetherFineTuneTrigger(
            job_id=result["job_id"],
            trait=result["trait"],
            together_conn_id=op.together_conn_id,
            poll_interval=op.poll_interval,
            deadline=time.time() + op.wait_timeout,
            max_transient_errors=op.max_transient_errors,
            last_status=status,
        ),
        method_name="execute_complete",
        timeout=timedelta(seconds=op.wait_timeout + 3600),
    )


def _seconds_since(stamp: str | None) -> float | None:
    """Wall time from the run's plan to the installed adapter (what a user waited for)."""
    if not stamp:
        return None
    from datetime import UTC, datetime

    started = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return round((datetime.now(UTC) - started).total_seconds(), 1)


class TogetherFineTuneSensor(BaseSensorOperator):
    """Wait for a Together job without holding a worker slot.

    ``deferrable=True`` (default) hands the wait to ``TogetherFineTuneTrigger``; ``deferrable=False``
    pokes in reschedule mode, for deployments without a triggerer.
    """

    template_fields: Sequence[str] = ("launch_result", "output_dir")
    operator_extra_links = (TogetherJobLink(),)
    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        launch_result: dict[str, Any] | Any,
        output_dir: str | None = None,
        together_conn_id: str = TogetherHook.default_conn_name,
        poll_interval: float = 30.0,
        wait_timeout: float = 24 * 3600.0,
        max_transient_errors: int = 10,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        if not deferrable:
            kwargs.setdefault("mode", "reschedule")
            kwargs.setdefault("poke_interval", poll_interval)
            kwargs.setdefault("timeout", wait_timeout)
        super().__init__(**kwargs)
        self.launch_result = launch_result
        self.output_dir = output_dir
        self.together_conn_id = together_conn_id
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.max_transient_errors = max_transient_errors
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> TogetherHook:
        return TogetherHook(together_conn_id=self.together_conn_id)

    @property
    def out_dir(self) -> str:
        return str(self.output_dir or dict(self.launch_result)["output_dir"])

    def execute(self, context: Any) -> Any:
        result = dict(self.launch_result)
        label(context, result["trait"])
        context["ti"].xcom_push(key=JOB_URL_XCOM_KEY, value=dashboard_url(result["job_id"]))
        if not self.deferrable:
            return guarded(
                context,
                self.out_dir,
                result["trait"],
                self.task_id,
                lambda: super(TogetherFineTuneSensor, self).execute(context),
            )
        job = guarded(
            context, self.out_dir, result["trait"], self.task_id, lambda: self.hook.get_job(result["job_id"])
        )
        if job.get("status") in TERMINAL_STATUSES:
            return guarded(
                context, self.out_dir, result["trait"], self.task_id, lambda: self._finish(context, job)
            )
        defer_on_job(self, result, job.get("status"))

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        result = dict(self.launch_result)
        job = self.hook.get_job(result["job_id"])
        self.log.info("%s: job %s is %s", result["trait"], result["job_id"], job.get("status"))
        if job.get("status") not in TERMINAL_STATUSES:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(context, job))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        result = dict(self.launch_result)
        label(context, result["trait"])

        def complete() -> dict[str, Any]:
            if event.get("status") in ("timeout", "poll_error"):
                raise AirflowException(f"{result['trait']}: {event.get('message')}")
            # Re-read: the return value is the job as Together has it now, not the event's snapshot.
            return self._finish(context, self.hook.get_job(result["job_id"]), event.get("reason"))

        return guarded(context, self.out_dir, result["trait"], self.task_id, complete)

    def _finish(self, context: Any, job: dict[str, Any], message: str | None = None) -> dict[str, Any]:
        result = dict(self.launch_result)
        trait, status = result["trait"], str(job.get("status"))
        raw_price = job.get("total_price")
        price = round(raw_price / NANODOLLARS, 6) if isinstance(raw_price, int | float) else None
        Ledger(self.out_dir).update_job(
            trait, job_key=result["job_key"], job_id=job["id"], status=status, total_price_usd=price
        )
        if status in FAILED_STATUSES:
            if not message:
                message = first_error_message(self.hook.list_events(job["id"]))
            raise TogetherJobFailed(
                f"{trait}: Together job {job['id']} ended {status}: {message or 'no message from Together'}"
            )
        return {
            **result,
            "status": status,
            "total_price": price,
            "output_name": output_name(job),
        }


class TogetherDownloadOperator(_TogetherStep):
    """Stream the adapter to a temp file, check its length, verify it, install it, then record it."""

    template_fields: Sequence[str] = ("wait_result", "output_dir", "config")
    input_field = "wait_result"

    def __init__(self, *, wait_result: dict[str, Any] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_result = wait_result

    def run_step(self, context: Any, result: dict[str, Any]) -> dict[str, Any]:
        from trait_lora.core.adapter import AdapterSpec, install_adapter
        from trait_lora.core.errors import AdapterError

        trait, job_id = result["trait"], result["job_id"]
        cfg = self.training_config
        downloads = Path(self.out_dir) / ".downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        part = downloads / f"{trait}-{job_id}.part"
        try:
            try:
                written, expected = self.hook.download_adapter(job_id, part)
            except httpx.HTTPError as exc:  # a body cut short surfaces as a raw httpx error when streamed
                raise AirflowException(
                    f"{trait}: adapter download of {job_id} broke off ({exc}); retrying"
                ) from None
            if expected is not None and written != expected:
                raise AirflowException(
                    f"{trait}: adapter download of {job_id} is truncated ({written} of {expected} bytes); "
                    "retrying the download"
                )
            try:
                path, info = install_adapter(part, Path(self.out_dir), trait, AdapterSpec.from_config(cfg))
            except AdapterError as exc:
                raise AirflowFailException(f"{trait}: adapter of job {job_id} rejected: {exc}") from None
        finally:
            part.unlink(missing_ok=True)
        metrics = self._metrics(trait, job_id)
        record = self.ledger.record_planned_adapter(
            result,
            adapter_sha256=info.sha256,
            job_id=job_id,
            backend="together",
            base_model=cfg.together_model,
        )
        self.ledger.update_job(trait, job_key=result["job_key"], status="completed", downloaded=True)
        runs.clear_failure(self.out_dir, context["run_id"], trait)
        losses = [m.get("loss") for m in metrics if m.get("loss") is not None]
        self.log.info("%s: installed adapter %s (sha256 %s)", trait, path, info.sha256[:12])
        return {
            "trait": trait,
            "action": "resumed" if result.get("adopted") else "trained",
            "job_id": job_id,
            "adapter_path": str(path),
            "adapter_sha256": info.sha256,
            "estimated_price": result.get("estimated_price"),
            "total_price": result.get("total_price"),
            "final_loss": losses[-1] if losses else None,
            "trained_at": record["trained_at"],
            "duration_s": _seconds_since(result.get("planned_at")),
        }

    def _metrics(self, trait: str, job_id: str) -> list[dict[str, Any]]:
        from trait_lora.core.atomic import atomic_write_json

        try:
            steps = self.hook.list_metrics(job_id)
        except Exception as exc:  # metrics are for the summary; never fail an installed adapter on them
            self.log.warning("%s: could not fetch metrics of %s: %s", trait, job_id, type(exc).__name__)
            return []
        atomic_write_json(
            Path(self.out_dir) / METRICS_DIR / f"{trait}.json", {"job_id": job_id, "steps": steps}
        )
        return steps
