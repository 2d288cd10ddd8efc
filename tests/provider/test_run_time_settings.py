"""Task-side settings are read when the task runs, not when the DAG file was parsed."""

from __future__ import annotations

import pytest

from tests.support.airflow import get_dag
from trait_lora.provider.operators.base import setting_or


def test_the_together_dag_leaves_poll_stagger_and_cap_to_run_time():
    dag = get_dag("trait_lora_together")
    launch, upload, wait = (dag.get_task(f"trait.{t}") for t in ("launch", "upload", "wait"))
    assert launch.max_jobs_in_flight is None and launch.cap_poll_interval is None
    assert launch.stagger_seconds is None
    assert upload.poll_interval is None and wait.poll_interval is None


def test_an_unset_argument_reads_the_setting_now_and_an_explicit_one_wins(monkeypatch):
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__POLL_SECONDS", "7")
    assert setting_or(None, "poll_seconds") == 7.0
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__POLL_SECONDS", "11")  # changed after "parse"
    assert setting_or(None, "poll_seconds") == 11.0
    assert setting_or(2, "poll_seconds") == 2.0


def test_explicit_operator_arguments_still_work_and_are_checked():
    from trait_lora.provider.operators import TogetherLaunchOperator

    op = TogetherLaunchOperator(task_id="l", upload_result={}, max_jobs_in_flight=3, stagger_seconds=0)
    assert op.max_jobs_in_flight == 3 and op.stagger_seconds == 0
    with pytest.raises(ValueError, match="max_jobs_in_flight must be >= 1"):
        TogetherLaunchOperator(task_id="l2", upload_result={}, max_jobs_in_flight=0)
