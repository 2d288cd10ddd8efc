"""The Together path against the real service's behaviour (as the SDK source and Together's OpenAPI spec
describe it; the fake does all of it by default), each through the real SDK over HTTP.

One test per behaviour a client of the real service must get right: an estimate without
``estimation_available``, asynchronous file validation, job statuses nobody listed, archives with
more than the adapter, gzip-encoded downloads, the model's limits, the duplicate-upload 409, and
capitalised error events.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from tests.fake_together.server import default_model_limits
from tests.provider.helpers import DAG_ID, conf_for, plans_for, read_json, suffix_part
from tests.support.adapters import adapter_files
from tests.support.airflow import run_dag, task_states
from trait_lora.core.handoff.runs import run_dir

TRAITS = ["joy_minus", "joy_plus", "wisdom_plus"]


def mapping(conf: dict) -> dict:
    return read_json(Path(conf["output_dir"]) / "hypernetwork_data.json")


def test_a_budgeted_run_trains_on_an_estimate_without_estimation_available(
    airflow_db, together_conn, tmp_path
):
    fake = together_conn
    conf = conf_for(tmp_path, TRAITS, max_job_price_usd=5.0, max_run_price_usd=10.0)
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "success"
    assert fake.creates == len(TRAITS)
    # Every estimate we asked for was of a validated file, so every answer lacked the field.
    assert len(fake.estimates) == 2 * len(TRAITS)  # our gate, and the SDK repeats it inside create()
    assert not [e for e in fake.errors if "estimate" in e[1]]
    reserved = read_json(run_dir(conf["output_dir"], dr.run_id) / "budget.json")
    assert sorted(reserved) == TRAITS and all(r["amount"] > 0 for r in reserved.values())


def test_no_estimate_or_create_before_the_file_is_completed(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.file_polls = 4  # Together takes a while to validate each upload
    conf = conf_for(tmp_path, TRAITS)
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert fake.creates == len(TRAITS)
    assert not fake.errors, fake.errors  # Together never had to refuse anything
    assert fake.unvalidated_uses == []  # no estimate or create named a file still being validated
    for file_id in fake.files:  # and each file was polled until its validation ended
        assert fake.count("GET", rf"^/v1/files/{file_id}$") >= fake.file_polls


def test_a_file_together_rejects_fails_its_trait_with_togethers_report(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.reject_file("joy_plus.jsonl", "line 3: assistant turn is empty after tokenization")
    conf = conf_for(tmp_path, TRAITS)
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "failed"
    published = mapping(conf)
    assert sorted(published["traits"]) == ["joy_minus", "wisdom_plus"]
    reason = published["failed"]["joy_plus"]
    assert "INVALID_FORMAT" in reason and "assistant turn is empty after tokenization" in reason
    assert fake.creates == 2
    assert all(j["training_file"] in fake.files for j in fake.jobs.values())
    states = task_states(dr)
    assert states[("trait.upload", TRAITS.index("joy_plus"))] == "failed"


def test_a_reused_file_id_is_checked_the_same_way(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_plus"])
    assert str(run_dag(DAG_ID, conf).state) == "success"
    (file_id,) = fake.files
    # Together has since rejected the file the ledger names: a forced run must not train on it (and a
    # re-upload of the same bytes would only meet the 409 for this very file).
    fake.files[file_id]["processing_status"] = "INVALID_FORMAT"
    fake.files[file_id]["validation_report"] = {"valid": False, "error": "line 9: re-validation failed"}
    creates, uploads = fake.creates, fake.uploads
    assert str(run_dag(DAG_ID, {**conf, "force_retrain": True}).state) == "failed"
    assert (fake.creates, fake.uploads) == (creates, uploads)
    reason = mapping(conf)["failed"]["joy_plus"]
    assert file_id in reason and "line 9: re-validation failed" in reason


def test_a_job_in_a_status_nobody_listed_is_adopted_not_duplicated(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_plus"])
    plans = plans_for(conf)
    seeded = fake.add_job(suffix=plans["joy_plus"].suffix, status="evaluating")
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "success"
    assert fake.creates == 0
    assert mapping(conf)["traits"]["joy_plus"]["job_id"] == seeded
    assert fake.jobs[seeded]["status"] == "completed"


def test_a_job_being_cancelled_is_not_adopted(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_plus"])
    plans = plans_for(conf)
    doomed = fake.add_job(suffix=plans["joy_plus"].suffix, status="cancel_requested")
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert fake.creates == 1
    assert mapping(conf)["traits"]["joy_plus"]["job_id"] != doomed


def test_an_archive_with_extra_members_installs_exactly_the_top_level_adapter(
    airflow_db, together_conn, tmp_path
):
    conf = conf_for(tmp_path, ["joy_plus"])
    assert str(run_dag(DAG_ID, conf).state) == "success"
    out = Path(conf["output_dir"])
    entry = mapping(conf)["traits"]["joy_plus"]
    installed = out / entry["adapter_path"]
    assert sorted(p.name for p in installed.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    top = adapter_files(seed=0)["adapter_model.safetensors"]
    assert (installed / "adapter_model.safetensors").read_bytes() == top  # not checkpoint-2's weights
    assert entry["adapter_sha256"] == hashlib.sha256(top).hexdigest()
    written = [Path(d, f).name for d, _, files in os.walk(out) for f in files]
    for extra in (
        "README.md",
        "tokenizer.json",
        "training_args.bin",
        "optimizer.pt",
        "special_tokens_map.json",
    ):
        assert extra not in written
    assert not list(out.rglob("checkpoint-2"))


def test_a_gzip_encoded_download_installs(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_minus"])
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert fake.download_accept_encodings == ["identity"]  # we ask for the bytes as they are
    # A proxy that gzips regardless: Content-Length counts the encoded bytes, and it still installs.
    fake.download_encoding = "gzip"
    assert str(run_dag(DAG_ID, {**conf, "force_retrain": True}).state) == "success"
    assert len(fake.download_accept_encodings) == 2
    assert mapping(conf)["traits"]["joy_minus"]["job_id"] == max(
        fake.jobs, key=lambda j: fake.jobs[j]["created_at"]
    )


def test_an_out_of_limit_batch_size_fails_at_once_naming_the_range(airflow_db, together_conn, tmp_path):
    fake = together_conn
    small = default_model_limits("x")["lora_training"] | {"min_batch_size": 8, "max_batch_size": 16}
    fake.model_limits = lambda name: {**default_model_limits(name), "lora_training": small}
    conf = conf_for(tmp_path, ["joy_plus"], batch_size=32)
    started = time.monotonic()
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "failed"
    assert fake.creates == 0 and fake.estimates == []  # refused before the cost gate and the create
    assert fake.count("GET", r"^/v1/fine-tunes/models/limits$") == 1  # and not retried
    reason = mapping(conf)["failed"]["joy_plus"]
    assert "batch_size=32" in reason and "[8, 16]" in reason
    assert time.monotonic() - started < 30


def test_a_duplicate_upload_resolves_to_the_existing_file_at_once(together_conn, tmp_path):
    from tests.support.airflow import copy_shards
    from trait_lora.provider.hooks.together import TogetherHook

    fake = together_conn
    assert fake.conflict_retry_after is None  # Together sends no retry hint with the 409
    shard = copy_shards(tmp_path, ["joy_plus"]) / "joy_plus.jsonl"
    hook = TogetherHook()
    first = hook.upload_file(shard)
    started = time.monotonic()
    again = hook.upload_file(shard)
    elapsed = time.monotonic() - started
    assert again["id"] == first["id"]
    assert elapsed < 2.0, f"duplicate upload took {elapsed:.1f} s"
    assert fake.count("POST", r"^/v1/files$") == 2  # one each: the 409 was not retried
    assert fake.uploads == 1


def test_a_capitalised_error_event_reaches_the_mapping(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.set_outcome(suffix_part("joy_plus"), "error", "CUDA out of memory at step 3")
    conf = conf_for(tmp_path, ["joy_plus"])
    assert str(run_dag(DAG_ID, conf).state) == "failed"
    (job,) = fake.jobs.values()
    last = fake.events(job["id"])[-1]
    assert (last["level"], last["type"]) == ("Error", "JOB_ERROR")
    assert job["events"] and fake._view(job, full=True)["events"] == []  # the job object shows none
    assert "CUDA out of memory at step 3" in mapping(conf)["failed"]["joy_plus"]


def test_mapped_tasks_are_labelled_with_their_trait(airflow_db, together_conn, tmp_path):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    conf = conf_for(tmp_path, TRAITS)
    dr = run_dag(DAG_ID, conf)
    with create_session() as session:
        rows = (
            session.query(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.rendered_map_index)
            .filter(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == dr.run_id, TaskInstance.map_index >= 0
            )
            .all()
        )
    labels = {(task, index): label for task, index, label in rows}
    for step in ("upload", "launch", "wait", "download"):
        assert [labels[(f"trait.{step}", i)] for i in range(len(TRAITS))] == TRAITS


def test_jobs_in_flight_never_exceed_the_cap(airflow_db, together_conn, tmp_path, monkeypatch):
    fake = together_conn
    fake.job_polls = 3
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT", "2")
    traits = ["joy_minus", "joy_plus", "wisdom_minus", "wisdom_plus"]
    conf = conf_for(tmp_path, traits)
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert fake.creates == len(traits)
    assert fake.max_in_flight == 2
    assert sorted(mapping(conf)["traits"]) == traits


def test_the_label_renders_from_the_mapped_input_before_execute():
    """Airflow 3.3 renders map_index_template before execute: it must need nothing execute sets."""
    import jinja2

    from tests.support.airflow import get_dag

    dag = get_dag(DAG_ID)
    inputs = {
        "upload": "trait_plan",
        "launch": "upload_result",
        "wait": "launch_result",
        "download": "wait_result",
    }
    for step, field in inputs.items():
        task = dag.get_task(f"trait.{step}")

        class Rendered:  # the task as the runner holds it after rendering its template fields
            pass

        rendered = Rendered()
        setattr(rendered, field, {"trait": "joy_plus", "job_key": "k"})
        label = jinja2.Environment().from_string(task.map_index_template).render(task=rendered)
        assert label == "joy_plus", (step, task.map_index_template)
