"""Exit codes for failures that are expensive or impossible to cause for real on a test machine (OOM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.helpers import config_json
from trait_lora.train import EXIT_FAILED, EXIT_OOM, cli


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
         "--config-json", config_json("/nowhere")]
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
            "--out", str(tmp_path / "out"), "--config-json", config_json("/nowhere")]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == EXIT_FAILED
