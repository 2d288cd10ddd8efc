import json
from pathlib import Path

import pytest

from tests.support.airflow import copy_shards, run_dag, task_states

TRAITS = ["joy_plus", "joy_minus", "wisdom_plus"]


@pytest.mark.parametrize("answers", ["full", "spec-minimal"])
def test_whole_dag_trains_publishes_and_reruns_for_free(airflow_db, together_conn, tmp_path, answers):
    """Also with only what Together's spec promises in each answer (no processing_status, limits
    without lora_training, unknown extra fields): the same run, the same adapters."""
    fake = together_conn
    fake.answers = answers
    conf = {"shards_dir": str(copy_shards(tmp_path / "shards", TRAITS)), "output_dir": str(tmp_path / "out")}
    dr = run_dag("trait_lora_together", conf)
    assert str(dr.state) == "success"
    assert (fake.creates, fake.uploads) == (3, 3)
    assert [use for use in fake.unvalidated_uses if use[0] == "/v1/fine-tunes"] == []  # never early
    if answers == "spec-minimal":  # no status on the file: the estimate said when it was validated
        assert fake.unvalidated_uses and {p for p, _ in fake.unvalidated_uses} == {
            "/v1/fine-tunes/estimate-price"
        }
    mapping = json.loads((tmp_path / "out" / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == sorted(TRAITS)
    assert mapping["failed"] == {}
    for entry in mapping["traits"].values():
        assert (tmp_path / "out" / entry["adapter_path"] / "adapter_model.safetensors").is_file()
        assert entry["job_id"] in fake.jobs
    states = task_states(dr)
    assert states[("trait.download", 0)] == "success"
    # What the group maps over is one small ref per trait (every mapped task pulls the whole list):
    # the trait, its action and its plan's file, never the plan with its settings.
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        (refs,) = [
            x.value
            for x in session.query(XComModel).filter(
                XComModel.run_id == dr.run_id, XComModel.task_id == "discover"
            )
        ]
    refs = json.loads(refs) if isinstance(refs, str) else refs
    assert sorted(r["trait"] for r in refs) == sorted(TRAITS)
    assert all(set(r) == {"trait", "action", "output_dir", "plan_key"} for r in refs), refs
    for ref in refs:
        plan = json.loads((Path(ref["output_dir"]) / ref["plan_key"]).read_text())
        assert plan["trait"] == ref["trait"] and plan["config"]["lora_r"] == 4

    # Nothing changed: zero uploads, zero creates, every trait skipped, mapping intact.
    calls_before = len(fake.calls)
    dr2 = run_dag("trait_lora_together", conf)
    assert str(dr2.state) == "success"
    assert (fake.creates, fake.uploads) == (3, 3)
    assert len(fake.calls) == calls_before
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert {r["action"] for r in summary["traits"]} == {"skipped"}
    assert sorted(json.loads((tmp_path / "out" / "hypernetwork_data.json").read_text())["traits"]) == sorted(
        TRAITS
    )


def test_one_failed_trait_fails_the_run_but_the_others_are_published(airflow_db, together_conn, tmp_path):
    fake = together_conn
    fake.set_outcome("wisdom-plus", "error", "Training diverged: loss is NaN at step 3")
    conf = {"shards_dir": str(copy_shards(tmp_path / "shards", TRAITS)), "output_dir": str(tmp_path / "out")}
    dr = run_dag("trait_lora_together", conf)
    assert str(dr.state) == "failed"
    mapping = json.loads((tmp_path / "out" / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == ["joy_minus", "joy_plus"]
    assert "Training diverged: loss is NaN at step 3" in mapping["failed"]["wisdom_plus"]
    states = task_states(dr)
    assert states[("publish_mapping", -1)] == "success"
    assert states[("check", -1)] == "failed"


def test_trait_filter_and_dry_run(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = {"shards_dir": str(copy_shards(tmp_path / "shards", TRAITS)), "output_dir": str(tmp_path / "out")}
    dr = run_dag("trait_lora_together", {**conf, "dry_run": True})
    assert str(dr.state) == "success"
    assert fake.calls == []  # a dry run makes no remote call at all
    assert not (tmp_path / "out" / "hypernetwork_data.json").exists()
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert {r["action"] for r in summary["traits"]} == {"would train"}

    dr = run_dag("trait_lora_together", {**conf, "traits": ["joy_minus"]})
    assert str(dr.state) == "success"
    assert fake.creates == 1
    assert list(json.loads((tmp_path / "out" / "hypernetwork_data.json").read_text())["traits"]) == [
        "joy_minus"
    ]


def test_a_failed_discover_leaves_one_red_task_and_publish_skipped(airflow_db, together_conn, tmp_path):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    conf = {"shards_dir": str(tmp_path / "no_such_dir"), "output_dir": str(tmp_path / "out")}
    dr = run_dag("trait_lora_together", conf)
    assert str(dr.state) == "failed"
    states = task_states(dr)
    assert states[("discover", -1)] == "failed"
    assert states[("publish_mapping", -1)] == "skipped"  # with a reason, not three FileNotFoundErrors
    assert states[("check", -1)] == "upstream_failed"  # so the run is failed, not green
    assert [t for (t, _), s in states.items() if s == "failed"] == ["discover"]
    with create_session() as session:
        publish = (
            session.query(TaskInstance)
            .filter(TaskInstance.run_id == dr.run_id, TaskInstance.task_id == "publish_mapping")
            .one()
        )
        assert publish.try_number == 1 and publish.max_tries == 0
    assert together_conn.calls == []
    assert not (tmp_path / "out" / "hypernetwork_data.json").exists()


def asset_events(run_id: str) -> list[tuple[str, dict]]:
    """(asset URI, extra) of every Asset event the run emitted."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetEvent.source_run_id == run_id)
            .all()
        )
        return [(uri, dict(extra or {})) for uri, extra in rows]


def test_the_asset_event_means_changed_and_names_the_file_the_run_wrote(airflow_db, together_conn, tmp_path):
    shards = str(copy_shards(tmp_path / "shards", ["joy_plus"]))
    conf = {"shards_dir": shards, "output_dir": str(tmp_path / "out")}
    first = run_dag("trait_lora_together", conf)
    mapping_file = (tmp_path / "out" / "hypernetwork_data.json").resolve()
    ((uri, extra),) = asset_events(first.run_id)
    assert uri == mapping_file.as_uri()
    assert extra["counts"] == {"trained": 1} and extra["total_price_usd"] > 0
    published = json.loads(mapping_file.read_text())
    from trait_lora.core.handoff.mapping import mapping_sha256

    assert extra["mapping_sha256"] == mapping_sha256(published)

    rerun = run_dag("trait_lora_together", conf)  # nothing changed: every trait skipped
    assert str(rerun.state) == "success"
    assert asset_events(rerun.run_id) == []

    other = {"shards_dir": shards, "output_dir": str(tmp_path / "elsewhere")}
    moved = run_dag("trait_lora_together", other)
    ((uri, _),) = asset_events(moved.run_id)
    assert uri == (tmp_path / "elsewhere" / "hypernetwork_data.json").resolve().as_uri()
