"""Checkpoints: a run interrupted after one resumes from it, with the same --out, to the same adapter.

The interruption is a ``KeyboardInterrupt`` raised right after a checkpoint is written (the signal a
killed task's trainer gets), in this process: the rerun is a fresh call of the CLI's ``main``. Dropout
is on, so the resumed run only matches if the RNG state came back with the weights and the optimizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.train.helpers import config_json, last_json_line, train_here

pytestmark = pytest.mark.slow

WEIGHTS = "adapter_model.safetensors"


def _argv(model: Path, shards: Path, out: Path | str, **config: Any) -> list[Any]:
    """12 short texts, batch 4, 2 epochs: 6 steps, a checkpoint after steps 2 and 4 (both mid-epoch)."""
    settings = {"n_epochs": 2, "lora_dropout": 0.1, **config}
    return [
        "--shard", shards / "calm_minus.jsonl", "--out", out,
        "--config-json", config_json(model, **settings), "--checkpoint-every", "2", "--seed", "3",
    ]  # fmt: skip


@pytest.fixture
def interrupt_after_checkpoint(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``interrupt_after_checkpoint(owner, name)``: the run stops right after ``owner.name`` returns."""

    def install(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def then_stop(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)
            monkeypatch.setattr(owner, name, real)
            raise KeyboardInterrupt

        monkeypatch.setattr(owner, name, then_stop)

    return install


@pytest.fixture(scope="module")
def uninterrupted(tiny_model: Path, shards_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "calm_minus"
    done = train_here(*_argv(tiny_model, shards_dir, out))
    assert done.returncode == 0, done.stderr
    assert not out.with_name("calm_minus.checkpoint").exists(), "removed once the adapter is published"
    return out


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_adapter(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, uninterrupted: Path, interrupt_after_checkpoint: Any
) -> None:
    from trait_lora.train import checkpoint

    out = tmp_path / "calm_minus"
    interrupt_after_checkpoint(checkpoint, "save")
    stopped = train_here(*_argv(tiny_model, shards_dir, out))
    assert stopped.returncode == 130 and "resumes from the last checkpoint" in stopped.stderr
    assert not out.exists() and (tmp_path / "calm_minus.checkpoint" / "checkpoint.pt").is_file()

    resumed = train_here(*_argv(tiny_model, shards_dir, out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint after step 2/6" in resumed.stderr
    assert "step 2/6 loss" not in resumed.stderr, "steps 1 and 2 are not redone"
    assert (out / WEIGHTS).read_bytes() == (uninterrupted / WEIGHTS).read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and [s["step"] for s in metrics["steps"]] == list(range(1, 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calm_minus"], "checkpoint and staging gone"


def test_a_checkpoint_of_another_config_is_not_resumed(
    tiny_model: Path, shards_dir: Path, tmp_path: Path, uninterrupted: Path, interrupt_after_checkpoint: Any
) -> None:
    from trait_lora.train import checkpoint

    out = tmp_path / "calm_minus"
    interrupt_after_checkpoint(checkpoint, "save")
    assert train_here(*_argv(tiny_model, shards_dir, out, learning_rate=1e-3)).returncode == 130
    done = train_here(*_argv(tiny_model, shards_dir, out))
    assert done.returncode == 0, done.stderr
    assert "is from another run" in done.stderr and "resuming" not in done.stderr
    assert (out / WEIGHTS).read_bytes() == (uninterrupted / WEIGHTS).read_bytes()


def test_a_pod_without_a_volume_keeps_its_checkpoint_in_the_bucket(
    tiny_model: Path,
    shards_dir: Path,
    uninterrupted: Path,
    s3_server: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    interrupt_after_checkpoint: Any,
) -> None:
    from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY
    from trait_lora.train import objects

    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}
    for name, value in {**env, "AWS_ENDPOINT_URL_S3": s3_server.endpoint}.items():
        monkeypatch.setenv(name, value)
    client = s3_server.client()
    out = f"s3://{s3_bucket}/stage/calm_minus"
    interrupt_after_checkpoint(objects.RemoteCheckpoint, "upload")
    assert train_here(*_argv(tiny_model, shards_dir, out)).returncode == 130
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["stage/calm_minus.checkpoint/checkpoint.pt"]

    done = train_here(*_argv(tiny_model, shards_dir, out))  # a new pod: an empty scratch folder
    assert done.returncode == 0, done.stderr
    assert "resuming from the checkpoint after step 2/6" in done.stderr
    assert last_json_line(done.stdout)["adapter_dir"] == out
    blob = client.get_object(Bucket=s3_bucket, Key=f"stage/calm_minus/{WEIGHTS}")["Body"].read()
    assert blob == (uninterrupted / WEIGHTS).read_bytes()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert not any(".checkpoint/" in key for key in keys), "the checkpoint goes once the adapter is up"
