"""Launch step: start the training job exactly once per job key, or adopt the one that exists; the task
ends once the job exists (the wait step is the sensor that polls it).

Before any create: adoption (``TogetherHook.find_existing_job``: our ledger, Airflow's task state store
which survives retries unlike XCom, then Together's own list by the key's tag, once; a job that list
shows without a name is read whole once ever, ``core.jobs.known_jobs``), the model's limits
(a parameter out of range fails here, naming the range), the cost gate (``core.budget``), and a slot
under the cap on jobs in flight (claimed in the ledger under its lock; at the cap the task defers on a
timer, holding no worker slot, and tries again). The create itself is sent with SDK retries off; after
any failure the list is read again before another create is ever sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from trait_lora.provider.hooks.answers import sdk_refusal as sdk_refusal
from trait_lora.provider.hooks.together import backoff_delay, is_permanent, output_name
from trait_lora.provider.links import JOB_URL_XCOM_KEY, TogetherJobLink, dashboard_url
from trait_lora.provider.operators.base import TogetherStep, setting_or

if TYPE_CHECKING:
    from trait_lora.core.jobs.claims import Claim, Holder
    from trait_lora.core.jobs.known_jobs import KnownJobs
    from trait_lora.provider.records import TraitJob

STATE_JOB_ID = "together_job_id"


class TogetherLaunchOperator(TogetherStep):
    """Returns the trait's record with ``job_id``, ``status``, ``adopted`` and ``estimated_price``.

    ``max_jobs_in_flight``, ``cap_poll_interval`` and ``stagger_seconds`` left None (the DAG's way) are
    ``[trait_lora] max_jobs_in_flight`` / ``poll_seconds`` / ``stagger_seconds``, read when the task
    runs: one value for every worker, changed without a DAG reparse. Given explicitly, they win.
    """

    operator_extra_links = (TogetherJobLink(),)
    lineage_step = "launch"
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
        max_jobs_in_flight: int | None = None,
        cap_poll_interval: float | None = None,
        stagger_seconds: float | None = None,
        create_attempts: int = 6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_jobs_in_flight is not None and int(max_jobs_in_flight) < 1:
            raise ValueError(f"max_jobs_in_flight must be >= 1, got {max_jobs_in_flight!r}")
        self.upload_result = upload_result
        self.max_job_price_usd = max_job_price_usd
        self.max_run_price_usd = max_run_price_usd
        self.max_jobs_in_flight = None if max_jobs_in_flight is None else int(max_jobs_in_flight)
        self.cap_poll_interval = cap_poll_interval
        self.stagger_seconds = stagger_seconds
        self.create_attempts = create_attempts

    def retry_at_cap(self, context: Any, event: Any = None) -> Any:
        """The timer set at the cap fired: start over (a job may have appeared meanwhile)."""
        return self.execute(context)

    def run_step(self, context: Any, job: TraitJob) -> dict[str, Any]:
        from trait_lora.core.jobs.job_status import JobStatus
        from trait_lora.core.jobs.keys import job_tag

        if job.plan.get("recover_job_id"):
            return self._recover(context, job)
        store = context.get("task_state_store")
        record = self.ledger.job(job.trait) or {}
        known = [record["job_id"]] if record.get("job_key") == job.job_key and record.get("job_id") else []
        # Jobs this very run created (an earlier try of this task, or before a worker died): finding one
        # again is not adopting someone else's job, and the run reports the trait trained, not resumed.
        # (the slot claim before each create records the run, so a lost create answer counts too).
        ours_by_run = (
            record.get("job_key") == job.job_key and record.get("created_in_run") == context["run_id"]
        )
        ours: set[str] = set()
        if store is not None and (stored := store.get(STATE_JOB_ID)):
            known.append(str(stored))
            ours.add(str(stored))
        names = self.ledger.known_jobs()
        found = self.hook.find_existing_job(job_tag(job.job_key), known, names)
        estimate = None
        adopted = found is not None
        claim = None
        if found is None:
            self._check_limits(job)
            estimate = self._cost_gate(context, job)
            claim = self._claim_slot(job, context)
            if claim.took_over:  # the claim's last holder may have posted: search before posting again
                found = self.hook.find_existing_job(job_tag(job.job_key), known=names)
                adopted = found is not None
            if found is None:
                found = self._create(job, store, claim, names)
        job_id = str(found["id"])
        if store is not None:
            store.set(STATE_JOB_ID, job_id)
        status = JobStatus.of(found.get("status") or "pending")
        recorded: dict[str, Any] = {"output_name": output_name(found)}
        if not adopted:  # an adopted job keeps the estimate recorded when it was created
            recorded["estimated_price"] = estimate
        self.ledger.update_job(
            job.trait, claim=claim, job_key=job.job_key, job_id=job_id, status=status.value, **recorded
        )
        how = "created" if not adopted else ("found its own" if ours_by_run or job_id in ours else "adopted")
        adopted = how == "adopted"
        context["ti"].xcom_push(key=JOB_URL_XCOM_KEY, value=dashboard_url(job_id))
        self.log.info("%s: %s job %s (%s)", job.trait, how, job_id, status)
        return job.but(
            job_id=job_id, status=status.value, adopted=adopted, estimated_price=estimate
        ).to_xcom()

    def _recover(self, context: Any, job: TraitJob) -> dict[str, Any]:
        """Hand on a finished (or still running) job the user named, after checking it was trained
        under this trait's current key: its suffix carries the key's tag. Nothing is created."""
        from together import NotFoundError

        from trait_lora.core.jobs.job_status import JobStatus
        from trait_lora.core.jobs.keys import job_tag
        from trait_lora.provider.hooks.together import job_matches_tag

        job_id = str(job.plan["recover_job_id"])
        try:
            found = self.hook.get_job(job_id)
        except NotFoundError:
            raise AirflowFailException(
                f"{job.trait}: Together has no job {job_id} (download_job_ids); check the id in "
                "Together's dashboard"
            ) from None
        tag = job_tag(job.job_key)
        if not job_matches_tag(found, tag):
            raise AirflowFailException(
                f"{job.trait}: job {job_id} was not trained on this trait's current shard and settings "
                f"(its suffix {found.get('suffix')!r} does not end with the current key's tag {tag}); "
                "nothing installed. Trigger with the settings it was trained with, or train anew"
            )
        status = JobStatus.of(found.get("status"))
        if status.is_ending:
            raise AirflowFailException(
                f"{job.trait}: job {job_id} is {status}; it has no adapter to download"
            )
        self.ledger.update_job(
            job.trait, job_key=job.job_key, job_id=job_id, status=status.value, output_name=output_name(found)
        )
        context["ti"].xcom_push(key=JOB_URL_XCOM_KEY, value=dashboard_url(job_id))
        self.log.info("%s: recovering job %s (%s); no new job", job.trait, job_id, status)
        return job.but(job_id=job_id, status=status.value, adopted=True).to_xcom()

    def _check_limits(self, job: TraitJob) -> None:
        from trait_lora.core.errors import ConfigError
        from trait_lora.core.jobs.limits import require_within_limits
        from trait_lora.provider.hooks.answers import warn_unchecked

        cfg = self.training_config
        self._limits = self.hook.model_limits(cfg.together_model)
        try:
            unchecked = require_within_limits(
                cfg, self._limits, trait=job.trait, n_evals=N_EVALS if job.validation_file_id else 0
            )
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        warn_unchecked(cfg.together_model, unchecked)

    def _cost_gate(self, context: Any, job: TraitJob) -> float | None:
        from trait_lora.core.jobs import budget

        cfg = self.training_config
        estimate = self.hook.estimate_price(
            training_file=str(job.file_id), params={**cfg.together_create_kwargs(), **evaluation_kwargs(job)}
        )
        job_budget = _as_float(self.max_job_price_usd, job.plan.get("max_job_price_usd"))
        run_budget = _as_float(self.max_run_price_usd, job.plan.get("max_run_price_usd"))
        decision = budget.decide_cost(job.trait, estimate, job_budget=job_budget, run_budget=run_budget)
        self.log.info(
            "%s: Together estimates %s (allowed_to_proceed=%s)",
            job.trait,
            budget.usd(decision.price) if decision.price is not None else "no price",
            estimate.get("allowed_to_proceed", "not stated"),
        )
        if decision.refusal:
            raise AirflowFailException(decision.refusal)
        if decision.retry_reason:
            raise AirflowException(decision.retry_reason)
        if decision.price is not None and (job_budget is not None or run_budget is not None):
            try:
                budget.reserve(
                    self.out_dir,
                    context["run_id"],
                    job.trait,
                    decision.price,
                    job_budget=job_budget,
                    run_budget=run_budget,
                )
            except budget.BudgetError as exc:
                raise AirflowFailException(str(exc)) from None
        return decision.price

    def _claim_slot(self, job: TraitJob, context: Any) -> Claim:
        """Claim the trait's create under ``max_jobs_in_flight``, or defer on a timer (no worker slot
        held) and try again from the top: at the cap, or while another task instance holds a fresh
        claim on the same key (its job is adopted once it exists).

        At the cap, the counted jobs are first re-read from Together: a job that ended while nobody
        recorded it (its wait was cleared, a worker died) must not hold a slot forever.
        """
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        from trait_lora import settings
        from trait_lora.core.jobs.claims import ClaimHeld

        cap = self.max_jobs_in_flight or settings.get_int("max_jobs_in_flight")
        wait_seconds = setting_or(self.cap_poll_interval, "poll_seconds")
        holder = holder_of(context)
        run_id = context["run_id"]
        try:
            outcome = self.ledger.claim_create(
                job.trait, job_key=job.job_key, cap=cap, holder=holder, run_id=run_id
            )
            if outcome.claim is None:
                self._refresh(outcome.holders)
                outcome = self.ledger.claim_create(
                    job.trait, job_key=job.job_key, cap=cap, holder=holder, run_id=run_id
                )
        except ClaimHeld as held:
            self.log.info("%s; looking again in %.0f s", held, wait_seconds)
        else:
            if outcome.claim is not None:
                return outcome.claim
            self.log.info(
                "%s: %d job(s) in flight (cap %d: %s); waiting %.0f s for a slot",
                job.trait,
                len(outcome.holders),
                cap,
                ", ".join(sorted(outcome.holders)),
                wait_seconds,
            )
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=wait_seconds)), method_name="retry_at_cap")
        raise AssertionError("defer() raises")

    def _release_slot(self, job: TraitJob, claim: Claim) -> None:
        """A definite refusal: nothing was created, so the claimed slot is given back at once."""
        from trait_lora.core.jobs.job_status import NOT_CREATED

        self.ledger.update_job(job.trait, claim=claim, job_key=job.job_key, status=NOT_CREATED, posted=False)

    def _refresh(self, holders: dict[str, dict[str, Any]]) -> None:
        """Ask Together about the jobs counted at the cap; record those that ended. Creates that may
        have been posted (``posted``, no job id) are looked up by their keys' tags, in one list."""
        from together import NotFoundError

        from trait_lora.core.jobs.job_status import JobStatus
        from trait_lora.core.jobs.keys import job_tag

        posted = [job_tag(r["job_key"]) for r in holders.values() if _maybe_posted(r)]
        existing = self.hook.find_existing_jobs(posted, self.ledger.known_jobs()) if posted else {}
        for entry, record in holders.items():
            trait = entry.split("@", 1)[0]
            if not record.get("job_id"):
                if _maybe_posted(record):
                    found = existing.get(job_tag(record["job_key"]))
                    if found is not None:
                        self.ledger.update_job(
                            trait,
                            job_key=record["job_key"],
                            job_id=str(found["id"]),
                            posted=False,
                            status=JobStatus.of(found.get("status") or "pending").value,
                        )
                continue
            try:
                status = JobStatus.of(self.hook.get_job(record["job_id"]).get("status"))
            except NotFoundError:
                status = JobStatus.of("cancelled")
            if status.is_terminal:
                self.ledger.record_job_end(trait, job_id=record["job_id"], status=status.value)

    def _create(self, job: TraitJob, store: Any, claim: Claim, names: KnownJobs) -> dict[str, Any]:
        from together import APIConnectionError, APIStatusError

        from trait_lora.core.jobs.keys import job_tag
        from trait_lora.provider.hooks.answers import UnreadableAnswer
        from trait_lora.provider.hooks.wandb_logging import wandb_create_kwargs

        cfg = self.training_config
        try:
            logging_kwargs = wandb_create_kwargs(job.trait, job.job_key)  # never part of the key
        except AirflowFailException:
            self._release_slot(job, claim)  # nothing posted: give the slot back at once
            raise
        stagger = setting_or(self.stagger_seconds, "stagger_seconds")
        if stagger:
            time.sleep(random.uniform(0, stagger))
        for attempt in range(self.create_attempts):
            # our claim must still stand (a later try or a takeover fences this one off), and from
            # here on a job may exist: the record never goes stale by age alone
            self.ledger.mark_posted(job.trait, claim)
            try:
                created = self.hook.create_job(
                    training_file=str(job.file_id),
                    suffix=job.plan["suffix"],
                    model_limits=self._limits,
                    **cfg.together_create_kwargs(),
                    **evaluation_kwargs(job),
                    **logging_kwargs,
                )
            except UnreadableAnswer:
                raise  # nothing was posted (the SDK reads the limits first): the try is retried
            except ValueError as exc:  # the SDK's own parameter checks: a retry would repeat them
                self._release_slot(job, claim)
                raise AirflowFailException(sdk_refusal(job.trait, exc)) from None
            except (APIConnectionError, APIStatusError) as exc:
                if is_permanent(exc):
                    self._release_slot(job, claim)
                    raise AirflowFailException(
                        f"{job.trait}: Together refused the job ({getattr(exc, 'status_code', '?')}): {exc}"
                    ) from None
                self.log.warning(
                    "%s: create attempt %d failed (%s); reconciling before any new create",
                    job.trait,
                    attempt + 1,
                    type(exc).__name__,
                )
                # List with the retrying client; an unreachable API here fails the try, never re-posts.
                found = self.hook.find_existing_job(job_tag(job.job_key), known=names)
                if found is not None:
                    self.log.info("%s: the job exists after all: %s", job.trait, found["id"])
                    return found
                if attempt + 1 >= self.create_attempts:
                    raise
                time.sleep(backoff_delay(attempt, exc, base=0.5))
                continue
            if not created.get("id"):  # a job may exist: find it by its tag, never post again blindly
                self.log.warning("%s: Together's create answer has no job id; reconciling", job.trait)
                found = self.hook.find_existing_job(job_tag(job.job_key), known=names)
                if found is None:
                    raise UnreadableAnswer("POST /v1/fine-tunes", "id", "and no job carries the key's tag")
                created = found
            if store is not None:
                store.set(STATE_JOB_ID, created["id"])
            self._remember(names, created, job.plan["suffix"])
            return created
        raise AssertionError("unreachable")

    def _remember(self, names: KnownJobs, created: dict[str, Any], suffix: str) -> None:
        """Add the job just created to the memory of job names: no launch beside this one or after it
        reads it whole to learn the suffix we chose. Only a saving: a memory that cannot be written
        costs one read later, never a second job."""
        from trait_lora.core.errors import LedgerError
        from trait_lora.core.jobs.known_jobs import JobNames
        from trait_lora.core.storage.store import StoreError

        try:
            names.remember({str(created["id"]): JobNames(suffix, output_name(created))})
        except (LedgerError, StoreError, OSError) as exc:  # the job exists: this try must not fail now
            self.log.warning("%s; job %s is read whole once by a later launch instead", exc, created["id"])


def holder_of(context: Any) -> Holder:
    """The claim holder of this task instance and try: ``dag/run/task/map_index``."""
    from trait_lora.core.jobs.claims import Holder

    ti = context["ti"]
    ident = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"
    return Holder(ident, int(getattr(ti, "try_number", 1) or 1))


def _maybe_posted(record: dict[str, Any]) -> bool:
    """A create of this slot's holder may have reached Together: no job id recorded, ``posted``."""
    return bool(not record.get("job_id") and record.get("posted") and record.get("job_key"))


def _as_float(*values: Any) -> float | None:
    """The first value that is set (operator argument, then the run's params)."""
    for value in values:
        if value not in (None, "", "None"):
            return float(value)
    return None


N_EVALS = 5  # evaluations of the held-out file during training; the last one is the adapter's figure


def evaluation_kwargs(job: TraitJob) -> dict[str, Any]:
    """``validation_file`` + ``n_evals`` when the upload split off a held-out part, else nothing."""
    if not job.validation_file_id:
        return {}
    return {"validation_file": str(job.validation_file_id), "n_evals": N_EVALS}
