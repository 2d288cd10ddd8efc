"""Local LoRA training: the same adapter Together would train, on this machine or a GPU pod.

Run it as ``python -m trait_lora.train --shard PATH --out DIR --config-json JSON`` (see ``cli``). This
``__init__`` stays light (no torch, transformers or peft) so that Airflow and the core can import the
exit codes and error types without paying for the ML stack; ``trainer`` holds the heavy code.

Exit codes are part of the contract with the in-process backend and the pod operator, which decide on them
whether a retry can help: a bad shard (2) or a missing model (3) will fail again; OOM (4) means the step
did not fit even at micro-batch 1 (the trainer halves its micro-batch on its own before that): it needs
a larger device, ``quantization: "4bit"`` or a shorter ``max_seq_length``; anything else (1) may be
transient.
"""

from __future__ import annotations

from pathlib import Path

from trait_lora.core.errors import TraitLoraError

EXIT_OK = 0
EXIT_FAILED = 1  # unexpected failure (may be transient)
EXIT_BAD_INPUT = 2  # invalid shard, config JSON or arguments: fix the input
EXIT_MODEL = 3  # the base model cannot be loaded offline, or cannot train this shard's format
EXIT_OOM = 4  # out of memory even at micro-batch 1

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_OOM",
    "ModelLoadError",
    "TrainInputError",
    "TrainOutOfMemory",
    "is_out_of_memory",
    "require_model_dir",
]


class ModelLoadError(TraitLoraError):
    """The base model or its tokenizer cannot be loaded (offline) or used for this shard."""


class TrainInputError(TraitLoraError, ValueError):
    """Arguments that cannot train anything (e.g. every example truncated away, --out is a file)."""


class TrainOutOfMemory(TraitLoraError):
    """One optimizer step did not fit in memory even at micro-batch 1; the message says how much it needed."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM, Python's MemoryError, or the CPU allocator's RuntimeError (no torch import)."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _is_path_like(ref: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``), so a miss needs no cache lookup."""
    return ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists()


def require_model_dir(model_ref: str) -> None:
    """Refuse a model path that is not a directory. Here rather than in ``model`` so that the CLI can
    say it before importing torch, transformers and peft (~4 s), like a bad shard."""
    if _is_path_like(model_ref) and not Path(model_ref).expanduser().is_dir():
        raise ModelLoadError(
            f"base model {model_ref!r} is not a directory. Set local_model in the training config to a "
            "local model directory (config.json, weights, tokenizer) or to a model id already in the "
            "Hugging Face cache; the trainer runs offline and never downloads."
        )
