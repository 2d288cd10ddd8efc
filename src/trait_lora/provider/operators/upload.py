"""Upload step: validate the shard, upload it unless Together holds the same bytes, and wait (deferred)
until Together has validated the file, since Together validates uploads asynchronously and refuses to
estimate or train on a file that is not COMPLETED."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from trait_lora.provider.operators.base import TogetherStep, setting_or

if TYPE_CHECKING:
    from trait_lora.provider.records import TraitJob

UPLOADS_DIR = ".uploads"  # split files (train / held-out) on their way to Together


class TogetherUploadOperator(TogetherStep):
    """Returns the trait's record with ``file_id`` once Together says the file is COMPLETED.

    ``poll_interval`` None (default): ``[trait_lora] file_poll_seconds`` (capped by ``poll_seconds``),
    read when the task runs: validating a file takes seconds, a job hours.
    """

    lineage_step = "upload"
    template_fields: Sequence[str] = ("trait_plan", "output_dir", "config")
    input_field = "trait_plan"

    def __init__(
        self,
        *,
        trait_plan: dict[str, Any] | Any,
        poll_interval: float | None = None,
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
        from trait_lora.core.shards.remote import shard_file, shard_source
        from trait_lora.core.shards.split import write_split_files
        from trait_lora.core.shards.validation import require_valid
        from trait_lora.core.storage.opener import scratch_dir

        plan, trait = job.plan, job.trait
        if plan["action"] == "skip":
            raise AirflowSkipException(f"{trait}: {plan['reason']}; no remote call")
        if plan["action"] == "invalid":
            raise AirflowFailException(
                f"{trait}: shard is invalid, nothing sent to Together:\n" + "\n".join(plan["problems"])
            )
        if plan.get("recover_job_id"):
            self.log.info("%s: recovering job %s; nothing to upload", trait, plan["recover_job_id"])
            return job.to_xcom()
        shard = shard_file(plan)  # on object storage: a fresh copy on this worker
        try:
            report = require_valid(shard)
        except ShardError as exc:
            raise AirflowFailException(f"{exc}\n" + "\n".join(exc.problems)) from None
        if report.sha256 != plan["shard_sha256"]:
            raise AirflowFailException(
                f"{trait}: {shard_source(plan)} changed since this run planned it "
                f"(sha256 {plan['shard_sha256'][:12]} -> {report.sha256[:12]}); trigger a new run"
            )
        cfg = self.training_config
        split_dir = scratch_dir(self.out_dir, UPLOADS_DIR)
        split = write_split_files(shard, cfg.eval_fraction, split_dir)
        try:
            if split is None:
                train = self._upload(job, shard, report.sha256, report.size)
                fields: dict[str, Any] = {"file_sha256": report.sha256}
            else:
                self.log.info(
                    "%s: %d examples to train on, %d held out for Together's evaluation",
                    trait,
                    split.num_train,
                    split.num_validation,
                )
                held = self._upload(job, split.validation, split.validation_sha256, None)
                train = self._upload(job, split.train, split.train_sha256, None)
                fields = {
                    "file_sha256": split.train_sha256,
                    "validation_file_id": str(held["id"]),
                    "validation_sha256": split.validation_sha256,
                    "num_validation": split.num_validation,
                }
        finally:
            if split is not None:  # derived from the shard: rewritten on a retry, never needed after
                split.train.unlink(missing_ok=True)
                split.validation.unlink(missing_ok=True)
        file_id = str(train["id"])
        self.ledger.update_job(
            trait,
            job_key=job.job_key,
            file_id=file_id,
            shard_sha256=report.sha256,
            suffix=plan["suffix"],
            **fields,
        )
        job = job.but(
            file_id=file_id,
            validation_file_id=fields.get("validation_file_id"),
            num_validation=split.num_validation if split else 0,
        )
        known = {file_id: train, **({job.validation_file_id: held} if split else {})}
        return self._await_files(job, known)

    def _upload(self, job: TraitJob, path: Path, sha256: str, size: int | None) -> dict[str, Any]:
        """The file Together holds with these bytes (from the ledger), else a new upload."""
        uploaded = self._reusable_file(job, sha256)
        if uploaded:
            self.log.info("%s: reusing uploaded file %s (same sha256)", job.trait, uploaded["id"])
            return uploaded
        self.log.info("%s: uploading %s (%d bytes)", job.trait, path, size or path.stat().st_size)
        uploaded = self.hook.upload_file(path)
        self.log.info("%s: uploaded as %s", job.trait, uploaded["id"])
        return uploaded

    def _reusable_file(self, job: TraitJob, sha256: str) -> dict[str, Any] | None:
        from together import NotFoundError

        file_id = self.ledger.find_uploaded_file(sha256)
        if not file_id:
            return None
        try:
            found = self.hook.get_file(file_id)
        except NotFoundError:
            self.log.info("%s: file %s recorded in the ledger is gone from Together", job.trait, file_id)
            return None
        return found  # checked like a new upload: a file Together rejected fails the trait with its report

    def _await_files(
        self, job: TraitJob, known: dict[str, dict[str, Any]], fresh: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Hand on once every file is COMPLETED; fail with Together's report on a rejected one; else
        defer until the first one still being validated ends (then come back here for the next).
        ``fresh``: ids whose verdict in ``known`` was just read (by the trigger): not asked again."""
        from trait_lora.provider.hooks.answers import file_status
        from trait_lora.provider.records import FILE_OK, FILE_REJECTED
        from trait_lora.provider.triggers.together import TogetherFileTrigger

        model = self.training_config.together_model
        for file_id in [f for f in (job.validation_file_id, job.file_id) if f]:
            found = known.get(file_id) or {}
            status = file_status(found)
            if not status and file_id not in fresh:  # not in this answer: ask for the file itself
                found = self.hook.get_file(file_id)
                status = file_status(found)
            if not status:  # the spec's file object (``Processed``, no status): the estimate says
                status = self.hook.file_verdict(file_id, model)
            if status == FILE_OK:
                continue
            if status in FILE_REJECTED:
                raise AirflowFailException(self._rejection(job, file_id, status, found))
            self.log.info(
                "%s: Together is validating file %s (%s); waiting", job.trait, file_id, status or "no status"
            )
            self.defer(
                trigger=TogetherFileTrigger(
                    file_id=file_id,
                    trait=job.trait,
                    model=model,
                    together_conn_id=self.together_conn_id,
                    poll_interval=self._file_poll_seconds(),
                    deadline=time.time() + self.validation_timeout,
                    max_transient_errors=self.max_transient_errors,
                ),
                method_name="execute_complete",
                kwargs={
                    "file_id": job.file_id,
                    "validation_file_id": job.validation_file_id,
                    "num_validation": job.num_validation,
                },
                timeout=timedelta(seconds=self.validation_timeout + 600),
            )
        return job.to_xcom()

    def _file_poll_seconds(self) -> float:
        if self.poll_interval is not None:
            return float(self.poll_interval)
        return min(setting_or(None, "file_poll_seconds"), setting_or(None, "poll_seconds"))

    def _uploaded(
        self, event_file: str, file_id: str | None, validation_file_id: str | None, num_validation: int
    ) -> TraitJob:
        """The trait's record with its file ids after a deferral: from the defer kwargs, else from the
        ledger, where run_step recorded them before deferring (``dag.test`` drops defer kwargs)."""
        from trait_lora.core.shards.remote import shard_file
        from trait_lora.core.shards.split import split_examples
        from trait_lora.core.shards.validation import iter_examples

        job = self.incoming
        if not file_id:
            record = self.ledger.job(job.trait) or {}
            if record.get("job_key") == job.job_key:
                file_id = record.get("file_id")
                validation_file_id = record.get("validation_file_id")
                num_validation = int(record.get("num_validation") or 0)
        if validation_file_id and not num_validation:  # a record from before num_validation was kept
            split = split_examples(
                list(iter_examples(shard_file(job.plan))), self.training_config.eval_fraction
            )
            num_validation = len(split.held_out)
        return job.but(
            file_id=file_id or event_file,
            validation_file_id=validation_file_id,
            num_validation=num_validation,
        )

    def execute_complete(
        self,
        context: Any,
        event: dict[str, Any],
        file_id: str | None = None,
        validation_file_id: str | None = None,
        num_validation: int = 0,
    ) -> dict[str, Any]:
        from trait_lora.provider.records import ENDED, FILE_REJECTED, FileEvent

        def complete() -> dict[str, Any]:
            done = FileEvent.from_payload(event)
            job = self._uploaded(done.file_id, file_id, validation_file_id, num_validation)
            if done.outcome != ENDED:  # retried: the retry finds the file in the ledger and waits again
                raise AirflowException(f"{job.trait}: {done.message}")
            if done.status in FILE_REJECTED:
                found = {"validation_report": done.report} if done.report else {}
                raise AirflowFailException(self._rejection(job, done.file_id, done.status, found))
            self.log.info("%s: Together validated file %s", job.trait, done.file_id)
            return self._await_files(
                job, {done.file_id: {"processing_status": done.status}}, frozenset({done.file_id})
            )

        return self.guard(context, complete)

    def _rejection(self, job: TraitJob, file_id: str | None, status: str, found: dict[str, Any]) -> str:
        """Together's own reason, re-read from the file when the answer at hand had none (the SDK's
        upload result drops ``validation_report``), with the shard to fix."""
        from trait_lora.provider.hooks.answers import rejection_detail

        report = found.get("validation_report")
        if not report and file_id:
            try:
                report = self.hook.get_file(file_id).get("validation_report")
            except Exception as exc:  # the reason is for the message; the rejection stands
                self.log.warning("%s: could not re-read file %s: %s", job.trait, file_id, type(exc).__name__)
        part = " (the held-out part)" if file_id and file_id == job.validation_file_id else ""
        from trait_lora.core.shards.remote import shard_source

        return (
            f"{job.trait}: Together rejected file {file_id}{part} ({status}): {rejection_detail(report)}. "
            f"Fix {shard_source(job.plan)} (trait-lora validate checks it locally) and trigger again"
        )
