"""Weights & Biases for Together jobs: with ``[trait_lora] wandb_project`` set, each create asks
Together to log the job to the team's W&B; the key comes from an Airflow connection and is never in
XCom, rendered fields, logs, outputs or the job key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.provider.helpers import DAG_ID, conf_for, plans_for
from tests.support.airflow import run_dag, task_states

WANDB_KEY = "wandb-key-0123456789abcdef-not-real"


def test_each_job_logs_to_the_teams_wandb_and_the_key_stays_in_the_connection(
    airflow_db, together_conn, tmp_path, monkeypatch, capfd, caplog
):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_plus", "joy_minus"])
    keys_without = {t: p.job_key for t, p in plans_for(conf).items()}
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__WANDB_PROJECT", "trait-loras")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__WANDB_ENTITY", "persona-team")
    monkeypatch.setenv(
        "AIRFLOW_CONN_WANDB_DEFAULT", json.dumps({"conn_type": "generic", "password": WANDB_KEY})
    )
    caplog.set_level(logging.DEBUG)

    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "success"
    assert len(fake.jobs) == 2
    for job in fake.jobs.values():
        body = job["request"]
        trait = "joy_plus" if "joy-plus" in body["suffix"] else "joy_minus"
        assert body["wandb_key"] == WANDB_KEY  # the SDK sends wandb_api_key as wandb_key
        assert (body["wandb_project_name"], body["wandb_entity"]) == ("trait-loras", "persona-team")
        assert body["wandb_name"] == f"{trait}-{keys_without[trait][:12]}"
        assert "wandb_base_url" not in body  # not set: Together's default (wandb.ai)
    # turning W&B on re-keys nothing: the same keys as a plan without it
    assert {t: p.job_key for t, p in plans_for(conf).items()} == keys_without

    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = session.query(XComModel).filter(XComModel.run_id == dr.run_id).all()
        rtifs = session.query(RenderedTaskInstanceFields).filter(
            RenderedTaskInstanceFields.run_id == dr.run_id
        )
        seen = json.dumps([x.value for x in xcoms] + [r.rendered_fields for r in rtifs], default=str)
    assert "joy_plus" in seen and WANDB_KEY not in seen
    for path in Path(conf["output_dir"]).rglob("*"):
        assert not path.is_file() or WANDB_KEY.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert WANDB_KEY not in captured.out + captured.err and WANDB_KEY not in caplog.text


def test_a_project_without_a_key_fails_the_launch_naming_the_connection_and_pays_nothing(
    airflow_db, together_conn, tmp_path, monkeypatch
):
    fake = together_conn
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__WANDB_PROJECT", "trait-loras")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__WANDB_CONN_ID", "team_wandb")
    monkeypatch.delenv("AIRFLOW_CONN_TEAM_WANDB", raising=False)
    conf = conf_for(tmp_path, ["joy_plus"])
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "failed"
    assert fake.jobs == {}  # no job created, nothing paid
    assert task_states(dr)[("trait.launch", 0)] == "failed"
    failures = json.loads(next(Path(conf["output_dir"]).glob("runs/*/failures.json")).read_text())
    assert "connection 'team_wandb' has no W&B API key" in failures["joy_plus"]["reason"]
