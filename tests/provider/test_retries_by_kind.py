"""Retries by kind: what Together says may pass is retried with its own delay; what cannot pass fails
at once with Together's words or the connection to fix; a redirected download never carries our key
to another host."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import together
from airflow.sdk import RetryAction

from tests.provider.helpers import DAG_ID, conf_for, read_json
from tests.support.airflow import run_dag, task_states
from trait_lora.provider.hooks.answers import UnreadableAnswer
from trait_lora.provider.retry import TogetherRetryPolicy


def sdk_error(fake, status: int, retry_after: float | None = None) -> Exception:
    """The exception the real SDK raises for ``status`` from the fake (no SDK retries)."""
    fake.fail_next("GET", r"^/v1/fine-tunes$", status=status, retry_after=retry_after)
    client = together.Together(api_key=fake.api_key, base_url=fake.base_url, max_retries=0)
    with pytest.raises(Exception) as caught:
        client.fine_tuning.list()
    return caught.value


def wrapped(exc: Exception) -> Exception:
    """As our operators raise it: our own exception, raised from the SDK's."""
    try:
        raise RuntimeError("launch failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(("status", "retry_after"), [(429, 7.0), (503, 2.5), (408, None), (500, None)])
def test_what_may_pass_is_retried_with_the_delay_together_asked_for(fake_together, status, retry_after):
    decision = TogetherRetryPolicy().evaluate(wrapped(sdk_error(fake_together, status, retry_after)), 1, 3)
    assert decision.action is RetryAction.RETRY
    assert decision.retry_delay == (None if retry_after is None else timedelta(seconds=retry_after))
    assert f"HTTP {status}" in decision.reason


def test_no_answer_and_an_unreadable_answer_are_retried(fake_together):
    fake_together.stop()  # connection refused: no answer at all
    client = together.Together(api_key="k", base_url=fake_together.base_url, max_retries=0, timeout=2)
    with pytest.raises(together.APIConnectionError) as caught:
        client.fine_tuning.list()
    policy = TogetherRetryPolicy()
    assert policy.evaluate(caught.value, 1, 3).action is RetryAction.RETRY
    unreadable = UnreadableAnswer("GET /v1/fine-tunes/models/limits", "body", "not JSON")
    assert policy.evaluate(unreadable, 1, 3).action is RetryAction.RETRY
    assert policy.evaluate(ValueError("ours"), 1, 3).action is RetryAction.DEFAULT


def test_a_bad_key_fails_at_once_naming_the_connection_never_the_key(
    airflow_db, together_conn, tmp_path, monkeypatch
):
    fake = together_conn
    key = "tgp_wrong_" + "x" * 24
    monkeypatch.setenv(
        "AIRFLOW_CONN_TOGETHER_DEFAULT",
        json.dumps({"conn_type": "together", "host": fake.base_url, "password": key}),
    )
    conf = conf_for(tmp_path, ["joy_plus"])
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "failed"
    assert task_states(dr)[("trait.upload", 0)] == "failed"
    failed = read_json(tmp_path / "out" / "hypernetwork_data.json")["failed"]["joy_plus"]
    assert "connection 'together_default'" in failed and "HTTP 401" in failed
    assert key not in failed
    # One try: 2 retries were allowed, but a retry cannot fix a key (uploads tried once, SDK included).
    assert fake.count("POST", r"^/v1/files$") == 1


def test_a_bad_request_fails_at_once_with_togethers_message(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.fail_next("POST", r"^/v1/fine-tunes$", status=422, body={"error": {"message": "lora_r too big"}})
    dr = run_dag(DAG_ID, conf_for(tmp_path, ["joy_plus"]))
    assert str(dr.state) == "failed"
    failed = read_json(tmp_path / "out" / "hypernetwork_data.json")["failed"]["joy_plus"]
    assert "lora_r too big" in failed and "422" in failed
    assert fake.count("POST", r"^/v1/fine-tunes$") == 1


def test_a_redirected_download_never_shows_our_key_to_the_storage_host(airflow_db, together_conn, tmp_path):
    """The SDK's httpx client drops Authorization on a redirect to another host; an SDK upgrade that
    changed that would send the API key to storage, and this test would fail."""
    fake = together_conn
    fake.download_redirect = True
    dr = run_dag(DAG_ID, conf_for(tmp_path, ["joy_plus"]))
    assert str(dr.state) == "success"
    assert fake.storage_downloads, "the download did not go through the redirect"
    for host, auth in fake.storage_downloads:
        assert host.startswith("localhost:")  # another host than the API's 127.0.0.1
        assert auth is None
    assert (tmp_path / "out" / "lora_checkpoints" / "joy_plus" / "adapter_model.safetensors").is_file()


def test_every_together_step_of_the_dag_carries_the_policy():
    from tests.support.airflow import get_dag

    dag = get_dag(DAG_ID)
    for task_id in ("trait.upload", "trait.launch", "trait.wait", "trait.download"):
        assert isinstance(dag.task_dict[task_id].retry_policy, TogetherRetryPolicy), task_id
