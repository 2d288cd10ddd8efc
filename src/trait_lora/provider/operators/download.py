"""Download step: stream the adapter to a temp file, check its length on the wire, verify it, install
it atomically, then record it (the ledger is written only after the adapter verified)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from trait_lora.provider.operators.base import TogetherStep

if TYPE_CHECKING:
    from trait_lora.provider.records import TraitJob


class TogetherDownloadOperator(TogetherStep):
    """Returns the trait's final result for the fan-in (action, adapter path and sha256, price, loss)."""

    lineage_step = "download"
    template_fields: Sequence[str] = ("wait_result", "output_dir", "config")
    input_field = "wait_result"

    def __init__(self, *, wait_result: dict[str, Any] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_result = wait_result

    def run_step(self, context: Any, job: TraitJob) -> dict[str, Any]:
        import httpx

        from trait_lora.core.adapter import AdapterSpec
        from trait_lora.core.adapter.content import install_adapter_at
        from trait_lora.core.adapter.quarantine import quarantine_archive
        from trait_lora.core.errors import AdapterError
        from trait_lora.core.handoff import runs
        from trait_lora.core.storage.opener import scratch_dir

        trait, job_id = job.trait, str(job.job_id)
        cfg = self.training_config
        part = scratch_dir(self.out_dir, ".downloads") / f"{trait}-{job_id}.part"
        try:
            try:
                received, expected = self.hook.download_adapter(job_id, part)
            except httpx.HTTPError as exc:  # a body cut short surfaces as a raw httpx error when streamed
                raise AirflowException(
                    f"{trait}: adapter download of {job_id} broke off ({exc}); retrying"
                ) from None
            if expected is not None and received != expected:
                raise AirflowException(
                    f"{trait}: adapter download of {job_id} is truncated ({received} of {expected} bytes); "
                    "retrying the download"
                )
            try:
                path, info, folder = install_adapter_at(
                    part, self.ledger.store, trait, AdapterSpec.from_config(cfg)
                )
            except AdapterError as exc:
                kept = quarantine_archive(self.out_dir, trait, job_id, part, str(exc))
                raise AirflowFailException(
                    f"{trait}: adapter of job {job_id} rejected: {exc}. The archive is kept in {kept} "
                    f"(not installed); after fixing the cause, `trait-lora download {trait} --job-id "
                    f"{job_id}` installs it without a new job"
                ) from None
        finally:
            part.unlink(missing_ok=True)
        metrics, evaluation = self._metrics(job, job_id)
        record = self.ledger.record_planned_adapter(
            job.plan,
            adapter_sha256=info.sha256,
            job_id=job_id,
            backend="together",
            base_model=cfg.together_model,
            evaluation=evaluation,
            adapter_path=folder,
        )
        self.ledger.update_job(trait, job_key=job.job_key, status="completed", downloaded=True)
        runs.clear_failure(self.out_dir, context["run_id"], trait)
        losses = [m.get("loss") for m in metrics if m.get("loss") is not None]
        self.log.info("%s: installed adapter %s (sha256 %s)", trait, path, info.sha256[:12])
        result = {
            "trait": trait,
            "action": "resumed" if job.adopted else "trained",
            "job_id": job_id,
            "adapter_path": str(path),
            "adapter_sha256": info.sha256,
            "estimated_price": job.estimated_price,
            "total_price": job.total_price,
            "final_loss": losses[-1] if losses else None,
            "eval": evaluation,
            "trained_at": record["trained_at"],
            "duration_s": _seconds_since(job.plan.get("planned_at")),
        }
        from trait_lora.provider.tracking import mlflow_runs

        mlflow_runs.log_trait(context, job.plan, result, "together")
        return result

    def _metrics(self, job: Any, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Loss per step and, with a validation file, Together's held-out figures (the last evaluation
        is the adapter's; Together evaluates no base model, so there is no base figure)."""
        from trait_lora.core.handoff.summary import METRICS_DIR
        from trait_lora.core.storage.store import encode_json

        trait = job.trait
        try:
            steps, evals, keys = self.hook.training_figures(job_id)
        except Exception as exc:  # metrics are for the summary; never fail an installed adapter on them
            self.log.warning("%s: could not fetch metrics of %s: %s", trait, job_id, type(exc).__name__)
            return [], None
        evaluation = None
        if job.validation_file_id and not evals and keys:
            note = (
                "Together returned metrics but none with a held-out loss this version knows; keys seen: "
                + ", ".join(keys)
            )
            self.log.warning("%s: %s", trait, note)
            evaluation = {
                **({"n_held_out": int(job.num_validation)} if job.num_validation else {}),
                "base_loss": None,
                "adapter_loss": None,
                "improvement": None,
                "source": "together n_evals",
                "missing": note,
                "metric_keys": keys,
            }
        if evals and job.validation_file_id:
            evaluation = {
                **({"n_held_out": int(job.num_validation)} if job.num_validation else {}),
                "base_loss": None,
                "adapter_loss": evals[-1]["eval_loss"],
                "improvement": None,
                "source": "together n_evals",
                "eval_steps": evals,
            }
        self.ledger.store.put(  # one writer: this job's download task
            f"{METRICS_DIR}/{trait}.json",
            encode_json({"job_id": job_id, "steps": steps, "eval": evaluation}),
        )
        return steps, evaluation


def _seconds_since(stamp: str | None) -> float | None:
    """Wall time from the run's plan to the installed adapter (what a user waited for)."""
    from trait_lora.core.storage.ledger_io import parse_utc

    if not stamp:
        return None
    return round((datetime.now(UTC) - parse_utc(stamp)).total_seconds(), 1)
