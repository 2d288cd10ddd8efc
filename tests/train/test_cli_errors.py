"""Exit codes for failures that are expensive or impossible to cause for real on a test machine (OOM).

``train_adapter`` is replaced, so the model is never loaded: any existing directory passes the CLI's
early check that a model path is a directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.helpers import config_json
from trait_lora.train import EXIT_FAILED, EXIT_MODEL, EXIT_OOM, cli


@pytest.mark.parametrize(
    "error",
    [
        "torch-oom",
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ],
)
def test_out_of_memory_exits_4_and_suggests_a_smaller_micro_batch(
    error: object,
    shards_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    from trait_lora.train import trainer

    exc = torch.OutOfMemoryError("CUDA out of memory.") if error == "torch-oom" else error

    def boom(*args: object, **kwargs: object) -> None:
        raise exc  # type: ignore[misc]

    monkeypatch.setattr(trainer, "train_adapter", boom)
    code = cli.main(
        ["--shard", str(shards_dir / "wisdom_plus.jsonl"), "--out", str(tmp_path / "out"),
         "--config-json", config_json(tmp_path)]
    )
    captured = capsys.readouterr()
    assert code == EXIT_OOM
    assert "--micro-batch" in captured.err
    assert captured.out == ""


def test_other_runtime_errors_are_not_reported_as_oom(
    shards_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trait_lora.train import trainer

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(trainer, "train_adapter", boom)
    argv = ["trait_lora.train", "--shard", str(shards_dir / "wisdom_plus.jsonl"),
            "--out", str(tmp_path / "out"), "--config-json", config_json(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == EXIT_FAILED


def test_a_model_path_that_is_no_directory_exits_3_at_once_but_a_hub_id_is_left_to_the_trainer(
    shards_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trait_lora.train import ModelLoadError, trainer

    asked: list[str] = []

    def not_cached(shard: Path, out: Path, config: object, **kwargs: object) -> None:
        asked.append(config.local_model)  # type: ignore[attr-defined]
        raise ModelLoadError("not in this machine's Hugging Face cache")

    monkeypatch.setattr(trainer, "train_adapter", not_cached)
    monkeypatch.chdir(tmp_path)
    Path("weights.safetensors").write_bytes(b"")  # a relative path to a file, not a model directory
    for model in ("weights.safetensors", "org/not-cached-model"):
        argv = ["--shard", str(shards_dir / "wisdom_plus.jsonl"), "--out", str(tmp_path / "out")]
        assert cli.main([*argv, "--config-json", config_json(model)]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert "'weights.safetensors' is not a directory" in err and "never downloads" in err
    assert asked == ["org/not-cached-model"]  # only the hub id got as far as loading
