"""``python -m trait_lora.train``: train one adapter, report it as one JSON line, exit with a meaning.

The caller (the in-process backend, or a Kubernetes pod run by Airflow) only sees argv, stderr, the last
stdout line and the exit code, so each failure a user must act on has its own code (see
``trait_lora.train``) and a message on stderr that says what to do. The shard is validated before torch is
imported, so a bad shard fails in well under a second.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trait_lora.core.config import from_mapping
from trait_lora.core.errors import ConfigError, ShardError
from trait_lora.core.shards.validation import require_valid
from trait_lora.core.storage.store import StoreError
from trait_lora.train import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OOM,
    ModelLoadError,
    TrainInputError,
    objects,
    require_model_dir,
)

OOM_HINT = "out of memory: retry with a smaller --micro-batch (accumulation keeps the effective batch)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trait_lora.train",
        description="Train one LoRA adapter on one trait shard with transformers + peft (offline).",
        epilog=(
            "exit codes: 0 ok (one JSON line on stdout), 1 unexpected failure, 2 bad shard/config/arguments, "
            "3 base model missing or unusable, 4 out of memory"
        ),
    )
    parser.add_argument(
        "--shard", required=True, help="the .jsonl shard to train on: a path, or an s3://bucket/key URL"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="adapter directory to create; an existing one is replaced only when training succeeds; "
        "an s3://bucket/prefix URL uploads the adapter there instead (credentials from the environment)",
    )
    parser.add_argument(
        "--config-json",
        required=True,
        help="TrainingConfig.to_dict() as JSON; local_model is the model id or a local directory",
    )
    parser.add_argument(
        "--base-model-id",
        default=None,
        help="model id recorded in adapter_config.json (default: the config's local_model)",
    )
    parser.add_argument("--gpu", action="store_true", help="CUDA: bf16, sdpa, gradient checkpointing")
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="examples per forward pass (default 8 on CPU, 4 on GPU); gradient accumulation makes up "
        "the config's batch_size",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    parser.add_argument("--seed", type=int, default=42, help="seed for LoRA init and data order")
    parser.add_argument(
        "--max-length", type=int, default=None, help="truncate examples to N tokens (default 4096)"
    )
    parser.add_argument(
        "--xcom-file",
        type=Path,
        default=None,
        help="also write the result JSON here (a KubernetesPodOperator reads /airflow/xcom/return.json)",
    )
    return parser


def _is_oom(exc: BaseException) -> bool:
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on unusable arguments
    err = sys.stderr
    try:
        values = json.loads(args.config_json)
        if not isinstance(values, dict):
            raise ConfigError("--config-json must be a JSON object (TrainingConfig.to_dict())")
        config = from_mapping(values, source="--config-json")
    except ValueError as exc:  # JSONDecodeError and ConfigError are both ValueErrors
        print(f"error: bad training config: {exc}", file=err)
        return EXIT_BAD_INPUT
    with tempfile.TemporaryDirectory(prefix="trait-lora-train-") as scratch:
        try:
            shard, out = _local_paths(args, Path(scratch))
            if objects.is_s3(args.shard) and config.eval_fraction > 0:
                objects.fetch_opposite(args.shard, shard.parent)  # for own_pole_margin, as on a volume
        except (FileNotFoundError, StoreError) as exc:
            print(f"error: cannot read shard {args.shard}: {exc}", file=err)
            return EXIT_BAD_INPUT
        code, summary = _train(args, config, shard, out, err)
        if code != EXIT_OK or summary is None:
            return code
        if objects.is_s3(args.out):
            objects.publish_dir(out, args.out)
            summary["adapter_dir"] = args.out  # where the worker finds it, not this pod's scratch
        line = json.dumps(summary, sort_keys=True)
        if args.xcom_file:
            args.xcom_file.parent.mkdir(parents=True, exist_ok=True)
            args.xcom_file.write_text(line)
        print(line, flush=True)
        return EXIT_OK


def _local_paths(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path]:
    """The shard and the adapter folder as local paths: a pod without a shared volume copies its
    shard from object storage and trains into scratch, uploading the adapter once it is done."""
    shard = (
        objects.fetch(args.shard, scratch / "shard" / args.shard.rsplit("/", 1)[-1])
        if objects.is_s3(args.shard)
        else Path(args.shard)
    )
    out = scratch / "adapter" if objects.is_s3(args.out) else Path(args.out)
    return shard, out


def _train(
    args: argparse.Namespace, config: Any, shard: Path, out: Path, err: Any
) -> tuple[int, dict[str, Any] | None]:
    """Validate and train; the exit code, and the result's summary when it succeeded."""
    try:
        report = require_valid(shard)
    except ShardError as exc:
        print(f"error: {args.shard} is not a valid shard; fix these lines and retry:", file=err)
        for problem in exc.problems:
            print(problem, file=err)
        return EXIT_BAD_INPUT, None
    except OSError as exc:
        print(f"error: cannot read shard {args.shard}: {exc}", file=err)
        return EXIT_BAD_INPUT, None
    try:  # before the arguments train_adapter checks: with both wrong, exit 3 names the model first
        require_model_dir(config.local_model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_MODEL, None

    from trait_lora.train import trainer  # torch, transformers, peft: only once the input is known good

    kwargs = {"max_length": args.max_length} if args.max_length else {}
    try:
        result = trainer.train_adapter(
            shard,
            out,
            config,
            base_model_id=args.base_model_id,
            gpu=args.gpu,
            micro_batch=args.micro_batch,
            max_steps=args.max_steps,
            seed=args.seed,
            report=report,
            **kwargs,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_MODEL, None
    except (TrainInputError, ShardError) as exc:
        print(f"error: {exc}", file=err)
        for problem in getattr(exc, "problems", []):
            print(problem, file=err)
        return EXIT_BAD_INPUT, None
    except KeyboardInterrupt:
        print("error: interrupted; no adapter was written", file=err)
        return 130, None
    except (RuntimeError, MemoryError) as exc:
        if _is_oom(exc):
            print(
                f"error: {OOM_HINT} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                file=err,
            )
            return EXIT_OOM, None
        raise
    return EXIT_OK, result.summary()


def run() -> None:
    """Entry point that turns an unexpected exception into exit 1 with a traceback on stderr, and
    exits without collecting the heap torch and transformers leave (~0.8 s after the result line)."""
    try:
        code = main()
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        code = EXIT_FAILED
    gc.freeze()
    sys.exit(code)
