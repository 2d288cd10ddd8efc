"""trait_lora_local end to end through the CLI a user runs (`trait-lora train --backend local`): held-out
evaluation, the quality gate, lineage and experiment tracking, a bad shard, traits trained in groups
(one trait failing inside its group), and a rerun that skips.

Real training on the tiny offline Llama: the figures are whatever the trainer measured, so the tests
check where they go and what the gate does with them, not their values. One tracked CLI run (both poles
of one axis, a broken shard and one with nothing to learn, two traits per trainer process; OpenLineage's
file transport, a sqlite MLflow URI, held-out evaluation on) is shared by the tests below, each
checking what its user reads from a copy of what it left; the gate's run and the rerun that skips come
after it, untracked, as DAG runs in this process. A CLI run
starts Airflow, migrates a metadata DB and builds the model (~10 s before any training), so the tests
share one rather than start their own. The Together path is checked the same way in
test_together_on_s3.py.
"""

import json
import logging
import logging.handlers
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import tracking
from tests.support.airflow import REPO, copy_shards, run_dag
from trait_lora.core.shards.split import split_examples
from trait_lora.core.shards.validation import iter_examples

PAIR = ["joy_minus", "joy_plus"]
CONFIG = {"eval_fraction": 0.2, "batch_size": 8}  # the tracked run's --config: held-out evaluation on
CLI = Path(sys.executable).with_name("trait-lora")


