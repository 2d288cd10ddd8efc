"""Wait step: the sensor that polls the job. It is the task a user sees deferred while Together trains,
with Together's events in its log and the job link on it; it ends with one outcome line."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException

from trait_lora.provider.hooks.together import TogetherHook, first_error_message, output_name
from trait_lora.provider.links import JOB_URL_XCOM_KEY, TogetherJobLink, dashboard_url
from trait_lora.provider.operators.base import (
    TogetherJobFailed,
    TogetherLineage,
    guarded,
    map_index_template,
    setting_or,
)
from trait_lora.provider.retry import TogetherRetryPolicy

if TYPE_CHECKING:
    from trait_lora.provider.records import TraitJob

# Job statuses, records and the ledger are imported where a task uses them (parse time stays cheap).


class TogetherFineTuneSensor(TogetherLineage, BaseSensorOperator):
    """Wait for a Together job without holding a worker slot.

    ``deferrable=True`` (default) hands the wait to ``TogetherFineTuneTrigger``; ``deferrable=False``
    pokes in reschedule mode, for deployments without a triggerer. ``cancel_on_kill`` (default true):
    a user marking the deferred task failed/success or clearing it cancels the Together job.
    ``poll_interval`` None (default): ``[trait_lora] poll_seconds``, read when the task runs (in
    reschedule mode the poke interval is fixed when the operator is built, so it is read there).
    """

    lineage_step = "wait"
    template_fields: Sequence[str] = ("launch_result", "output_dir")
    operator_extra_links = (TogetherJobLink(),)
    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        launch_result: dict[str, Any] | Any,
        output_dir: str | None = None,
        together_conn_id: str = TogetherHook.default_conn_name,
        poll_interval: float | None = None,
        wait_timeout: float = 24 * 3600.0,
        max_transient_errors: int = 10,
        cancel_on_kill: bool = True,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", map_index_template("launch_result"))
        kwargs.setdefault("retry_policy", TogetherRetryPolicy())
        if not deferrable:
            kwargs.setdefault("mode", "reschedule")
            kwargs.setdefault("poke_interval", setting_or(poll_interval, "poll_seconds"))
            kwargs.setdefault("timeout", wait_timeout)
        super().__init__(**kwargs)
        self.launch_result = launch_result
        self.output_dir = output_dir
        self.together_conn_id = together_conn_id
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.max_transient_errors = max_transient_errors
        self.cancel_on_kill = cancel_on_kill
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> TogetherHook:
        return TogetherHook(together_conn_id=self.together_conn_id)

    @property
    def incoming(self) -> TraitJob:
        from trait_lora.provider.records import TraitJob

        return TraitJob.from_xcom(self.launch_result)

    @property
    def out_dir(self) -> str:
        return str(self.output_dir or self.incoming.output_dir)

    def _guard(self, context: Any, body: Any) -> Any:
        result = guarded(
            context, self.out_dir, self.incoming.trait, self.task_id, body, self.together_conn_id
        )
        self.returned = result
        return result

    def execute(self, context: Any) -> Any:
        from trait_lora.core.jobs.job_status import JobStatus

        job = self.incoming
        context["ti"].xcom_push(key=JOB_URL_XCOM_KEY, value=dashboard_url(str(job.job_id)))
        if not self.deferrable:
            return self._guard(context, lambda: super(TogetherFineTuneSensor, self).execute(context))
        current = self._guard(context, lambda: self.hook.get_job(str(job.job_id)))
        status = JobStatus.of(current.get("status"))
        if not status.is_known:
            self.log.warning(
                "%s: job %s has status %r, unknown to this version; waiting for it like a running job",
                job.trait,
                job.job_id,
                status.value,
            )
        if status.ends_wait:
            return self._guard(context, lambda: self._finish(current))
        from trait_lora.provider.triggers.together import TogetherFineTuneTrigger

        self.log.info("%s: waiting for job %s (%s) in the triggerer", job.trait, job.job_id, status)
        self.defer(
            trigger=TogetherFineTuneTrigger(
                job_id=str(job.job_id),
                trait=job.trait,
                together_conn_id=self.together_conn_id,
                poll_interval=setting_or(self.poll_interval, "poll_seconds"),
                deadline=time.time() + self.wait_timeout,
                max_transient_errors=self.max_transient_errors,
                last_status=status.value,
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.wait_timeout + 3600),
        )

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        from trait_lora.core.jobs.job_status import JobStatus

        job = self.incoming
        current = self.hook.get_job(str(job.job_id))
        status = JobStatus.of(current.get("status"))
        self.log.info("%s: job %s is %s", job.trait, job.job_id, status)
        if not status.ends_wait:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(current))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from trait_lora.core.jobs.job_status import JobStatus
        from trait_lora.provider.records import ENDED, JobEvent

        def complete() -> dict[str, Any]:
            done = JobEvent.from_payload(event)
            job = self.incoming
            if done.job_id != job.job_id:
                raise AirflowException(
                    f"{job.trait}: the trigger reported job {done.job_id}, but this task waits for "
                    f"{job.job_id}; retrying the wait"
                )
            if done.outcome != ENDED:  # retried: the retry polls the same job again
                raise AirflowException(f"{done.trait}: {done.message}")
            # Re-read: the return value is the job as Together has it now, not the event's snapshot.
            current = self.hook.get_job(done.job_id)
            status = JobStatus.of(current.get("status"))
            if not status.ends_wait:  # never hand an unfinished job on
                raise AirflowException(
                    f"{job.trait}: job {done.job_id} is {status} again after the trigger saw it end; "
                    "retrying the wait"
                )
            return self._finish(current, done.reason)

        return self._guard(context, complete)

    def _finish(self, current: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        from trait_lora.core.jobs.job_status import JobStatus
        from trait_lora.core.jobs.ledger import Ledger
        from trait_lora.provider.records import usd_from_nano

        job = self.incoming
        status = JobStatus.of(current.get("status"))
        price = usd_from_nano(current.get("total_price"))
        Ledger(self.out_dir).update_job(
            job.trait, job_key=job.job_key, job_id=current["id"], status=status.value, total_price_usd=price
        )
        self.log.info(
            "%s: job %s ended %s; price %s; %s",
            job.trait,
            current["id"],
            status,
            f"${price:.4f}" if price is not None else "not reported",
            _duration(current),
        )
        if status.is_ending:
            if not reason:
                reason = first_error_message(self.hook.list_events(current["id"]))
            raise TogetherJobFailed(
                f"{job.trait}: Together job {current['id']} ended {status}: "
                f"{reason or 'no message from Together'}"
            )
        return job.but(status=status.value, total_price=price, output_name=output_name(current)).to_xcom()


def _duration(job: dict[str, Any]) -> str:
    """Created-to-updated time of the job, as Together stamps it (ISO 8601)."""
    try:
        start = datetime.fromisoformat(str(job["created_at"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(job.get("updated_at") or "").replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return "duration unknown"
    seconds = max(0.0, (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds())
    return f"took {seconds:.0f} s"
