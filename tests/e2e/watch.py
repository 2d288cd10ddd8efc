"""Watching a run of a live deployment: periodic samples of task states and of the fake's jobs.

What the e2e asserts on and the benches report (deferred tasks, worker slots held while Together
trains, jobs in flight), apart from the deployment it samples. Imports ``deployment`` for types only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.e2e.deployment import LiveDeployment

WORKER_STATES = ("queued", "running")  # states that hold a LocalExecutor slot
# A job this long in flight is "mid-training": its launch has long since deferred (create -> defer takes
# a second or two; the margin is for a loaded machine).
MID_TRAINING_AFTER = 8.0
# The tasks that wait on Together: upload defers while Together validates the file, launch defers while
# the jobs in flight are at the cap, wait (the sensor) defers while the job trains.
WAITING_TASKS = ("trait.upload", "trait.launch", "trait.wait")


@dataclass
class Sample:
    t: float  # seconds since the run was triggered
    states: dict[str, dict[str, int]]  # task id -> state -> count
    fake_active: int
    fake_creates: int
    # Worker slots held (queued/running task instances) by traits whose Together job has been in flight
    # for MID_TRAINING_AFTER seconds or more and has not ended: what a trait costs while Together trains
    # (a poke-mode sensor would hold one each; a deferred task none). None until the map is known.
    mid_training_slots: int | None = None
    mid_training_jobs: int = 0
    # Those slots by task and state ("trait.wait queued": a wait whose first try has not started yet,
    # "trait.wait running": one reading its job, or a poke), so a reader can tell a late start from a hold.
    mid_training_by_task: dict[str, int] = field(default_factory=dict)

    def count(self, task: str | None = None, states: tuple[str, ...] = WORKER_STATES) -> int:
        tasks = [task] if task else list(self.states)
        return sum(self.states.get(t, {}).get(s, 0) for t in tasks for s in states)

    @property
    def deferred(self) -> int:
        """Task instances deferred to the triggerer (holding no worker slot)."""
        return self.count(states=("deferred",))

    @property
    def worker_slots(self) -> int:
        return self.count()

    @property
    def only_waiting(self) -> bool:
        """The wait phase: jobs are waited on (deferred) and no other kind of task holds a worker slot.

        What holds a slot in such a sample can only be a launch about to defer or a wait reading an
        ended job: the worker slots that waiting on Together costs. Tasks ``scheduled`` but not queued
        (a launch held back by the pool) hold none.
        """
        others = [t for t in self.states if t not in WAITING_TASKS]
        return self.deferred > 0 and sum(self.count(t) for t in others) == 0


@dataclass
class RunWatch:
    run_id: str
    triggered_at: float
    samples: list[Sample] = field(default_factory=list)
    state: str = ""
    wall_s: float = 0.0
    api: dict[str, Any] = field(default_factory=dict)

    @property
    def max_deferred(self) -> int:
        return max((s.deferred for s in self.samples), default=0)

    @property
    def max_fake_active(self) -> int:
        return max((s.fake_active for s in self.samples), default=0)

    @property
    def wait_phase(self) -> list[Sample]:
        return [s for s in self.samples if s.only_waiting]

    @property
    def mid_training(self) -> list[Sample]:
        """Samples in which at least one job was mid-training."""
        return [s for s in self.samples if s.mid_training_jobs and s.mid_training_slots is not None]

    def first(self, predicate: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in self.samples if predicate(s)), None)


def watch_run(
    dep: LiveDeployment,
    run_id: str,
    *,
    timeout: float,
    interval: float = 0.5,
    on_sample: Callable[[Sample], None] | None = None,
) -> RunWatch:
    """Sample task states (metadata DB) and the fake's jobs in flight until the run ends."""
    assert dep.fake is not None
    watch = RunWatch(run_id, time.monotonic())
    deadline = watch.triggered_at + timeout
    last_api = 0.0
    traits: list[str] | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        states: dict[str, dict[str, int]] = {}
        rows = dep.ti_states(run_id)
        for task_id, _map_index, state in rows:
            bucket = states.setdefault(task_id, {})
            key = str(state or "none")
            bucket[key] = bucket.get(key, 0) + 1
        fake = dep.fake.state()
        sample = Sample(round(now - watch.triggered_at, 2), states, fake["active"], fake["creates"])
        if traits is None and states.get("discover", {}).get("success"):
            traits = dep.mapped_traits(run_id)
        if traits is not None:
            training = {
                trait_of_suffix(job.get("suffix") or "", traits)
                for job in fake["jobs"]
                if MID_TRAINING_AFTER <= job["age_s"] < fake["job_seconds"] and job["status"] != "cancelled"
            }
            training.discard(None)
            sample.mid_training_jobs = len(training)
            held = [
                f"{task_id} {state}"
                for task_id, map_index, state in rows
                if task_id.startswith("trait.")
                and 0 <= map_index < len(traits)
                and traits[map_index] in training
                and state in WORKER_STATES
            ]
            sample.mid_training_slots = len(held)
            sample.mid_training_by_task = dict(Counter(held))
        watch.samples.append(sample)
        if on_sample is not None:
            on_sample(sample)
        if now - last_api >= 2:  # the run's state through the API, less often
            last_api = now
            run = dep.run(run_id)
            if run["state"] in ("success", "failed"):
                watch.state = run["state"]
                watch.wall_s = time.monotonic() - watch.triggered_at
                watch.api = run
                return watch
        time.sleep(interval)
    last = describe(watch.samples[-1]) if watch.samples else "none"
    raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s; last sample: {last}")


def trait_of_suffix(suffix: str, traits: list[str]) -> str | None:
    """Job suffixes are ``<trait with '-' for '_'>-<tag>`` (trait_lora.core.jobs.keys.job_suffix)."""
    readable = suffix.rsplit("-", 1)[0]
    return next((t for t in traits if t.replace("_", "-") == readable), None)


def describe(sample: Sample) -> str:
    parts = []
    for task, counts in sorted(sample.states.items()):
        short = task.replace("trait.", "")
        parts.append(short + ":" + ",".join(f"{s}={n}" for s, n in sorted(counts.items())))
    return f"t={sample.t:6.1f}s jobs_in_flight={sample.fake_active} " + " ".join(parts)
