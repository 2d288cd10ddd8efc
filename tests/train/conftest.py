"""Shared fixtures for the local trainer: small shards and ONE tiny model per test session.

The model is built from shards written here (not the sample shards, which other work may be changing), and
``build_tiny_model`` caches on a fingerprint, so the session pays for it once. The trainer always runs as
a subprocess with the exact argv a backend would use, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.train.helpers import write_chat_shard, write_prompt_completion_shard, write_text_shard
from trait_lora.train.tiny_model import build_tiny_model


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
