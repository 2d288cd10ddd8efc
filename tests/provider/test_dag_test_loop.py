"""dag.test()'s "No tasks to run" warning under `trait-lora train`: a pass that only skipped empty mapped
tasks says nothing (the all-skip rerun in tests/dags/test_local_dag.py checks that on a real run), while a
wait that lasts is still reported, once a second rather than at every brisk poll."""

from __future__ import annotations

import logging
from typing import NamedTuple

from trait_lora.embedded import BRISK_POLL_S, StallWarnings


class TI(NamedTuple):
    """What the warning's argument holds of each task instance (Airflow's are ORM rows)."""

    task_id: str
    map_index: int
    state: str | None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def warning(*tis: TI) -> logging.LogRecord:
    message = "No tasks to run. unrunnable tasks: %s"  # Airflow's words, its argument a set of TIs
    return logging.LogRecord(
        "airflow.sdk.definitions.dag", logging.WARNING, "dag.py", 1, message, (set(tis),), None
    )


WAITING = (TI("publish_mapping", -1, None), TI("check", -1, None))


def test_one_pass_with_nothing_scheduled_says_nothing_and_a_lasting_wait_is_reported_each_second() -> None:
    clock = Clock()
    stalls = StallWarnings(after_s=1.0, clock=clock)
    assert not stalls.filter(warning(*WAITING))  # the all-skip rerun's one quiet pass
    clock.now += 0.5  # tasks ran meanwhile; then a retry delay keeps the same tasks waiting for 3 s
    retrying = (TI("train", 0, "up_for_retry"), *WAITING)
    shown = []
    for step in range(int(3.0 / BRISK_POLL_S) + 1):
        clock.now = 200.0 + step * BRISK_POLL_S
        if stalls.filter(warning(*retrying)):
            shown.append(round(clock.now - 200.0, 2))
    assert shown == [1.0, 2.0, 3.0]
    # other tasks waiting are a new wait: quiet again until it lasts
    clock.now += BRISK_POLL_S
    assert not stalls.filter(warning(TI("train", 0, "up_for_reschedule"), *WAITING))
    # the same tasks reported again after a gap (tasks ran in between) are a new wait too
    clock.now += 5.0
    assert not stalls.filter(warning(TI("train", 0, "up_for_reschedule"), *WAITING))


def test_every_other_record_passes() -> None:
    stalls = StallWarnings()
    other = logging.LogRecord(
        "airflow.sdk.definitions.dag", logging.INFO, "dag.py", 1, "[DAG TEST] %s", ("x",), None
    )
    assert stalls.filter(other)
