"""Liberal in what we accept: answers with only the spec's fields work, an answer we cannot read is
told apart from our parameters being refused, and a rejected shard shows Together's own reason."""

from __future__ import annotations

import pytest

from tests.fake_together.server import default_model_limits
from tests.fake_together.test_fake_server import dataset
from tests.provider.helpers import DAG_ID, conf_for, read_json
from tests.support.airflow import run_dag, task_states
from trait_lora.core.config import TrainingConfig
from trait_lora.provider.hooks.answers import UnreadableAnswer
from trait_lora.provider.hooks.together import TogetherHook
from trait_lora.provider.operators.launch import sdk_refusal


def test_a_rejected_shard_shows_togethers_reason_when_the_file_has_only_processed(
    airflow_db, together_conn, tmp_path
):
    fake = together_conn
    fake.answers = "spec-minimal"  # no processing_status: the estimate says the file is invalid
    fake.reject_file("joy_plus.jsonl", "line 3: assistant turn is empty after tokenization")
    conf = conf_for(tmp_path, ["joy_plus", "joy_minus"])
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "failed"
    failed = read_json(tmp_path / "out" / "hypernetwork_data.json")["failed"]
    assert "line 3: assistant turn is empty after tokenization" in failed["joy_plus"]
    assert "joy_plus.jsonl" in failed["joy_plus"]  # the shard to fix
    assert fake.creates == 1  # joy_minus trained; nothing created for the rejected file


def test_limits_the_spec_does_not_promise_are_left_to_togethers_server(airflow_db, together_conn, tmp_path):
    """Without lora_training in the answer we cannot check the batch size: Together's own 400 then
    fails the trait at once, with its message, and no job exists."""
    fake = together_conn
    fake.answers = "spec-minimal"
    dr = run_dag(DAG_ID, conf_for(tmp_path, ["joy_plus"], batch_size=4))
    assert str(dr.state) == "failed"
    failed = read_json(tmp_path / "out" / "hypernetwork_data.json")["failed"]["joy_plus"]
    assert "batch_size must be within [8, 128]" in failed
    assert "SDK refused" not in failed
    assert fake.jobs == {}


def test_an_unreadable_limits_answer_names_the_endpoint_and_is_retried(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.model_limits = lambda name: ["not", "an", "object"]
    dr = run_dag(DAG_ID, conf_for(tmp_path, ["joy_plus"]))
    assert str(dr.state) == "failed"
    launches = [s for (task, _), s in task_states(dr).items() if task == "trait.launch"]
    assert launches == ["failed"]
    failed = read_json(tmp_path / "out" / "hypernetwork_data.json")["failed"]["joy_plus"]
    assert "GET /v1/fine-tunes/models/limits" in failed and "retrying" in failed
    assert "refused" not in failed  # not blamed on our parameters
    assert fake.count("GET", r"^/v1/fine-tunes/models/limits$") == 3  # first try + 2 retries
    assert fake.jobs == {}


def test_our_parameter_refused_by_the_sdks_own_check_is_named(together_conn, tmp_path):
    fake = together_conn
    fake.file_polls = 0
    hook = TogetherHook()
    file_id = hook.upload_file(dataset(tmp_path / "shard.jsonl"))["id"]
    kwargs = TrainingConfig(batch_size=4).together_create_kwargs()
    with pytest.raises(ValueError) as caught:  # the SDK checks the batch size against the limits
        hook.create_job(training_file=file_id, suffix="s", model_limits=default_model_limits("m"), **kwargs)
    message = sdk_refusal("joy_plus", caught.value)
    assert message.startswith("joy_plus: the Together SDK refused parameter batch_size before anything")
    assert "minimum allowed value of 8" in message
    assert fake.jobs == {}


def test_unknown_fields_and_a_missing_lora_block_do_not_stop_a_launch(together_conn, tmp_path):
    fake = together_conn
    fake.file_polls = 0
    fake.answers = "spec-minimal"
    hook = TogetherHook()
    file_id = hook.upload_file(dataset(tmp_path / "shard.jsonl"))["id"]
    limits = hook.model_limits(TrainingConfig().together_model)
    assert "lora_training" not in limits and "x_added_later" in limits
    job = hook.create_job(
        training_file=file_id, suffix="s", model_limits=limits, **TrainingConfig().together_create_kwargs()
    )
    assert job["id"] in fake.jobs
    with pytest.raises(UnreadableAnswer, match="models/limits"):
        fake.model_limits = lambda name: "text"
        hook.model_limits("m")
