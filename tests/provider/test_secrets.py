"""The Together API key never leaves the connection: not in outputs, XCom, rendered fields or logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.provider.helpers import DAG_ID, conf_for, suffix_part
from tests.support.airflow import run_dag


def test_api_key_appears_nowhere_a_user_or_another_task_can_read(
    airflow_db, together_conn, tmp_path, capfd, caplog
):
    fake = together_conn
    key = fake.api_key
    conf = conf_for(tmp_path, ["joy_minus", "joy_plus", "wisdom_plus"])
    # Exercise the unhappy paths too: a failed job, a lost create answer, retried API errors.
    fake.set_outcome(suffix_part("wisdom_plus"), "error", "Bad data at line 7")
    fake.drop_create_response()
    fake.fail_next("GET", r"^/v1/fine-tunes/ft-", 503, times=2, retry_after=0.01)
    caplog.set_level(logging.DEBUG)

    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "failed"  # wisdom_plus failed as injected; the others trained
    job_ids = list(fake.jobs)

    # 1. Every file the run wrote (adapters, ledgers, mapping, summaries, failure records, metrics).
    files = [p for p in Path(conf["output_dir"]).rglob("*") if p.is_file()]
    assert any(p.name == "hypernetwork_data.json" for p in files)
    for path in files:
        assert key.encode() not in path.read_bytes(), path

    # 2. XCom values and rendered template fields of this run, as the UI shows them.
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = (
            session.query(XComModel).filter(XComModel.dag_id == DAG_ID, XComModel.run_id == dr.run_id).all()
        )
        xcom_text = json.dumps([[x.task_id, x.map_index, x.key, x.value] for x in xcoms], default=str)
        rtifs = (
            session.query(RenderedTaskInstanceFields)
            .filter(
                RenderedTaskInstanceFields.dag_id == DAG_ID, RenderedTaskInstanceFields.run_id == dr.run_id
            )
            .all()
        )
        rtif_text = json.dumps([[r.task_id, r.map_index, r.rendered_fields] for r in rtifs], default=str)
    assert {x.task_id for x in xcoms} >= {"discover", "trait.upload", "trait.launch", "trait.wait"}
    assert all(job_id in xcom_text for job_id in job_ids)  # the query saw the real values
    assert {r.task_id for r in rtifs} >= {"trait.upload", "trait.launch", "trait.wait", "trait.download"}
    assert key not in xcom_text
    assert key not in rtif_text

    # 3. What the run printed and logged (dag.test() does not mask: a key logged would show here).
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert "Bad data at line 7" in console and job_ids[0] in console
    assert key not in console
    assert key not in caplog.text
