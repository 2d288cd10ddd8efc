"""hypernetwork_intake: parsed, scheduled on the alias, run by hand and on a real producer's Asset event."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.support.airflow import REPO, copy_shards, get_dag, run_dag, task_states
from tests.support.published import publish, weights

DAG_ID = "hypernetwork_intake"


def dataset(out: Path) -> Path:
    return out / "hypernetwork_dataset"


def assert_rows_equal_installed(out: Path, traits: list[str]) -> None:
    stacked = load_file(dataset(out) / "adapters.safetensors")
    index = json.loads((dataset(out) / "index.json").read_text())
    assert [t["trait"] for t in index["traits"]] == sorted(traits)
    for row, trait in enumerate(sorted(traits)):
        for name, tensor in load_file(weights(out, trait)).items():
            np.testing.assert_array_equal(stacked[name][row], tensor)


def intake_result(dagrun) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=DAG_ID, run_id=dagrun.run_id, task_id="intake", key="return_value")
            .one()
        )
        value = row.value
    return json.loads(value) if isinstance(value, str) else value


def test_dag_parses_and_is_scheduled_on_the_mapping_alias():
    from airflow.sdk import AssetAlias
    from airflow.sdk.exceptions import ParamValidationError

    dag = get_dag(DAG_ID)
    assert dag.task_ids == ["intake"] and dag.get_task("intake").retries == 0
    assert dag.catchup is False and dag.max_active_runs == 1
    assert list(dag.timetable.asset_condition.objects) == [AssetAlias("trait_lora_hypernetwork_data")]
    param = dag.params.get_param("mapping_path")
    assert (dag.params["mapping_path"], param.schema["type"]) == (None, ["null", "string"])
    assert param.schema["title"] and "Default" in param.description and "alias" in dag.doc_md
    inside = str(REPO / "outputs" / "hypernetwork_data.json")  # conftest: the repo is a storage root
    for good in (None, inside):
        assert copy.deepcopy(param).resolve(good) == good
    with pytest.raises(ParamValidationError):  # a worker's working directory is no place to resolve it
        copy.deepcopy(param).resolve("out/hypernetwork_data.json")
    # the intake writes beside the mapping: outside [trait_lora] storage_roots it is refused at creation
    for outside in ("/data/out/hypernetwork_data.json", "s3://someone-elses-bucket/hypernetwork_data.json"):
        with pytest.raises(ParamValidationError, match=r"storage_roots"):
            copy.deepcopy(param).resolve(outside)


def test_a_mapping_outside_the_roots_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    """An Asset event can come from any DAG, and a symlink can lead anywhere: the task checks the
    mapping it is about to read (symlinks resolved) and writes nothing beside one outside the roots."""
    from airflow.sdk.exceptions import AirflowFailException

    from trait_lora.provider.intake import run_intake

    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    path = publish(elsewhere, ["joy_plus", "joy_minus"])
    allowed.mkdir()
    (allowed / "linked").symlink_to(elsewhere)
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([str(allowed)]))
    for named in (str(path), str(allowed / "linked" / path.name)):
        with pytest.raises(
            AirflowFailException, match=r"outside the locations.*\[trait_lora\] storage_roots"
        ):
            run_intake({}, {"alias": [event(Path(named).as_uri(), 1)]})
    assert not dataset(elsewhere).exists()  # the manual run of the test above is the control


def test_manual_run_with_mapping_path_writes_the_dataset_then_a_bad_adapter_fails_it(airflow_db, tmp_path):
    out = tmp_path / "out"
    path = publish(out)
    dr = run_dag(DAG_ID, {"mapping_path": str(path)})
    assert str(dr.state) == "success"
    assert_rows_equal_installed(out, ["joy_plus", "joy_minus", "calm_minus", "calm_plus"])
    result = intake_result(dr)
    assert (result["num_traits"], result["source"]) == (4, "param mapping_path")
    assert result["dataset_dir"] == str(dataset(out))

    before = (dataset(out) / "adapters.safetensors").read_bytes()
    target = weights(out, "calm_plus")
    target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\0")
    dr = run_dag(DAG_ID, {"mapping_path": str(path)})
    assert str(dr.state) == "failed" and task_states(dr)[("intake", -1)] == "failed"
    assert (dataset(out) / "adapters.safetensors").read_bytes() == before


def test_the_failure_message_names_the_trait(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from trait_lora.provider.intake import run_intake

    out = tmp_path / "out"
    path = publish(out, ["joy_plus", "joy_minus"])
    target = weights(out, "joy_plus")
    target.write_bytes(target.read_bytes()[:-1] + b"\x7f")
    with pytest.raises(AirflowFailException) as caught:
        run_intake({"mapping_path": str(path)}, None)
    message = str(caught.value)
    assert (
        f"intake of {path} (param mapping_path) failed, nothing was written:\njoy_plus ({target})" in message
    )
    with pytest.raises(AirflowFailException, match="no mapping to read"):
        run_intake({"mapping_path": None}, {})


def event(uri: str, minutes: int, extra: dict | None = None, run_id: str = "r") -> SimpleNamespace:
    """The fields of Airflow's AssetEventDagRunReferenceResult that intake reads."""
    return SimpleNamespace(
        asset=SimpleNamespace(name=uri, uri=uri),
        extra=extra or {},
        timestamp=datetime(2026, 5, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        source_dag_id="trait_lora_together",
        source_run_id=run_id,
        source_map_index=-1,
    )


def test_pick_mapping_prefers_the_param_then_the_newest_event(tmp_path):
    from trait_lora.provider.intake import pick_mapping

    old = event("file:///data/a/hypernetwork_data.json", 1, run_id="old")
    new = event("file:///data/b%20c/hypernetwork_data.json", 5, run_id="new")
    named = event("file:///ignored.json", 9, {"mapping_path": "/data/x/hypernetwork_data.json"}, run_id="x")
    # Airflow lists each event under its Asset and again under the alias it came by.
    assert pick_mapping({}, {"alias": [old, new], "asset": [new]}) == (
        "/data/b c/hypernetwork_data.json",
        new,
    )
    assert pick_mapping(None, {"alias": [named, old]})[0] == "/data/x/hypernetwork_data.json"
    assert pick_mapping({"mapping_path": "/m.json"}, {"alias": [new]}) == ("/m.json", None)
    # a mapping on object storage is named by its s3:// Asset URI
    on_s3 = event("s3://team-bucket/stage2/hypernetwork_data.json", 11, run_id="s3")
    assert pick_mapping({}, {"alias": [new, on_s3]})[0] == "s3://team-bucket/stage2/hypernetwork_data.json"


def test_a_real_producer_event_is_what_intake_reads(airflow_db, together_conn, tmp_path, monkeypatch):
    """trait_lora_together (fake Together) publishes; its event queues the intake, which reads that file.

    ``dag.test()`` always makes a manual run, so the event the scheduler would hand to an asset-triggered
    run is attached to the run dag.test creates; from there Airflow's own code builds
    ``triggering_asset_events`` for the task.
    """
    import airflow.models.dagrun as dagrun_module
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    sync_bag_to_db(DagBag(dag_folder=str(REPO / "dags")), "dags-folder", None)
    with create_session() as session:
        session.query(DagModel).filter_by(dag_id=DAG_ID).update({"is_paused": False})
    try:
        out = tmp_path / "out"
        conf = {
            "shards_dir": str(copy_shards(tmp_path / "shards", ["joy_plus", "joy_minus"])),
            "output_dir": str(out),
        }
        producer = run_dag("trait_lora_together", conf)
        assert str(producer.state) == "success"
        mapping = out / "hypernetwork_data.json"
        with create_session() as session:
            events = session.query(AssetEvent).filter_by(source_run_id=producer.run_id).all()
            assert [e.extra["mapping_path"] for e in events] == [str(mapping)]
            queued = session.query(AssetDagRunQueue).filter_by(target_dag_id=DAG_ID).all()
            uris = {session.get(AssetModel, q.asset_id).uri for q in queued}
            assert mapping.resolve().as_uri() in uris  # the scheduler would start an intake run now
            event_ids = [e.id for e in events]
            announced = events[0].extra["mapping_sha256"]
            # Move the file and say so in the event: a run that reads it must have read the event.
            moved = out / "published.json"
            mapping.rename(moved)
            events[0].extra = {**events[0].extra, "mapping_path": str(moved)}

        original = dagrun_module.get_or_create_dagrun

        def with_events(**kwargs):
            dr = original(**kwargs)
            session = kwargs["session"]
            dr.consumed_asset_events.extend(
                session.query(AssetEvent).filter(AssetEvent.id.in_(event_ids)).all()
            )
            session.commit()
            return dr

        monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", with_events)
        dr = get_dag(DAG_ID).test()
        assert str(dr.state) == "success"
        result = intake_result(dr)
        assert result["mapping_path"] == str(moved)
        assert result["source"] == f"Asset event of run {producer.run_id}"
        assert_rows_equal_installed(out, ["joy_plus", "joy_minus"])
        index = json.loads((dataset(out) / "index.json").read_text())
        assert index["mapping_sha256"] == announced
        assert all(t["training"] is not None for t in index["traits"])  # the fake's training losses
    finally:
        with create_session() as session:
            session.query(DagModel).filter_by(dag_id=DAG_ID).update({"is_paused": True})
