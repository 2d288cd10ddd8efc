"""Keep what was paid for: a refused archive is quarantined with its reason, and a finished job's
adapter is recovered later (conf ``download_job_ids``, or ``trait-lora download``) with no new job."""

from __future__ import annotations

import copy

import pytest

from tests.provider.helpers import DAG_ID, conf_for, read_json, suffix_part
from tests.support.airflow import run_dag, task_states
from trait_lora import cli

TRAITS = ["joy_plus", "joy_minus"]


def test_a_refused_archive_is_kept_and_recovered_without_a_new_job(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.set_download(suffix_part("joy_plus"), "wrong-rank")
    conf = conf_for(tmp_path, TRAITS)
    out = tmp_path / "out"
    assert str(run_dag(DAG_ID, conf).state) == "failed"
    assert fake.creates == 2
    (job_id,) = [j["id"] for j in fake.jobs.values() if j["suffix"].startswith(suffix_part("joy_plus"))]
    kept = out / "quarantine" / "joy_plus" / job_id
    reason = (kept / "reason.txt").read_text()
    assert "rank" in reason and f"trait-lora download joy_plus --job-id {job_id}" in reason
    assert (kept / "adapter-archive").stat().st_size > 0  # the paid-for bytes, not deleted
    assert not (out / "lora_checkpoints" / "joy_plus").exists()
    mapping = read_json(out / "hypernetwork_data.json")
    assert "joy_plus" not in mapping["traits"] and "joy_plus" in mapping["failed"]
    assert "quarantine" in mapping["failed"]["joy_plus"]  # the failure says where the archive is

    # The cause is fixed (here: Together now serves a good archive): recover the job, pay nothing.
    fake.set_download(suffix_part("joy_plus"), "good")
    uploads = fake.uploads
    dr = run_dag(DAG_ID, {**conf, "download_job_ids": {"joy_plus": job_id}})
    assert str(dr.state) == "success"
    assert (fake.creates, fake.uploads) == (2, uploads)
    mapping = read_json(out / "hypernetwork_data.json")
    assert mapping["traits"]["joy_plus"]["job_id"] == job_id and mapping["failed"] == {}
    assert (out / "lora_checkpoints" / "joy_plus" / "adapter_model.safetensors").is_file()
    summary = {r["trait"]: r for r in read_json(out / "run_summary.json")["traits"]}
    assert summary["joy_plus"]["action"] == "resumed" and summary["joy_minus"]["action"] == "skipped"
    # ... and the next plain run skips it: the recovered adapter is the trait's current one.
    assert str(run_dag(DAG_ID, conf).state) == "success" and fake.creates == 2


def test_a_job_of_other_settings_is_refused_and_nothing_is_installed(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_plus"])
    assert str(run_dag(DAG_ID, conf).state) == "success"
    (job_id,) = fake.jobs
    before = read_json(tmp_path / "out" / "hypernetwork_data.json")
    # Other settings, other key: the job was not trained for them.
    dr = run_dag(DAG_ID, {**conf, "lora_r": 8, "download_job_ids": {"joy_plus": job_id}})
    assert str(dr.state) == "failed"
    assert task_states(dr)[("trait.launch", 0)] == "failed"
    assert fake.creates == 1
    failed = read_json(tmp_path / "out" / "hypernetwork_data.json")["failed"]["joy_plus"]
    assert "not trained on this trait's current shard and settings" in failed
    assert read_json(tmp_path / "out" / "hypernetwork_data.json")["traits"] == before["traits"]


def test_recovery_names_only_traits_of_the_run(airflow_db, together_conn, tmp_path):
    conf = conf_for(tmp_path, ["joy_plus", "joy_minus"])
    dr = run_dag(DAG_ID, {**conf, "traits": ["joy_plus"], "download_job_ids": {"joy_minus": "ft-x"}})
    assert str(dr.state) == "failed"
    assert task_states(dr)[("discover", -1)] == "failed"
    assert together_conn.creates == 0 and together_conn.uploads == 0


@pytest.mark.parametrize("bad", [{"joy_plus": "../../etc"}, {"../x": "ft-1"}, {"joy_plus": 3}])
def test_a_malformed_recovery_conf_is_refused_when_the_run_is_created(airflow_db, tmp_path, bad):
    from airflow.sdk.exceptions import ParamValidationError

    from tests.support.airflow import get_dag

    param = get_dag(DAG_ID).params.get_param("download_job_ids")
    with pytest.raises(ParamValidationError):
        copy.deepcopy(param).resolve(bad)
    assert copy.deepcopy(param).resolve({"joy_plus": "ft-0a1b-2c"}) == {"joy_plus": "ft-0a1b-2c"}


def test_the_download_command_sends_the_same_conf(monkeypatch, tmp_path):
    seen = {}

    def run_training(**kwargs):
        seen.update(kwargs)
        return 0

    monkeypatch.setattr("trait_lora.embedded.run_training", run_training)
    args = ["download", "joy_plus", "--job-id", "ft-123", "--shards-dir", str(tmp_path), "--output-dir", "o"]
    assert cli.main(args) == 0
    assert seen["backend"] == "together"
    assert seen["conf"]["download_job_ids"] == {"joy_plus": "ft-123"}
    assert seen["conf"]["traits"] == ["joy_plus"]
    assert seen["conf"]["output_dir"] == str((tmp_path.cwd() / "o").resolve())
