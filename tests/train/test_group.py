"""A group of traits in one trainer process: each adapter is the one its trait gets alone.

Through the trainer's own argv (``--group MANIFEST``, its CLI's main() in this process) on the tiny
model: two traits trained alone, then the same two in one group with a trait that has nothing to learn
between them and a broken shard, which fail alone, each with its record. The SmolLM2 variant of the
equality is in test_smollm2.py (it shares that file's one conversion).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.train.helpers import config_json, group_manifest, last_json_line, max_abs_diff, train_here

STEPS = ("--max-steps", "2", "--max-length", "64")


def record(tmp_path: Path, trait: str) -> dict[str, Any]:
    return json.loads((tmp_path / "group" / f"{trait}.result.json").read_text())


def test_a_group_trains_each_adapter_as_alone_and_a_failing_trait_fails_alone(
    tiny_model: Path, shards_dir: Path, tmp_path: Path
) -> None:
    config = config_json(tiny_model, lora_dropout=0.0, eval_fraction=0.2)
    alone = {}
    for trait in ("calm_plus", "wisdom_plus"):
        done = train_here(
            "--shard",
            shards_dir / f"{trait}.jsonl",
            "--out",
            tmp_path / trait,
            "--config-json",
            config,
            *STEPS,
        )
        assert done.returncode == 0, done.stderr
        alone[trait] = last_json_line(done.stdout)
    long_shard = tmp_path / "long_minus.jsonl"  # valid, but every answer lies beyond --max-length
    turns = [{"role": "user", "content": "why " * 200}, {"role": "assistant", "content": "because"}]
    long_shard.write_text(json.dumps({"messages": turns}) + "\n")
    broken = tmp_path / "broken_plus.jsonl"
    broken.write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    members = {
        "calm_plus": shards_dir / "calm_plus.jsonl",
        "long_minus": long_shard,
        "broken_plus": broken,
        "wisdom_plus": shards_dir / "wisdom_plus.jsonl",
    }
    done = train_here("--group", group_manifest(tmp_path, config, members), *STEPS)

    assert done.returncode == 0, done.stderr  # every trait has its record
    line = last_json_line(done.stdout)
    assert (line["trained"], line["failed"]) == (2, 2)
    assert line["peak_memory_bytes"] > 0 and done.stderr.count("group: loading") == 1
    for trait in ("calm_plus", "wisdom_plus"):
        got = record(tmp_path, trait)
        assert (got["status"], got["exit_code"], got["run_id"]) == ("trained", 0, "manual__1")
        assert max_abs_diff(tmp_path / trait, tmp_path / "group" / trait) <= 1e-4
        assert got["result"]["eval"] == alone[trait]["eval"]  # base losses cached, the same figures
        assert got["result"]["final_loss"] == alone[trait]["final_loss"]
    nothing = record(tmp_path, "long_minus")
    assert (nothing["status"], nothing["exit_code"]) == ("failed", 2)
    assert "has a token to learn from within 64 tokens" in nothing["error"]
    bad = record(tmp_path, "broken_plus")
    assert bad["exit_code"] == 2 and f"{broken}:1:" in bad["error"]
    assert (
        not (tmp_path / "group" / "long_minus").exists() and not (tmp_path / "group" / "broken_plus").exists()
    )


def test_the_shared_base_is_left_as_loaded(tiny_model: Path, shards_dir: Path, tmp_path: Path) -> None:
    from trait_lora.core.config import from_mapping
    from trait_lora.train import trainer

    config = from_mapping(json.loads(config_json(tiny_model, lora_dropout=0.0)))
    base = trainer.load_base(config, device="cpu")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    trainer.train_adapter(shards_dir / "calm_minus.jsonl", tmp_path / "a", config, max_steps=1, base=base)
    after = base.model.state_dict()
    assert sorted(after) == sorted(before)  # no LoRA module left behind
    assert all(bool((after[k] == v).all()) for k, v in before.items())


def test_a_manifest_it_cannot_use_is_refused_before_any_training(tmp_path: Path) -> None:
    manifest = tmp_path / "group.json"
    manifest.write_text(json.dumps({"config": {"backend": "local"}, "members": [{"trait": "joy_plus"}]}))
    done = train_here("--group", manifest)
    assert done.returncode == 2
    assert "members[0] needs 'trait', 'shard' and 'out'" in done.stderr and str(manifest) in done.stderr
