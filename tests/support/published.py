"""Published mappings for stage-3 tests: real adapters installed under an output dir, ledger, mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from tests.support.adapters import adapter_config, adapter_tensors
from trait_lora.core.adapter import AdapterSpec, install_adapter
from trait_lora.core.config import TrainingConfig
from trait_lora.core.handoff.mapping import write_mapping
from trait_lora.core.jobs.ledger import Ledger

CFG = TrainingConfig()
SHAPES = {"q_proj": (48, 40), "v_proj": (48, 24)}  # small, unequal in/out: a transposed row would show
TRAITS = ["joy_plus", "joy_minus", "calm_minus", "calm_plus"]


def write_adapter(
    directory: Path,
    seed: int,
    r: int = 4,
    layers: int = 2,
    shapes: dict | None = None,
    base: str | None = None,
) -> Path:
    """A PEFT adapter with random A and B (the shared helper's B is all zeros: rows would look equal)."""
    empty = adapter_tensors(r=r, layers=layers, shapes=shapes or SHAPES, seed=seed)
    rng = np.random.default_rng(seed + 100)
    tensors = {name: rng.standard_normal(t.shape).astype(np.float32) for name, t in empty.items()}
    directory.mkdir(parents=True, exist_ok=True)
    config = adapter_config(r=r) if base is None else adapter_config(r=r, base=base)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "adapter_model.safetensors").write_bytes(st_save(tensors))
    return directory


def install(out: Path, trait: str, seed: int, cfg: TrainingConfig = CFG, **kw) -> None:
    """Install an adapter for ``trait`` and record it, as a training run would."""
    src = write_adapter(out.parent / "src" / f"{trait}-{seed}", seed, r=cfg.lora_r, **kw)
    _, info = install_adapter(src, out, trait, AdapterSpec.from_config(cfg))
    Ledger(out).record_adapter(
        trait,
        shard_sha256=f"{seed:064x}",
        config_hash=CFG.config_hash(),
        job_key=f"{seed + 1:064x}",
        adapter_sha256=info.sha256,
        job_id=f"ft-{trait}",
        backend="together",
        base_model=CFG.base_model,
        num_examples=3,
    )


def publish(out: Path, traits: list[str] = TRAITS, failed: dict[str, str] | None = None) -> Path:
    """Install one adapter per trait (seeded by position) and write the mapping; returns its path."""
    for seed, trait in enumerate(traits):
        install(out, trait, seed)
    path, _ = write_mapping(out, CFG, failed=failed)
    return path


def weights(out: Path, trait: str) -> Path:
    return out / "lora_checkpoints" / trait / "adapter_model.safetensors"
