"""A run's conf may only point at locations the deployment allows ([trait_lora] storage_roots).

Whoever may trigger a run must not make a worker upload files it happens to be able to read, or
overwrite an output that another team's stage 3 trusts. Refused when the run is created (the form's
schema, so the API answers 400) and again by ``discover`` with symlinks resolved, before any read.
"""

from __future__ import annotations

import json
import os

import pytest
from airflow.sdk.exceptions import ParamValidationError

from tests.support.airflow import copy_shards, get_dag, run_dag, task_states


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    """A deployment whose allowed roots are its own shards and outputs folders."""
    shards = copy_shards(tmp_path / "allowed" / "shards", ["joy_plus", "joy_minus"])
    outputs = tmp_path / "allowed" / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__SHARDS_DIR", str(shards))
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__OUTPUT_DIR", str(outputs))
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([str(shards), str(outputs)]))
    return shards, outputs


@pytest.mark.parametrize("dag_id", ["trait_lora_together", "trait_lora_local", "trait_lora_kubernetes"])
def test_a_conf_outside_the_roots_is_refused_when_the_run_is_created(deployment, tmp_path, dag_id):
    shards, outputs = deployment
    params = get_dag(dag_id).params
    for key, bad in [
        ("output_dir", str(tmp_path / "elsewhere")),
        ("output_dir", str(outputs / ".." / "outputs-of-team-b")),
        ("shards_dir", "/etc"),
        ("shards_dir", str(shards) + "-evil"),
        ("output_dir", "s3://someone-elses-bucket/stage3"),
    ]:
        param = params.get_param(key)
        with pytest.raises(ParamValidationError) as refused:
            param.resolve(bad)
        assert "[trait_lora] storage_roots" in str(refused.value)  # says what an administrator changes
    assert params.get_param("output_dir").resolve(str(outputs / "team-a")) == str(outputs / "team-a")
    assert params.get_param("shards_dir").resolve(str(shards)) == str(shards)


@pytest.mark.parametrize("dag_id", ["trait_lora_together", "trait_lora_local", "trait_lora_kubernetes"])
def test_a_conf_naming_another_connection_is_refused_when_the_run_is_created(monkeypatch, dag_id):
    """The bucket and prefix are allowed, the identity is not: s3://conn@... would read and write the
    allowed prefix as another Airflow connection (another account, another endpoint)."""
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps(["s3://team-bucket/trait-lora"]))
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_CONN_ID", "team_s3")
    params = get_dag(dag_id).params
    param = params.get_param("output_dir")
    for good in ("s3://team-bucket/trait-lora/a", "s3://team_s3@team-bucket/trait-lora/a"):
        assert param.resolve(good) == good
    with pytest.raises(ParamValidationError) as refused:
        param.resolve("s3://aws_admin@team-bucket/trait-lora/a")
    assert "[trait_lora] storage_conn_id (team_s3)" in str(refused.value)


def test_a_symlink_out_of_a_root_fails_discover_before_anything_is_read_or_written(
    airflow_db, deployment, tmp_path
):
    shards, outputs = deployment
    secret = copy_shards(tmp_path / "secret-shards", ["joy_plus"])
    os.symlink(secret, shards / "linked")
    dagrun = run_dag(
        "trait_lora_local",
        {"shards_dir": str(shards / "linked"), "output_dir": str(outputs), "dry_run": True},
    )
    states = task_states(dagrun)
    assert states[("discover", -1)] == "failed"
    assert not any(outputs.iterdir()), "nothing may be written for a refused run"
    # the control: the same dry run from inside the root plans
    allowed = run_dag(  # a local model folder: a dry run with a Hub model would pin it (no Hub here)
        "trait_lora_local",
        {"shards_dir": str(shards), "output_dir": str(outputs), "dry_run": True, "base_model": str(tmp_path)},
    )
    assert task_states(allowed)[("discover", -1)] == "success"


def test_a_deployment_on_object_storage_keeps_its_urls_as_the_forms_defaults(monkeypatch):
    """s3:// settings are the form's defaults as written (a Path would fold them into 's3:/...'),
    allowed by the form's pattern, and the bucket is never listed while the DAG file is parsed."""
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__SHARDS_DIR", "s3://team-bucket/trait-lora/shards")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__OUTPUT_DIR", "s3://team-bucket/trait-lora/stage2")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", "[]")
    dag = get_dag("trait_lora_together")
    assert dag.params["shards_dir"] == "s3://team-bucket/trait-lora/shards"
    assert dag.params["output_dir"] == "s3://team-bucket/trait-lora/stage2"
    assert "enum" not in dag.params.get_param("traits").schema["items"]
    param = dag.params.get_param("output_dir")
    assert (
        param.resolve("s3://team-bucket/trait-lora/stage2/team-a")
        == "s3://team-bucket/trait-lora/stage2/team-a"
    )
    with pytest.raises(ParamValidationError, match="storage_roots"):
        param.resolve("s3://other-bucket/x")
