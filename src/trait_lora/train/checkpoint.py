"""Resumable runs: the whole state of a run, saved every N optimizer steps beside its output folder.

A preempted spot GPU or a killed task must not start an 8B run over. The trainer writes
``<out>.checkpoint/checkpoint.pt`` (the LoRA weights, the optimizer and loss-scaler state, the RNG
states and the step log) every ``--checkpoint-every`` steps, atomically, and a rerun with the same
``--out`` continues from it: the data order is a function of (seed, epoch) and the learning rate a
function of the step, so the continued run is the run that was interrupted. A checkpoint is used only
when its fingerprint (config hash, shard digest, seed, sequence length, batch and step plan) matches;
any other is a previous run's and is discarded. It is removed once the adapter is published.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, TextIO

import torch

from trait_lora.core.hashing import sha256_json
from trait_lora.core.storage.atomic import fsync_dir
from trait_lora.train.objects import CHECKPOINT_FILE

FILE = CHECKPOINT_FILE
FORMAT = 1


def default_dir(out: Path) -> Path:
    """``<out>.checkpoint``: beside the output, so a rerun with the same ``--out`` finds it."""
    return out.with_name(f"{out.name}.checkpoint")


def fingerprint(**facts: Any) -> str:
    """A digest of everything that decides the run's trajectory; a checkpoint of another is refused."""
    return sha256_json({"format": FORMAT, **facts})


def save(
    folder: Path,
    *,
    fingerprint: str,
    step: int,
    model: Any,
    optimizer: Any,
    scaler: Any,
    progress: dict[str, Any],
) -> Path:
    """Write the state after ``step`` optimizer steps; a crash mid-write leaves the previous one."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "step": step,
        "trainable": {
            n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
        },
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": progress,
    }
    tmp = folder / f"{FILE}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / FILE)
    fsync_dir(folder)
    return folder / FILE


def load(folder: Path, *, fingerprint: str, log: TextIO) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` when it belongs to this run; None (and a note) otherwise."""
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: starting over is the safe answer
        print(f"note: ignoring unreadable checkpoint {path} ({type(exc).__name__}); starting over", file=log)
        return None
    if (
        not isinstance(state, dict)
        or state.get("format") != FORMAT
        or state.get("fingerprint") != fingerprint
    ):
        print(
            f"note: {path} is from another run (config, shard, seed or step plan differ); starting over",
            file=log,
        )
        return None
    return state


def restore(state: dict[str, Any], *, model: Any, optimizer: Any, scaler: Any) -> None:
    """Put the run back where ``state`` left it (weights, optimizer, loss scale, RNG)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:  # empty when the run it came from had no loss scaling (bf16, fp32)
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def remove(folder: Path | None) -> None:
    """Delete the checkpoint, and its folder when nothing else is in it (``--checkpoint-dir`` may be
    a folder the user shares with other files)."""
    if folder is None:
        return
    for name in (FILE, f"{FILE}.tmp"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
