"""Writing an adapter folder: the atomic rename, the settings it records, its config's model id.

Apart from ``trainer`` so the training code stays readable; nothing here trains.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trait_lora.core.config import TrainingConfig
from trait_lora.core.storage.atomic import fsync_dir
from trait_lora.train.loop import ADAM_BETAS, ADAM_EPS, LoopSettings
from trait_lora.train.loss import CHUNK_TOKENS
from trait_lora.train.precision import Runtime


def publish_dir(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` dir to ``out``, replacing an old ``out`` only now, at the end."""
    for name in os.listdir(staging):
        with open(staging / name, "rb") as fh:
            os.fsync(fh.fileno())
    if out.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, backup / out.name)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(backup / out.name, out)  # put the previous adapter back
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staging, out)
    fsync_dir(out.parent)


def peak_memory(runtime: Runtime) -> int:
    """Peak CUDA allocation on a GPU, peak resident set size on the CPU (bytes)."""
    peak = runtime.peak_memory_bytes()
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trained_settings(
    config: TrainingConfig, runtime: Runtime, loop: LoopSettings, seq_len: int, checkpoint_every: int | None
) -> dict[str, Any]:
    """Every setting the adapter was trained with, config fields and the trainer's own choices."""
    return {
        **config.to_dict(),
        "max_seq_length": seq_len,
        "random_seed": loop.seed,
        "precision": runtime.precision,
        "device": runtime.device,
        "total_steps": loop.total_steps,
        "warmup_steps": loop.warmup_steps,
        "micro_batch_requested": loop.micro_batch,
        "optimizer": {"name": "adamw_torch", "betas": list(ADAM_BETAS), "eps": ADAM_EPS},
        "loss": {
            "name": "chunked_cross_entropy",
            "chunk_tokens": CHUNK_TOKENS,
            "normalised_by": "batch_labels",
        },
        "gradient_checkpointing": runtime.cuda,
        "checkpoint_every": checkpoint_every,
        "truncation": "right",
    }


def fix_base_model(config_path: Path, base_model_id: str) -> None:
    """Record the real model id (peft writes the path the base was loaded from) and fix module order.

    peft keeps target_modules as a set, whose order changes with each process's hash seed; sorting it
    makes the file byte-identical across identical runs.
    """
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = base_model_id
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
