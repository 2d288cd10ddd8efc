"""The issue's acceptance, as a user runs it: `trait-lora train --backend local --all --tiny-model` with
OpenLineage's file transport and a sqlite MLflow URI leaves events linking every shard to its adapter
and the adapters to the mapping, and one MLflow run per trait with its params, loss curve and eval.

Two shards of one axis (both poles) keep it to one short training each; the Together path is checked
the same way in test_together_on_s3.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import tracking
from tests.support.airflow import REPO, SAMPLE_SHARDS

TRAITS = ["joy_minus", "joy_plus"]


def test_local_training_leaves_lineage_and_one_mlflow_run_per_trait(tmp_path):
    shards, out = tmp_path / "shards", tmp_path / "out"
    shards.mkdir()
    for trait in TRAITS:
        shutil.copy(SAMPLE_SHARDS / f"{trait}.jsonl", shards)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(tracking.tracking_env(tmp_path))
    argv = [
        str(Path(sys.executable).with_name("trait-lora")),
        "train",
        "--backend",
        "local",
        "--all",
        "--tiny-model",
        "--airflow-home",
        str(tmp_path / "af"),
        "--dags-folder",
        str(REPO / "dags"),
        "--shards-dir",
        str(shards),
        "--output-dir",
        str(out),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    mapping = json.loads((out / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == TRAITS

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
    assert len(published[0]["inputs"]) == len(TRAITS)
    assert all(
        ns == "file" and "/lora_checkpoints/" in name for ns, name in tracking.ids(published[0]["inputs"])
    )
    assert tracking.facet(published[0])["traits"] == TRAITS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracking.mlflow_runs(uri, "trait_lora_local")
    parent = [r for r in runs if r.data.tags.get("trait_lora.role") == "dag_run"]
    children = {r.data.tags["trait"]: r for r in runs if r.data.tags.get("trait")}
    assert len(parent) == 1 and parent[0].data.tags["airflow_run_id"] in done.stdout
    assert sorted(children) == TRAITS
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
        steps = json.loads((out / "metrics" / f"{trait}.json").read_text())["steps"]
        assert tracking.loss_history(uri, run.info.run_id) == [(s["step"], s["loss"]) for s in steps]