def train(*args: str, tmp_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(extra_env or {})
    return subprocess.run(
        [
            str(CLI),
            "train",
            "--backend",
            "local",
            "--tiny-model",
            "--airflow-home",
            str(tmp_path / "af"),
            "--dags-folder",
            str(REPO / "dags"),
            "--shards-dir",
            str(tmp_path / "shards"),
            "--output-dir",
            str(tmp_path / "out"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first run, with lineage and MLflow on; what it left is copied aside before anything reruns."""
    work = tmp_path_factory.mktemp("tracked")
    shards = copy_shards(work / "shards", PAIR)
    (shards / "broken_minus.jsonl").write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    # valid, so it trains, in a group with joy_minus; its answer lies beyond max_seq_length (8192 tokens)
    turns = [{"role": "user", "content": "why " * 9000}, {"role": "assistant", "content": "because"}]
    (shards / "jo_minus.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    config = work / "config.json"
    config.write_text(json.dumps(CONFIG))
    done = train(
        "--all",
        "--traits-per-process",
        "2",
        "--config",
        str(config),
        tmp_path=work,
        extra_env=tracking.tracking_env(work),
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the broken shard failed
    out = work / "out"
    snapshot = work / "first-run"
    shutil.copytree(out, snapshot, ignore=shutil.ignore_patterns(".tiny-model*"))
    return {"work": work, "shards": shards, "out": out, "first": snapshot, "stdout": done.stdout}


def test_the_bad_shard_fails_alone_and_the_others_are_trained_and_published(tracked):
    first = tracked["first"]
    mapping = json.loads((first / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == PAIR
    assert mapping["backend"] == "local" and mapping["traits"]["joy_plus"]["job_id"] is None
    assert "broken_minus.jsonl:1:" in mapping["failed"]["broken_minus"]
    for trait, entry in mapping["traits"].items():
        assert entry["adapter_path"] == f"lora_checkpoints/{trait}"
        assert (first / entry["adapter_path"] / "adapter_model.safetensors").is_file(), trait
    rows = (line.split() for line in tracked["stdout"].splitlines())
    table = {row[0]: row[1] for row in rows if len(row) > 1}
    assert [table[t] for t in ["broken_minus", *PAIR]] == ["failed", "trained", "trained"]
    summary = json.loads((first / "run_summary.json").read_text())
    assert summary["loss_plot"] and Path(summary["loss_plot"]).read_bytes()[:4] == b"\x89PNG"
    last = tracked["stdout"].strip().splitlines()[-1]  # what the run did, in its last line
    assert last.endswith(": failed (2 failed, 2 trained, mapping written)"), last


def test_traits_train_in_groups_and_one_that_fails_there_fails_alone(tracked):
    """--traits-per-process 2: jo_minus and joy_minus share one trainer process (one load of the model);
    jo_minus has nothing to learn and fails with the trainer's reason, joy_minus is installed, and
    joy_plus (a group of one) trains in its own task as it always did. Each adapter is the one its trait
    gets alone (tests/train/test_group.py), so grouping changes no job key."""
    out = tracked["stdout"]
    assert "training 2 trait(s) in one process: jo_minus, joy_minus" in out
    assert out.count("group: loading") == 1  # broken_minus (invalid) joins no group; joy_plus trains alone
    mapping = json.loads((tracked["first"] / "hypernetwork_data.json").read_text())
    reason = mapping["failed"]["jo_minus"]
    assert "in a group" in reason and "has a token to learn from within 8192 tokens" in reason
    assert not list((tracked["first"] / ".staging-train").iterdir())  # records and staging consumed


def test_every_adapter_is_evaluated_on_held_out_examples(tracked):
    shards, first = tracked["shards"], tracked["first"]
    mapping = json.loads((first / "hypernetwork_data.json").read_text())
    summary = {r["trait"]: r for r in json.loads((first / "run_summary.json").read_text())["traits"]}
    for trait in PAIR:
        records = list(iter_examples(shards / f"{trait}.jsonl"))
        held = len(split_examples(records, 0.2).held_out)
        metrics = json.loads((first / "metrics" / f"{trait}.json").read_text())
        figures = metrics["eval"]
        assert figures["n_held_out"] == held > 0
        assert figures["improvement"] == figures["base_loss"] - figures["adapter_loss"]
        other = next(t for t in PAIR if t != trait)
        assert figures["opposite_trait"] == other and figures["n_opposite_held_out"] > 0
        assert isinstance(figures["prefers_own_pole"], bool)
        assert mapping["traits"][trait]["eval"] == figures  # the mapping carries the same figures
        assert summary[trait]["eval"] == figures
    assert mapping["version"] == 2
    assert "->" in tracked["stdout"]  # the summary table prints base -> adapter held-out loss


def test_the_gate_keeps_the_old_adapter_and_a_plain_rerun_then_skips(tracked, airflow_db):
    """An improvement nobody can reach refuses the new adapter and the old one stays published; a rerun
    without force_retrain then finds the shard unchanged and its published adapter verified, and ends
    without a warning. Both runs are the same DAG in this process (the CLI's part was checked on the
    first run), untracked."""
    work, out = tracked["work"], tracked["out"]
    mapping = json.loads((tracked["first"] / "hypernetwork_data.json").read_text())
    before = {t: e["adapter_sha256"] for t, e in mapping["traits"].items()}
    conf = {
        "traits": ["joy_plus"],
        "shards_dir": str(work / "shards"),
        "output_dir": str(out),
        "base_model": str(out / ".tiny-model"),
        **CONFIG,
    }
    gated = run_dag("trait_lora_local", {**conf, "force_retrain": True, "min_eval_improvement": 100.0})
    assert str(gated.state) == "failed"
    after = json.loads((out / "hypernetwork_data.json").read_text())
    assert {t: e["adapter_sha256"] for t, e in after["traits"].items()} == before
    reason = after["failed"]["joy_plus"]
    assert "adapter not installed" in reason and "min_eval_improvement 100.0" in reason
    assert "held-out loss" in reason and "base" in reason  # the figures, so the user sees how far off

    log = logging.handlers.BufferingHandler(capacity=100_000)  # caplog's handler: gone with Airflow's setup
    logging.getLogger().addHandler(log)
    try:
        assert str(run_dag("trait_lora_local", conf).state) == "success"
    finally:
        logging.getLogger().removeHandler(log)
    said = [(r.levelno, r.getMessage()) for r in log.buffer]
    assert any(m.startswith("mapping unchanged") for _, m in said), said
    # dag.test()'s "No tasks to run. unrunnable tasks: ..." read as a failure on every all-skip rerun
    assert not [m for level, m in said if level >= logging.WARNING]
    rows = json.loads((out / "run_summary.json").read_text())["traits"]
    assert [(r["trait"], r["action"]) for r in rows] == [("joy_plus", "skipped")]
    now = json.loads((out / "hypernetwork_data.json").read_text())["traits"]
    assert {t: e["adapter_sha256"] for t, e in now.items()} == before


def test_local_training_leaves_lineage_and_one_mlflow_run_per_trait(tracked):
    """The OpenLineage/MLflow acceptance: events link every shard to its adapter and the adapters to
    the mapping; MLflow has one parent run and one child per trait with its params, loss curve and eval."""
    tmp_path, shards, out, first = tracked["work"], tracked["shards"], tracked["out"], tracked["first"]
    mapping = json.loads((first / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == PAIR

    events = tracking.lineage_events(tmp_path / "lineage.jsonl")
    graph = tracking.edges(events)
    trained = {tracking.facet(e)["trait"]: e for e in tracking.completed(events, "train")}
    published = tracking.completed(events, "publish_mapping")
    mapping_id = ("file", str((out / "hypernetwork_data.json").resolve()))
    for trait, entry in mapping["traits"].items():
        shard = ("file", str((shards / f"{trait}.jsonl").resolve()))
        adapter = ("file", str((out / entry["adapter_path"]).resolve()))
        # the train task read exactly its own shard and wrote exactly its adapter
        assert tracking.ids(trained[trait]["inputs"]) == [shard]
        assert tracking.ids(trained[trait]["outputs"]) == [adapter]
        assert tracking.reaches(graph, shard, mapping_id), f"{trait}: shard not linked to the mapping"
        fields = tracking.facet(trained[trait])
        assert fields["adapter_sha256"] == entry["adapter_sha256"] and fields["backend"] == "local"
        assert fields["eval"]["adapter_loss"] == entry["eval"]["adapter_loss"]
    # publish_mapping: every adapter in, the mapping out, and nothing of the training tasks' datasets
    assert len(published) == 1 and tracking.ids(published[0]["outputs"]) == [mapping_id]
    assert len(published[0]["inputs"]) == len(PAIR)
    assert all(
        ns == "file" and "/lora_checkpoints/" in name for ns, name in tracking.ids(published[0]["inputs"])
    )
    assert tracking.facet(published[0])["traits"] == PAIR

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracking.mlflow_runs(uri, "trait_lora_local")
    parent = [r for r in runs if r.data.tags.get("trait_lora.role") == "dag_run"]
    children = {r.data.tags["trait"]: r for r in runs if r.data.tags.get("trait")}
    assert len(parent) == 1 and parent[0].data.tags["airflow_run_id"] in tracked["stdout"]
    assert sorted(children) == PAIR
    for trait, run in children.items():
        entry = mapping["traits"][trait]
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert (run.data.tags["backend"], run.data.tags["adapter_sha256"]) == (
            "local",
            entry["adapter_sha256"],
        )
        assert run.data.params["lora_alpha"] == "16" and run.data.params["n_epochs"] == "1"
        assert run.data.metrics["eval_base_loss"] == entry["eval"]["base_loss"]
        assert run.data.metrics["eval_adapter_loss"] == entry["eval"]["adapter_loss"]
        assert "eval_own_pole_margin" in run.data.metrics
        steps = json.loads((first / "metrics" / f"{trait}.json").read_text())["steps"]
        assert tracking.loss_history(uri, run.info.run_id) == [(s["step"], s["loss"]) for s in steps]


def test_the_gate_without_held_out_figures_says_what_to_change():
    from trait_lora.local.backend import LocalTrainingError, check_quality_gate

    check_quality_gate("joy_plus", None, None)  # no gate: nothing to check
    with pytest.raises(LocalTrainingError) as info:
        check_quality_gate("joy_plus", None, 0.01)
    assert info.value.exit_code == 2  # not retried: the same data would give the same answer
    assert "no held-out figures" in str(info.value) and "eval_fraction" in str(info.value)
    figures = {"base_loss": 2.0, "adapter_loss": 1.995, "improvement": 0.005}
    with pytest.raises(LocalTrainingError, match=r"improvement 0.0050 < min_eval_improvement 0.01"):
        check_quality_gate("joy_plus", figures, 0.01)
    check_quality_gate("joy_plus", {**figures, "adapter_loss": 1.9, "improvement": 0.1}, 0.01)


def test_the_local_dag_trains_from_and_to_a_bucket(
    airflow_db, s3_server, s3_bucket, s3_conn, tmp_path, monkeypatch
):
    """trait_lora_local with both locations and the base model on S3: the shard copied to this worker,
    the adapter trained in scratch and installed at its content-addressed key, the mapping in the bucket; the
    held-out evaluation scores the opposite pole as it does on a local folder (own_pole_margin)."""
    from trait_lora.core.storage.records import as_store
    from trait_lora.train.tiny_model import build_tiny_model

    shards = copy_shards(tmp_path / "shards", ["joy_plus", "joy_minus"])
    model = build_tiny_model(shards, tmp_path / "model")
    client = s3_server.client()
    for path in shards.iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    for path in model.iterdir():  # the base model is a folder in the bucket too, copied once per worker
        client.put_object(Bucket=s3_bucket, Key=f"models/tiny/{path.name}", Body=path.read_bytes())
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([f"s3://{s3_bucket}", str(tmp_path)]))
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
    out = f"s3://{s3_bucket}/stage2"
    conf = {
        "shards_dir": f"s3://{s3_bucket}/shards",
        "output_dir": out,
        "base_model": f"s3://{s3_bucket}/models/tiny",
        "traits": ["joy_plus"],
        "eval_fraction": 0.2,
    }
    dr = run_dag("trait_lora_local", conf)
    assert str(dr.state) == "success"
    store = as_store(out)
    mapping = store.read("hypernetwork_data.json").json()
    entry = mapping["traits"]["joy_plus"]
    assert entry["backend"] == "local" and entry["adapter_url"] == f"{out}/{entry['adapter_path']}"
    assert (entry["base_model"], entry["base_model_source"]) == (f"s3://{s3_bucket}/models/tiny", "s3")
    assert entry["base_model_revision"].startswith("sha256:")  # a digest of the objects' ETags
    assert store.read(f"{entry['adapter_path']}/adapter_model.safetensors") is not None
    metrics = store.read("metrics/joy_plus.json").json()
    assert metrics["steps"] and metrics["eval"]["opposite_trait"] == "joy_minus"
    assert isinstance(metrics["eval"]["own_pole_margin"], float)
    assert not [k for k in store.list("") if ".staging-train" in k]


def test_on_a_bucket_a_group_installs_for_traits_whose_tasks_run_on_another_worker(
    airflow_db, s3_server, s3_bucket, s3_conn, tmp_path, monkeypatch
):
    """Celery, two traits in one group, outputs in a bucket: the group trains in its worker's scratch
    folder; each trait's own task then runs on another worker (another temp folder, nothing of the
    group's scratch) and must take what the group installed, not train the trait again."""
    import tempfile

    from trait_lora.core.handoff import runs
    from trait_lora.core.storage.records import as_store
    from trait_lora.local import backend
    from trait_lora.provider import grouped
    from trait_lora.train.tiny_model import build_tiny_model

    shards = copy_shards(tmp_path / "shards", ["joy_plus", "joy_minus"])
    model = build_tiny_model(shards, tmp_path / "model")
    client = s3_server.client()
    for path in shards.iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([f"s3://{s3_bucket}", str(tmp_path)]))
    group_worker, other_worker = tmp_path / "worker-a-tmp", tmp_path / "worker-b-tmp"
    group_worker.mkdir()
    other_worker.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(group_worker))
    real_group = grouped.train_group

    def group_then_move(*args: Any, **kwargs: Any) -> Any:
        done = real_group(*args, **kwargs)
        monkeypatch.setattr(tempfile, "tempdir", str(other_worker))  # the traits' tasks: worker B
        return done

    def trained_alone(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a trait its group trained was trained again by its own task")

    monkeypatch.setattr(grouped, "train_group", group_then_move)
    monkeypatch.setattr(backend, "train_trait", trained_alone)
    out = f"s3://{s3_bucket}/stage2"
    conf = {
        "shards_dir": f"s3://{s3_bucket}/shards",
        "output_dir": out,
        "base_model": str(model),
        "traits_per_process": 2,
    }
    dr = run_dag("trait_lora_local", conf)
    assert str(dr.state) == "success"
    mapping = as_store(out).read("hypernetwork_data.json").json()
    assert sorted(mapping["traits"]) == ["joy_minus", "joy_plus"] and not mapping.get("failed")
    installs = runs.read_group_installs(out, dr.run_id)
    for trait, entry in mapping["traits"].items():
        assert installs[trait]["result"]["adapter_sha256"] == entry["adapter_sha256"]
    assert not list(other_worker.rglob("*.safetensors"))  # worker B never held an adapter
