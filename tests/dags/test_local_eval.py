"""Held-out evaluation and the quality gate, through the CLI a user runs (`trait-lora train --backend local`).

Real training on the tiny offline Llama: the figures are whatever the trainer measured, so the tests
check where they go and what the gate does with them, not their values.
"""

import json
from pathlib import Path

from tests.dags.test_local_dag import train
from tests.support.airflow import copy_shards
from trait_lora.core.shards.split import split_examples
from trait_lora.core.shards.validation import iter_examples

PAIR = ["joy_minus", "joy_plus"]


def write_config(tmp_path: Path, **values) -> str:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_every_adapter_is_evaluated_on_held_out_examples_and_the_gate_keeps_the_old_one(tmp_path):
    shards = copy_shards(tmp_path / "shards", PAIR)
    out = tmp_path / "out"
    config = write_config(tmp_path, eval_fraction=0.2, batch_size=8)
    first = train("--config", config, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    mapping = json.loads((out / "hypernetwork_data.json").read_text())
    summary = {r["trait"]: r for r in json.loads((out / "run_summary.json").read_text())["traits"]}
    for trait in PAIR:
        records = list(iter_examples(shards / f"{trait}.jsonl"))
        held = len(split_examples(records, 0.2).held_out)
        metrics = json.loads((out / "metrics" / f"{trait}.json").read_text())
        figures = metrics["eval"]
        assert figures["n_held_out"] == held > 0
        assert figures["improvement"] == figures["base_loss"] - figures["adapter_loss"]
        other = next(t for t in PAIR if t != trait)
        assert figures["opposite_trait"] == other and figures["n_opposite_held_out"] > 0
        assert isinstance(figures["prefers_own_pole"], bool)
        assert mapping["traits"][trait]["eval"] == figures  # the mapping carries the same figures
        assert summary[trait]["eval"] == figures
    assert mapping["version"] == 2
    assert "->" in first.stdout  # the summary table prints base -> adapter held-out loss

    # The gate: an improvement nobody can reach refuses the new adapter; the old one stays published.
    before = {t: e["adapter_sha256"] for t, e in mapping["traits"].items()}
    gated = write_config(tmp_path, eval_fraction=0.2, batch_size=8, min_eval_improvement=100.0)
    second = train("--force-retrain", "joy_plus", "--config", gated, tmp_path=tmp_path)
    assert second.returncode == 1, second.stderr[-3000:]
    after = json.loads((out / "hypernetwork_data.json").read_text())
    assert {t: e["adapter_sha256"] for t, e in after["traits"].items()} == before
    reason = after["failed"]["joy_plus"]
    assert "adapter not installed" in reason and "min_eval_improvement 100.0" in reason
    assert "held-out loss" in reason and "base" in reason  # the figures, so the user sees how far off


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
