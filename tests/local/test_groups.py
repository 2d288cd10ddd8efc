"""The local backend's groups without training: how a run's traits split, how a trait's task reads what
its group left, and the time limit a group's trainer runs under (the training itself is in
tests/train/test_group.py and, through the DAG, tests/dags/test_local_dag.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from trait_lora.local.backend import LocalTrainingError, run_trainer, staging_dir
from trait_lora.local.groups import split_groups, take_group_result, train_group
from trait_lora.train.group import Member
from trait_lora.train.group_records import write_record


def test_traits_split_into_even_groups_in_order_and_a_group_of_one_is_none():
    traits = [f"t{i}" for i in range(10)]
    assert split_groups(traits, 8) == [traits[:5], traits[5:]]  # two GPUs finish together
    assert split_groups(traits, 10) == [traits]
    assert split_groups(traits[:3], 2) == [traits[:2]]  # t2 trains alone, as without groups
    assert split_groups(traits, 1) == [] and split_groups(traits[:1], 8) == []


def test_a_trait_takes_its_groups_failure_once_and_ignores_another_runs_record(tmp_path: Path):
    plan = {"trait": "joy_plus", "job_key": "a" * 64, "output_dir": str(tmp_path)}
    staging = staging_dir(plan)
    member = Member("joy_plus", tmp_path / "joy_plus.jsonl", staging, None)  # type: ignore[arg-type]

    write_record(member, "run-1", 2, "error: none of the 3 examples has a token to learn from")
    assert take_group_result(plan, "run-2") is None  # another run's record: this run trains it alone

    write_record(member, "run-2", 4, "error: out of memory on the CPU even at micro-batch 1")
    with pytest.raises(LocalTrainingError) as failed:
        take_group_result(plan, "run-2")
    assert failed.value.exit_code == 4  # a retry may pass: the task's retry trains the trait alone
    assert "in a group" in str(failed.value) and "out of memory" in str(failed.value)
    assert take_group_result(plan, "run-2") is None  # the record was used up: the retry trains it alone


def test_a_group_retried_on_a_bucket_does_not_train_again_what_it_installed(s3_bucket, s3_conn):
    """The group's task installed both traits for their tasks on any worker, then its worker died: its
    retry (here or elsewhere) starts no trainer, and each trait's task takes the installed result."""
    from trait_lora.core.handoff import runs

    out = f"s3://{s3_bucket}/stage2"
    plans = [
        {"trait": t, "job_key": k * 64, "output_dir": out, "action": "train"}
        for t, k in (("joy_plus", "a"), ("joy_minus", "b"))
    ]
    for plan in plans:
        result = {"trait": plan["trait"], "adapter_sha256": plan["job_key"][0] * 64}
        runs.record_group_install(out, "run-1", plan["trait"], {"job_key": plan["job_key"], "result": result})
    done = train_group(plans, run_id="run-1", python="/nonexistent/python")  # a trainer start would fail
    assert done == {
        "traits": {p["trait"]: {"status": "trained", "exit_code": 0, "earlier": True} for p in plans}
    }
    assert take_group_result(plans[1], "run-1") == {"trait": "joy_minus", "adapter_sha256": "b" * 64}
    assert take_group_result(plans[0], "run-2") is None  # another run's installs are not this run's
    changed = {**plans[0], "job_key": "c" * 64}  # the run cleared after the shard changed: another adapter
    assert take_group_result(changed, "run-1") is None


def test_on_a_bucket_a_trait_fails_once_with_the_reason_its_group_task_recorded(s3_bucket, s3_conn):
    """The group task on worker A found the trait's adapter bad (or the trait failed in the group): the
    trait's task on worker B fails with that reason instead of training again; its retry trains alone."""
    from trait_lora.core.handoff import runs

    out = f"s3://{s3_bucket}/stage2"
    plan = {"trait": "joy_plus", "job_key": "a" * 64, "output_dir": out, "action": "train"}
    reason = "joy_plus: the adapter's held-out loss is worse than the base model's (quality gate)"
    runs.record_group_install(
        out, "run-1", "joy_plus", {"job_key": "a" * 64, "error": reason, "exit_code": 2}
    )
    with pytest.raises(LocalTrainingError, match="quality gate") as failed:
        take_group_result(plan, "run-1")
    assert failed.value.exit_code == 2
    assert take_group_result(plan, "run-1") is None  # used once: a retry trains the trait alone


def test_a_hung_trainer_is_stopped_at_its_time_limit():
    started = time.monotonic()
    with pytest.raises(LocalTrainingError, match="local_timeout_minutes") as stopped:
        run_trainer([sys.executable, "-c", "import time; time.sleep(60)"], log=lambda _: None, timeout=0.5)
    assert time.monotonic() - started < 15 and stopped.value.exit_code == 1


def test_on_a_bucket_the_group_task_passes_a_traits_failure_to_its_task_on_any_worker(
    s3_bucket, s3_conn, tmp_path, monkeypatch
):
    """The group recorded a bad shard for the trait in worker A's scratch: the group's task writes that
    reason to the run's records, and the trait's task on worker B (another temp folder) fails with it."""
    import tempfile

    from trait_lora.local.groups import install_for_any_worker

    out = f"s3://{s3_bucket}/stage2"
    plan = {"trait": "joy_plus", "job_key": "a" * 64, "output_dir": out, "action": "train"}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker-a"))
    (tmp_path / "worker-a").mkdir()
    member = Member("joy_plus", "shards/joy_plus.jsonl", str(staging_dir(plan)), None)  # type: ignore[arg-type]
    write_record(member, "run-1", 2, "error: shards/joy_plus.jsonl:3: no assistant turn")
    statuses = {"joy_plus": {"status": "failed", "exit_code": 2}}
    assert install_for_any_worker([plan], statuses, "run-1", log=lambda _: None) == []

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker-b"))
    (tmp_path / "worker-b").mkdir()
    with pytest.raises(LocalTrainingError, match="no assistant turn") as failed:
        take_group_result(plan, "run-1")
    assert failed.value.exit_code == 2
