"""``TimedFakeTogether``: the fake Together server with a wall clock, for a live Airflow deployment.

The in-process ``FakeTogether`` advances a job only when it is retrieved, which keeps unit tests
deterministic. A live deployment (scheduler, triggerer, workers as separate processes) is measured in
seconds instead: here every job takes exactly ``job_seconds`` from its create to ``completed``,
whoever polls it and however often, like a real Together job. The job's stages (queued, running,
compressing, uploading) follow the elapsed fraction of that time.

It also answers ``GET /_fake/state`` (same Bearer key as the API) with what a live test asserts on:
creates, uploads and cancels, jobs in flight now, and ``max_active``: the most jobs that were ever in
flight at the same moment, computed exactly from every job's [create, end) interval, so a cap on
concurrent jobs is checked without depending on how often anyone polls.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.fake_together.common import STAGES, TERMINAL_STATUSES
from tests.fake_together.server import FakeTogether
from tests.fake_together.wire import _json_reply, _Request

# Stage boundaries as fractions of the job time: pending, queued, running, compressing, uploading.
STAGE_FRACTIONS = (("queued", 0.05), ("running", 0.1), ("compressing", 0.8), ("uploading", 0.9))


class TimedFakeTogether(FakeTogether):
    """Every job completes ``job_seconds`` after it was created (unless cancelled or given an outcome)."""

    def __init__(self, *, job_seconds: float) -> None:
        super().__init__(job_polls=1)
        if job_seconds <= 0:
            raise ValueError("job_seconds must be > 0")
        self.job_seconds = float(job_seconds)
        self._started: dict[str, float] = {}  # job id -> monotonic create time
        self._ended: dict[str, float] = {}  # job id -> monotonic time it stopped being in flight
        self._cancels = 0
        self._routes.append(("GET", re.compile(r"/_fake/state"), self._state))

    # -- clock ------------------------------------------------------------------------------------
    def _new_job(
        self, body: dict[str, Any], job_id: str | None = None, settle: bool = True
    ) -> dict[str, Any]:
        job = super()._new_job(body, job_id=job_id, settle=False)
        self._started[job["id"]] = time.monotonic()
        return job

    def _end_of(self, job_id: str) -> float:
        """When the job leaves (or left) flight: cancel time, else create + job_seconds."""
        return self._ended.get(job_id, self._started[job_id] + self.job_seconds)

    def _advance(self, job_id: str) -> None:
        job, run = self.jobs[job_id], self._runs[job_id]
        status = job["status"]
        if status in TERMINAL_STATUSES:
            return
        now = time.monotonic()
        if status == "cancel_requested":
            self._finish(job, run, "cancelled", "Job cancelled at the user's request", level="info")
            self._ended.setdefault(job_id, now)
            return
        elapsed = now - self._started[job_id]
        if elapsed >= self.job_seconds:
            self._finish_by_outcome(job, run)
            return
        fraction = elapsed / self.job_seconds
        target = "pending"
        for stage, start in STAGE_FRACTIONS:
            if fraction >= start:
                target = stage
        if status in STAGES and STAGES.index(target) > STAGES.index(status):
            self._move(job, run, target)
        if job["status"] == "running":
            self._advance_step(job, run, int(run.total_steps * fraction))
        job["progress"] = {
            "estimate_available": True,
            "seconds_remaining": max(0, round(self.job_seconds - elapsed)),
        }

    def _jobs_cancel(self, req: _Request, id: str) -> Any:
        reply = super()._jobs_cancel(req, id)
        if reply.status == 200:
            self._cancels += 1
            self._ended.setdefault(id, time.monotonic())
        return reply

    # -- inspection -------------------------------------------------------------------------------
    def active_now(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for job_id, start in self._started.items() if start <= now < self._end_of(job_id))

    def max_active(self) -> int:
        """The most jobs in flight at once, from the exact intervals (an end sorts before a start)."""
        with self._lock:
            edges = [(start, 1) for start in self._started.values()]
            edges += [(self._end_of(job_id), -1) for job_id in self._started]
        current = peak = 0
        for _, step in sorted(edges):
            current += step
            peak = max(peak, current)
        return peak

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            jobs = [
                {
                    "id": job_id,
                    "suffix": job.get("suffix"),
                    "status": job["status"],
                    "age_s": round(now - self._started.get(job_id, now), 3),
                }
                for job_id, job in self.jobs.items()
            ]
            return {
                "job_seconds": self.job_seconds,
                "creates": self.creates,
                "uploads": self.uploads,
                "cancels": self._cancels,
                "active": self.active_now(),
                "max_active": self.max_active(),
                "jobs": jobs,
                "errors": len(self.errors),
                "bugs": list(self.bugs),
            }

    def _state(self, req: _Request) -> Any:
        return _json_reply(200, self.state())
