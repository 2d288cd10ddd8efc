"""What becomes of one training call: the exit code and the message a user must act on.

Shared by the single-trait CLI (``cli``) and a group's trainer (``group``), so a trait fails with the
same code and words whichever trained it. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trait_lora.core.config import from_mapping
from trait_lora.core.errors import ShardError
from trait_lora.core.shards.validation import require_valid
from trait_lora.train import (
    EXIT_BAD_INPUT,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OOM,
    ModelLoadError,
    TrainInputError,
    TrainOutOfMemory,
    is_out_of_memory,
    require_model_dir,
)

OOM_HINT = (
    "out of memory outside the training step (loading the model or evaluating): set quantization "
    '"4bit", pass a smaller --micro-batch or use a device with more memory'
)


def validate_shard(shard: Path, err: Any, shown: str | None = None) -> tuple[int, Any]:
    """(0, the shard's report) or (exit 2, None) with the problems printed: before torch is imported."""
    try:
        return EXIT_OK, require_valid(shard)
    except ShardError as exc:
        print(f"error: {shown or shard} is not a valid shard; fix these lines and retry:", file=err)
        for problem in exc.problems:
            print(problem, file=err)
    except OSError as exc:
        print(f"error: cannot read shard {shown or shard}: {exc}", file=err)
    return EXIT_BAD_INPUT, None


def pinned_config(args: argparse.Namespace, config: Any, err: Any) -> tuple[int, Any]:
    """The config whose local_model is the pinned model's folder here (a pod), after the model is
    known to be a usable directory: exit 3 names the model before any argument check."""
    if args.model_pin:  # a pod: the run's pin fetched into its cache volume (once per volume)
        from trait_lora.models import ModelDeliveryError
        from trait_lora.train.delivery import pod_model

        try:
            folder, record = pod_model(args.model_pin, args.model_cache)
        except (ModelDeliveryError, ValueError, KeyError) as exc:
            print(f"error: cannot fetch the base model: {exc}", file=err)
            return EXIT_MODEL, None
        config = from_mapping({**config.to_dict(), "local_model": str(folder)}, source="--model-pin")
        args.base_model_id = args.base_model_id or record["base_model"]
    try:
        require_model_dir(config.local_model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_MODEL, None
    return EXIT_OK, config


def guarded(call: Any, err: Any) -> tuple[int, Any]:
    """(exit code, what ``call`` returned): each trainer error a user must act on gets its code and its
    message on ``err``; anything else propagates (exit 1 with a traceback)."""
    try:
        return EXIT_OK, call()
    except ModelLoadError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_MODEL, None
    except (TrainInputError, ShardError) as exc:
        print(f"error: {exc}", file=err)
        for problem in getattr(exc, "problems", []):
            print(problem, file=err)
        return EXIT_BAD_INPUT, None
    except TrainOutOfMemory as exc:
        print(f"error: {exc}", file=err)
        return EXIT_OOM, None
    except KeyboardInterrupt:
        print(
            "error: interrupted; no adapter was written (a rerun with the same --out resumes from the "
            "last checkpoint, if one was saved)",
            file=err,
        )
        return 130, None
    except (RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            print(
                f"error: {OOM_HINT} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                file=err,
            )
            return EXIT_OOM, None
        raise


FRESH_PROCESS = False  # set by cli.run(): this process imports torch, transformers and peft for itself


def skip_bitsandbytes(*configs: Any) -> None:
    """Keep peft from importing bitsandbytes (it does whenever the package is installed: ~1 s of every
    trainer process) when no config here quantizes. Only in a process of its own (``cli.run``), before
    peft is imported: one that went on to train a 4-bit base could not import it any more."""
    if FRESH_PROCESS and not any(c.quantization for c in configs) and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # find_spec() then says absent
