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


def _stop_at(monkeypatch: Any, owner: Any, name: str, call: int, *, before: bool = False) -> None:
    """The process is interrupted (a killed pod's trainer gets SIGTERM) at the ``call``-th call of
    ``owner.name``, before it runs or right after it returned: what was written by then is all a
    replacement finds."""
    real, seen = getattr(owner, name), []

    def then_stop(*args: Any, **kwargs: Any) -> Any:
        seen.append(1)
        if len(seen) == call and before:
            raise KeyboardInterrupt
        value = real(*args, **kwargs)
        if len(seen) == call:
            raise KeyboardInterrupt
        return value

    monkeypatch.setattr(owner, name, then_stop)


def test_a_replacement_process_of_the_run_trains_only_what_the_first_did_not(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A group pod stopped after its first trait's record (evicted, deleted): the replacement, same run,
    leaves that adapter as it is, trains the second, and reports both trained."""
    from trait_lora.train import trainer

    config = config_json(tiny_model, lora_dropout=0.0)
    members = {"calm_plus": shards_dir / "calm_plus.jsonl", "wisdom_plus": shards_dir / "wisdom_plus.jsonl"}
    manifest = group_manifest(tmp_path, config, members)
    _stop_at(monkeypatch, trainer, "train_adapter", 2, before=True)  # calm_plus trained and recorded
    stopped = train_here("--group", manifest, *STEPS)
    assert stopped.returncode == 130, stopped.stderr
    first = (tmp_path / "group" / "calm_plus" / "adapter_model.safetensors").read_bytes()
    assert record(tmp_path, "calm_plus")["status"] == "trained"
    assert not (tmp_path / "group" / "wisdom_plus.result.json").exists()

    again = train_here("--group", manifest, *STEPS)
    assert again.returncode == 0, again.stderr
    assert "calm_plus was trained by this run's earlier process; not again" in again.stderr
    assert "group: [1/1] wisdom_plus" in again.stderr  # the only one it trains
    line = last_json_line(again.stdout)
    assert (line["trained"], line["failed"]) == (2, 0)
    assert (tmp_path / "group" / "calm_plus" / "adapter_model.safetensors").read_bytes() == first
    assert record(tmp_path, "wisdom_plus")["status"] == "trained"

    manifest.write_text(manifest.read_text().replace("manual__1", "manual__2"))  # another run
    third = train_here("--group", manifest, *STEPS)
    assert third.returncode == 0 and "not again" not in third.stderr  # trains both again


def test_a_group_on_object_storage_resumes_its_trait_from_the_checkpoint_in_the_bucket(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, s3_server: Any, s3_bucket: str, monkeypatch: Any
) -> None:
    """No volume: the first trait's adapter and record are in the bucket, the second trait's checkpoint
    too when the pod stops; the replacement (an empty scratch) skips the first and resumes the second."""
    from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY
    from trait_lora.train import objects

    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}
    for name, value in {**env, "AWS_ENDPOINT_URL_S3": s3_server.endpoint}.items():
        monkeypatch.setenv(name, value)
    client = s3_server.client()
    for trait in ("calm_plus", "wisdom_plus"):
        client.put_object(
            Bucket=s3_bucket, Key=f"shards/{trait}.jsonl", Body=(shards_dir / f"{trait}.jsonl").read_bytes()
        )
    manifest = tmp_path / "group.json"
    manifest.write_text(
        json.dumps(
            {
                "config": json.loads(config_json(tiny_model, lora_dropout=0.0, eval_fraction=0.0)),
                "run_id": "manual__1",
                "members": [
                    {
                        "trait": t,
                        "shard": f"s3://{s3_bucket}/shards/{t}.jsonl",
                        "out": f"s3://{s3_bucket}/st/{t}",
                    }
                    for t in ("calm_plus", "wisdom_plus")
                ],
            }
        )
    )
    argv = ("--group", manifest, "--max-steps", "4", "--max-length", "64", "--checkpoint-every", "2")
    _stop_at(monkeypatch, objects.RemoteCheckpoint, "upload", 2)  # calm: step 2 (4 is its last); wisdom: 2
    assert train_here(*argv).returncode == 130
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {"st/calm_plus.result.json", "st/wisdom_plus.checkpoint/checkpoint.pt"} <= keys
    assert "st/calm_plus.checkpoint/checkpoint.pt" not in keys  # gone once its adapter was up

    again = train_here(*argv)
    assert again.returncode == 0, again.stderr
    assert "calm_plus was trained by this run's earlier process; not again" in again.stderr
    assert "resuming from the checkpoint after step 2/4" in again.stderr
    assert last_json_line(again.stdout)["trained"] == 2
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "st/wisdom_plus/adapter_model.safetensors" in keys and "st/wisdom_plus.result.json" in keys
    assert not any(".checkpoint/" in key for key in keys)
