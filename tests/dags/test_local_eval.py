"""Held-out evaluation, the quality gate, lineage and experiment tracking, through the CLI a user runs
(`trait-lora train --backend local --all`).

Real training on the tiny offline Llama: the figures are whatever the trainer measured, so the tests
check where they go and what the gate does with them, not their values. One tracked run of both poles
of one axis (OpenLineage's file transport, a sqlite MLflow URI, held-out evaluation on) is shared by the
evaluation test and the lineage/MLflow acceptance test, each checking what its user reads; the gate's
run comes after, untracked. The Together path is checked the same way in test_together_on_s3.py.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.dags.test_local_dag import train
from tests.support import tracking
from tests.support.airflow import copy_shards
from trait_lora.core.shards.split import split_examples
from trait_lora.core.shards.validation import iter_examples

PAIR = ["joy_minus", "joy_plus"]


def write_config(tmp_path: Path, **values) -> str:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(json.dumps(values))
    return str(path)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first run, with lineage and MLflow on; what it left is copied aside before anything reruns."""
    work = tmp_path_factory.mktemp("tracked")
    shards = copy_shards(work / "shards", PAIR)
    config = write_config(work, eval_fraction=0.2, batch_size=8)
    done = train("--all", "--config", config, tmp_path=work, extra_env=tracking.tracking_env(work))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = work / "out"
    snapshot = work / "first-run"
    shutil.copytree(out, snapshot, ignore=shutil.ignore_patterns("lora_checkpoints", ".tiny-model*"))
    return {"work": work, "shards": shards, "out": out, "first": snapshot, "stdout": done.stdout}


def test_every_adapter_is_evaluated_on_held_out_examples_and_the_gate_keeps_the_old_one(tracked):
    shards, out, first = tracked["shards"], tracked["out"], tracked["first"]
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

    # The gate: an improvement nobody can reach refuses the new adapter; the old one stays published.
    work = tracked["work"]
    before = {t: e["adapter_sha256"] for t, e in mapping["traits"].items()}
    gated = write_config(work, eval_fraction=0.2, batch_size=8, min_eval_improvement=100.0)
    second = train("--force-retrain", "joy_plus", "--config", gated, tmp_path=work)
    assert second.returncode == 1, second.stderr[-3000:]
    after = json.loads((out / "hypernetwork_data.json").read_text())
    assert {t: e["adapter_sha256"] for t, e in after["traits"].items()} == before
    reason = after["failed"]["joy_plus"]
    assert "adapter not installed" in reason and "min_eval_improvement 100.0" in reason
    assert "held-out loss" in reason and "base" in reason  # the figures, so the user sees how far off


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
    import pytest

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
