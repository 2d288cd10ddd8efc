"""Shared fixtures for the local trainer: small shards and ONE tiny model per test session.

The model is built from shards written here (not the sample shards, which other work may be changing), and
``build_tiny_model`` caches on a fingerprint, so the session pays for it once. The trainer always runs as
a subprocess with the exact argv a backend would use, offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.train.helpers import write_chat_shard, write_prompt_completion_shard, write_text_shard
from trait_lora.train import smollm2
from trait_lora.train.tiny_model import build_tiny_model

CONVERSION_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_chat_shard(root / "wisdom_plus.jsonl")
    write_prompt_completion_shard(root / "calm_plus.jsonl")
    write_text_shard(root / "calm_minus.jsonl")
    return root


@pytest.fixture(scope="session")
def tiny_model(shards_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(shards_dir, tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


# Beside the venv, so that `make install` converts once per venv and every later `make test` reuses it:
# the conversion's own checks (fingerprint, files, weights) still run on what is there, and a changed GGUF,
# library version or converter module is a cache miss that converts again here.
SMOLLM2_CACHE = Path(sys.prefix) / "share" / "trait-lora" / "smollm2"


@pytest.fixture(scope="session")
def converted() -> tuple[Path, float]:
    """SmolLM2 converted (or found converted) through the module's entry point: (directory, seconds)."""
    try:
        smollm2.gguf_path()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    out = SMOLLM2_CACHE
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "trait_lora.train.smollm2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=CONVERSION_TIMEOUT_S,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)
    print(f"\nSmolLM2 conversion (or cache check): {elapsed:.1f} s")
    return out, elapsed
