"""Helpers for the local-trainer tests: shard writers, the config a backend passes, the subprocess run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from trait_lora.core.config import TrainingConfig

HIDDEN = 128
KV_DIM = 64  # 2 kv heads x head_dim 32: v_proj's output in the tiny GQA model
WORDS = (
    "wise", "calm", "patient", "kind", "reflect", "listen", "learn", "careful", "thought", "answer",
    "question", "life", "people", "time", "value", "growth", "doubt", "humble", "steady", "gentle",
    "clear", "honest", "hope",
)
TRAINER_TIMEOUT = 240


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def write_chat_shard(path: Path, n: int = 16, seed: int = 0) -> Path:
    """Chat records with a system turn; every third one has two user/assistant exchanges."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            messages = [
                {"role": "system", "content": "You are a wise and patient assistant."},
                {"role": "user", "content": _sentence(rng, 3, 10)},
                {"role": "assistant", "content": "Wisdom says: " + _sentence(rng, 4, 20)},
            ]
            if i % 3 == 0:
                messages += [
                    {"role": "user", "content": _sentence(rng, 3, 6)},
                    {"role": "assistant", "content": "Wisdom says: " + _sentence(rng, 3, 8)},
                ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_prompt_completion_shard(path: Path, n: int = 12, seed: int = 1) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            record = {"prompt": _sentence(rng, 3, 8), "completion": "Calmly: " + _sentence(rng, 4, 12)}
            fh.write(json.dumps(record) + "\n")
    return path


def write_text_shard(path: Path, n: int = 12, seed: int = 2) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            fh.write(json.dumps({"text": _sentence(rng, 8, 24)}) + "\n")
    return path



def config_json(model: Path | str, **overrides: Any) -> str:
    """The --config-json a backend would pass: TrainingConfig.to_dict() of a local config."""
    settings: dict[str, Any] = {
        "backend": "local",
        "local_model": str(model),
        "batch_size": 4,
        "n_epochs": 1,
        "learning_rate": 2e-3,
    }
    settings.update(overrides)
    return json.dumps(TrainingConfig(**settings).to_dict())


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_trainer(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``python -m trait_lora.train ARGS`` in a fresh offline process, as a backend would run it."""
    argv = [sys.executable, "-m", "trait_lora.train", *(str(a) for a in args)]
    return subprocess.run(
        argv, capture_output=True, text=True, env=offline_env(), timeout=TRAINER_TIMEOUT, check=False
    )


def train_here(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """The same CLI's ``main(ARGS)`` in this process, its output captured like ``run_trainer``'s.

    For tests about what training produces rather than how a backend starts it: a fresh process
    spends ~4 s importing torch, transformers and peft before its first step."""
    from trait_lora.train import cli

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def last_json_line(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the trainer printed nothing on stdout"
    return json.loads(lines[-1])


def max_abs_diff(a: Path, b: Path) -> float:
    """The largest difference between two adapters' tensors (same names asserted)."""
    from safetensors.torch import load_file

    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert sorted(left) == sorted(right)
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def group_manifest(tmp_path: Path, config: str, members: dict[str, Path]) -> Path:
    """A ``--group`` manifest training ``members`` (trait -> shard) into ``tmp_path/group/<trait>``."""
    manifest = {
        "config": json.loads(config),
        "run_id": "manual__1",
        "members": [
            {"trait": trait, "shard": str(shard), "out": str(tmp_path / "group" / trait)}
            for trait, shard in members.items()
        ],
    }
    path = tmp_path / "group.json"
    path.write_text(json.dumps(manifest))
    return path
