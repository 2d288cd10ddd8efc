"""How a job moves: only when it is read (deterministic tests), stage by stage, with Together's events."""

from __future__ import annotations

import secrets
from typing import Any

from tests.fake_together.common import (
    LLAMA_8B_PARAM_COUNT,
    STAGE_EVENTS,
    STAGES,
    TERMINAL_STATUSES,
    _now,
)
from tests.fake_together.state import FakeState
from tests.fake_together.wire import (
    _Run,
)


class JobSimulationMixin(FakeState):
    """A job's progress in ``FakeTogether`` (state lives on the fake)."""

    # ----------------------------------------------------------------------------------------------
    # Simulation
    # ----------------------------------------------------------------------------------------------

    def _event(
        self, job: dict[str, Any], type_: str, message: str, level: str = "info", **extra: Any
    ) -> None:
        event = {
            "object": "fine-tune-event",
            "created_at": _now(),
            "type": type_,
            "level": level,
            "message": message,
            "hash": secrets.token_hex(8),
            # required by the spec's FineTuneEvent; Together fills them with zeros and "" when unset
            "param_count": LLAMA_8B_PARAM_COUNT,
            "token_count": int(job.get("token_count") or 0),
            "total_steps": run.total_steps if (run := self._runs.get(job["id"])) else 0,
            "step": run.step if run else 0,
            "wandb_url": "",
            "checkpoint_path": "",
            "model_path": "",
            "training_offset": 0,
            **{k: v for k, v in extra.items() if v is not None},
        }
        job["events"].append(event)

    def _advance_step(self, job: dict[str, Any], run: Any, step: int) -> None:
        """Move a running job's step forward (never back), with Together's checkpoint event."""
        step = min(run.total_steps - 1, step)
        if step > run.step:
            run.step = step
            job["epochs_completed"] = step // run.steps_per_epoch
            self._event(
                job,
                "checkpoint_save",
                f"Checkpoint saved at step {step} of {run.total_steps}",
                step=step,
                total_steps=run.total_steps,
            )

    def _move(self, job: dict[str, Any], run: _Run, target: str) -> None:
        """Go forward along STAGES to ``target``, logging every stage passed (skipped ones included)."""
        current = job["status"]
        start = STAGES.index(current) + 1 if current in STAGES else 0
        end = STAGES.index(target)
        for stage in STAGES[start : end + 1]:
            for type_, message in STAGE_EVENTS[stage]:
                extra: dict[str, Any] = {}
                if type_ == "training_start":
                    extra = {"step": 0, "total_steps": run.total_steps, "param_count": job.get("param_count")}
                    job["started_at"] = _now()
                elif type_ == "training_complete":
                    run.step = run.total_steps
                    extra = {
                        "step": run.step,
                        "total_steps": run.total_steps,
                        "token_count": job.get("token_count"),
                    }
                    job["epochs_completed"] = job.get("n_epochs", 1)
                self._event(job, type_, message, **extra)
        if end >= STAGES.index("running") and "started_at" not in job:
            job["started_at"] = _now()
        job["status"] = target
        job["updated_at"] = _now()
        job["queue_depth"] = 1 if target == "queued" else 0
        remaining = max(0, run.polls_needed - run.polls)
        job["progress"] = {"estimate_available": target != "completed", "seconds_remaining": 60 * remaining}
        if target == "completed":
            job["total_price"] = run.full_price

    def _advance(self, job_id: str) -> None:
        """One retrieve's worth of progress (the only clock this fake has)."""
        job, run = self.jobs[job_id], self._runs[job_id]
        status = job["status"]
        if status in TERMINAL_STATUSES:
            return
        if status == "cancel_requested":
            self._finish(job, run, "cancelled", "Job cancelled at the user's request", level="info")
            return
        run.polls += 1
        if run.polls >= run.polls_needed:
            self._finish_by_outcome(job, run)
            return
        target = run.schedule[run.polls - 1]
        if status in STAGES and STAGES.index(target) < STAGES.index(status):
            target = status
        self._move(job, run, target)
        if target == "running":
            self._advance_step(job, run, run.total_steps * run.polls // run.polls_needed)

    def _finish_by_outcome(self, job: dict[str, Any], run: _Run) -> None:
        status, message = "completed", ""
        for contains, rule_status, rule_message in self._outcomes:
            if contains in (job.get("suffix") or ""):
                status, message = rule_status, rule_message
        if status == "completed":
            self._move(job, run, "completed")
        else:
            self._finish(job, run, status, message)

    def _finish(self, job: dict[str, Any], run: _Run, status: str, message: str, level: str = "") -> None:
        if status == "cancelled":
            job["total_price"] = run.full_price * run.step // run.total_steps  # billed for steps done
            self._event(job, "job_stopped", message, level=level or "warning", step=run.step or None)
        else:
            job["total_price"] = 0
            # The SDK's hand-written enums spell these "Error" / "JOB_ERROR" / "JOB_USER_ERROR".
            kind = "JOB_USER_ERROR" if status == "user_error" else "JOB_ERROR"
            self._event(job, kind, message, level="Error", step=run.step or None)
        job["status"] = status
        job["updated_at"] = _now()
        job["queue_depth"] = 0
        job["progress"] = {"estimate_available": False, "seconds_remaining": 0}
