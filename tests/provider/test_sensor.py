"""TogetherFineTuneSensor, ``deferrable=False``: reschedule-mode pokes (deployments without a triggerer)."""

from __future__ import annotations

import pytest

from trait_lora.core.jobs.ledger import Ledger
from trait_lora.provider.operators import TogetherFineTuneSensor, TogetherJobFailed

KEY = "ab" * 32


def sensor_for(job_id: str, out: str) -> TogetherFineTuneSensor:
    launch_result = {"trait": "joy_plus", "job_id": job_id, "job_key": KEY, "output_dir": out}
    return TogetherFineTuneSensor(
        task_id="wait", launch_result=launch_result, deferrable=False, poll_interval=5, wait_timeout=600
    )


def test_non_deferrable_sensor_reschedules_instead_of_holding_a_slot(tmp_path):
    sensor = sensor_for("ft-1", str(tmp_path))
    assert sensor.mode == "reschedule"
    assert sensor.poke_interval == 5
    assert sensor.timeout == 600


def test_pokes_until_the_job_completes_then_returns_the_job(together_conn, tmp_path):
    together_conn.job_polls = 4
    job_id = together_conn.add_job(suffix="joy-plus-abababababababab")
    sensor = sensor_for(job_id, str(tmp_path))
    context = {"run_id": "manual__test"}
    pokes = [sensor.poke(context) for _ in range(3)]
    assert pokes == [False, False, False]
    done = sensor.poke(context)
    assert done.is_done is True
    assert done.xcom_value["status"] == "completed"
    assert done.xcom_value["job_id"] == job_id
    assert done.xcom_value["output_name"] == together_conn.jobs[job_id]["model_output_name"]
    assert together_conn.count("GET", rf"/v1/fine-tunes/{job_id}$") == 4
    assert Ledger(tmp_path).job("joy_plus")["status"] == "completed"


def test_a_failed_job_fails_the_poke_with_togethers_message(together_conn, tmp_path):
    together_conn.job_polls = 1
    together_conn.set_outcome("joy-plus", "user_error", "Bad data at line 7")
    job_id = together_conn.add_job(suffix="joy-plus-abababababababab")
    sensor = sensor_for(job_id, str(tmp_path))
    with pytest.raises(TogetherJobFailed, match="user_error: Bad data at line 7"):
        sensor.poke({"run_id": "manual__test"})
    assert Ledger(tmp_path).job("joy_plus")["status"] == "user_error"


def test_execute_complete_refuses_an_event_that_is_not_ours(tmp_path):
    sensor = sensor_for("ft-1", str(tmp_path))
    with pytest.raises(ValueError, match="malformed trigger event"):
        sensor.execute_complete({"run_id": "manual__test"}, {"status": "completed"})
    failures = (tmp_path / "runs").rglob("failures.json")
    assert any("malformed trigger event" in p.read_text() for p in failures)


def test_the_connection_form_is_defined_once():
    from trait_lora.provider import get_provider_info
    from trait_lora.provider.hooks.together import TogetherHook

    (conn_type,) = get_provider_info()["connection-types"]
    provider = conn_type["ui-field-behaviour"]
    hook = TogetherHook.get_ui_field_behaviour()
    assert provider["hidden-fields"] == hook["hidden_fields"]
    assert provider["relabeling"] == hook["relabeling"]
    assert provider["placeholders"] == hook["placeholders"]


def test_an_event_for_another_job_or_an_unfinished_job_is_retried_not_handed_on(together_conn, tmp_path):
    from airflow.sdk.exceptions import AirflowException

    together_conn.job_polls = 50
    job_id = together_conn.add_job(suffix="joy-plus-abababababababab", status="running")
    sensor = sensor_for(job_id, str(tmp_path))
    event = {
        "outcome": "ended",
        "job_id": "ft-other",
        "trait": "joy_plus",
        "status": "completed",
        "message": "",
    }
    with pytest.raises(AirflowException, match="waits for"):
        sensor.execute_complete({"run_id": "manual__test"}, event)
    with pytest.raises(AirflowException, match="is running again"):
        sensor.execute_complete({"run_id": "manual__test"}, {**event, "job_id": job_id})
