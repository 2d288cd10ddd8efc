"""Upload step: validate the shard, upload it unless Together holds the same bytes, and wait (deferred)
until Together has validated the file, since Together validates uploads asynchronously and refuses to
estimate or train on a file that is not COMPLETED."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from trait_lora.provider.operators.base import TogetherStep
from trait_lora.provider.records import ENDED, FILE_OK, FILE_REJECTED, FileEvent, TraitJob


class TogetherUploadOperator(TogetherStep):
    """Returns the trait's record with ``file_id`` once Together says the file is COMPLETED."""

    template_fields: Sequence[str] = ("trait_plan", "output_dir", "config")
    input_field = "trait_plan"

    def __init__(
        self,
        *,
        trait_plan: dict[str, Any] | Any,
        poll_interval: float = 5.0,
        validation_timeout: float = 3600.0,
        max_transient_errors: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.trait_plan = trait_plan
        self.poll_interval = poll_interval
        self.validation_timeout = validation_timeout
        self.max_transient_errors = max_transient_errors

    def run_step(self, context: Any, job: TraitJob) -> dict[str, Any]:
        from trait_lora.core.errors import ShardError
        from trait_lora.core.validation import require_valid

        plan, trait = job.plan, job.trait
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
        uploaded = self._reusable_file(job)
        if uploaded:
            self.log.info("%s: reusing uploaded file %s (same sha256)", trait, uploaded["id"])
        else:
            self.log.info("%s: uploading %s (%d bytes)", trait, plan["shard_path"], report.size)
            uploaded = self.hook.upload_file(Path(plan["shard_path"]))
            self.log.info("%s: uploaded as %s", trait, uploaded["id"])
        file_id = str(uploaded["id"])
        self.ledger.update_job(
            trait, job_key=job.job_key, file_id=file_id, shard_sha256=report.sha256, suffix=plan["suffix"]
        )
        return self._after_validation(job.but(file_id=file_id), uploaded)

    def _reusable_file(self, job: TraitJob) -> dict[str, Any] | None:
        from together import NotFoundError

        file_id = self.ledger.find_uploaded_file(job.plan["shard_sha256"])
        if not file_id:
            return None
        try:
            found = self.hook.get_file(file_id)
        except NotFoundError:
            self.log.info("%s: file %s recorded in the ledger is gone from Together", job.trait, file_id)
            return None
        return found  # checked like a new upload: a file Together rejected fails the trait with its report

    def _after_validation(self, job: TraitJob, found: dict[str, Any]) -> dict[str, Any]:
        """COMPLETED: hand on. Rejected: fail with Together's report. Otherwise defer until it ends."""
        from trait_lora.provider.triggers.together import TogetherFileTrigger

        if not found.get("processing_status"):  # not in this answer: ask for the file itself
            found = self.hook.get_file(str(job.file_id))
        status = str(found.get("processing_status") or FILE_OK).upper()  # none: a file not validated
        if status == FILE_OK:
            return job.to_xcom()
        if status in FILE_REJECTED:
            raise AirflowFailException(_rejection(job, status, found.get("validation_report") or {}))
        self.log.info("%s: Together is validating file %s (%s); waiting", job.trait, job.file_id, status)
        self.defer(
            trigger=TogetherFileTrigger(
                file_id=str(job.file_id),
                trait=job.trait,
                together_conn_id=self.together_conn_id,
                poll_interval=self.poll_interval,
                deadline=time.time() + self.validation_timeout,
                max_transient_errors=self.max_transient_errors,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.validation_timeout + 600),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        def complete() -> dict[str, Any]:
            done = FileEvent.from_payload(event)
            job = self.incoming.but(file_id=done.file_id)
            if done.outcome != ENDED:  # retried: the retry finds the file in the ledger and waits again
                raise AirflowException(f"{job.trait}: {done.message}")
            if done.status in FILE_REJECTED:
                raise AirflowFailException(_rejection(job, done.status, done.report))
            self.log.info("%s: Together validated file %s", job.trait, done.file_id)
            return job.to_xcom()

        return self.guard(context, complete)


def _rejection(job: TraitJob, status: str, report: dict[str, Any]) -> str:
    detail = report.get("error") or report.get("message") or "no report from Together"
    return (
        f"{job.trait}: Together rejected file {job.file_id} ({status}): {detail}. Fix "
        f"{job.plan.get('shard_path')} (trait-lora validate checks it locally) and trigger again"
    )
