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
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trait_lora.core.adapter.spec import RESULT_FILE
from trait_lora.core.config import from_mapping
from trait_lora.core.errors import ConfigError
from trait_lora.core.storage.store import StoreError
from trait_lora.train import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    guard,
    objects,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trait_lora.train",
        description="Train one LoRA adapter on one trait shard with transformers + peft (offline).",
        epilog=(
            "exit codes: 0 ok (one JSON line on stdout), 1 unexpected failure, 2 bad shard/config/arguments, "
            "3 base model missing or unusable, 4 out of memory even at micro-batch 1"
        ),
    )
    parser.add_argument(
        "--shard",
        help="the .jsonl shard to train on: a path, or an s3://bucket/key URL (required without --group)",
    )
    parser.add_argument(
        "--out",
        help="adapter directory to create; an existing one is replaced only when training succeeds; "
        "an s3://bucket/prefix URL uploads the adapter there instead (credentials from the environment)",
    )
    parser.add_argument(
        "--config-json",
        help="TrainingConfig.to_dict() as JSON; local_model is the model id or a local directory",
    )
    parser.add_argument(
        "--group",
        default=None,
        help="train a group of traits in this one process instead of --shard/--out/--config-json: a JSON "
        "manifest {config, members: [{trait, shard, out}]}, a file or the JSON itself (see "
        "trait_lora.train.group); the base model is loaded once and each trait's record goes to "
        "<out>.result.json; exit 0 once every trait has one",
    )
    parser.add_argument(
        "--base-model-id",
        default=None,
        help="model id recorded in adapter_config.json (default: the config's local_model)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="where to train (default auto: CUDA when torch sees a GPU, else the CPU)",
    )
    parser.add_argument(
        "--gpu", dest="device", action="store_const", const="cuda", help="the same as --device cuda"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="number format (default auto: bf16 on GPUs that have it, fp16 with loss scaling on those "
        "that do not, fp32 on the CPU)",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="examples per forward pass (default 8 on CPU, 4 on GPU); gradient accumulation makes up "
        "the config's batch_size, and the trainer halves it by itself when a step runs out of memory",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    parser.add_argument(
        "--seed", type=int, default=None, help="override the config's random_seed (LoRA init, data order)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="override the config's max_seq_length: truncate examples to N tokens",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="save a checkpoint every N optimizer steps; a rerun with the same --out resumes from it",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="where checkpoints go (default: <out>.checkpoint beside --out; with an s3:// --out, "
        "<out>.checkpoint/ in the bucket)",
    )
    parser.add_argument(
        "--model-pin",
        default=None,
        help="the run's pinned base model (JSON from discover): a Hub commit or an s3:// digest, fetched "
        "into --model-cache first (token from HF_TOKEN, mirror from HF_ENDPOINT); the config's local_model "
        "is then read from there",
    )
    parser.add_argument(
        "--model-cache",
        default=None,
        help="folder for --model-pin's download (default: HF_HUB_CACHE, the pod's cache volume)",
    )
    parser.add_argument(
        "--xcom-file",
        type=Path,
        default=None,
        help="also write the result JSON here (a KubernetesPodOperator reads /airflow/xcom/return.json)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on unusable arguments
    err = sys.stderr
    if args.group is not None:
        if args.shard or args.out or args.config_json or args.checkpoint_dir:
            parser.error("--group replaces --shard, --out, --config-json and --checkpoint-dir")
        from trait_lora.train import group

        return group.main(args, err)
    missing = [
        f
        for f, v in (("--shard", args.shard), ("--out", args.out), ("--config-json", args.config_json))
        if not v
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --group)")
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
        remote = _remote_checkpoint(args, Path(scratch), err)
        code, summary = _train(args, config, shard, out, err, remote)
        if code != EXIT_OK or summary is None:
            return code
        if objects.is_s3(args.out):
            summary["adapter_dir"] = args.out  # where the worker finds it, not this pod's scratch
        line = json.dumps(summary, sort_keys=True)
        (out / RESULT_FILE).write_text(line + "\n")  # a pod's install task reads it here (no xcom sidecar)
        if objects.is_s3(args.out):
            objects.publish_dir(out, args.out)  # result.json goes up last: once there, so is the adapter
        if remote is not None:  # after the adapter is up: a pod lost in between still has something to resume
            remote.discard(err)
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


def _remote_checkpoint(args: argparse.Namespace, scratch: Path, err: Any) -> objects.RemoteCheckpoint | None:
    """With an s3:// --out and no --checkpoint-dir, checkpoints live in the bucket (a pod has no
    volume to survive it); the one a previous pod left is pulled down first."""
    if not (objects.is_s3(args.out) and args.checkpoint_every and not args.checkpoint_dir):
        return None
    return objects.RemoteCheckpoint.resumed(args.out, scratch / "checkpoint", err)


def _train(
    args: argparse.Namespace,
    config: Any,
    shard: Path,
    out: Path,
    err: Any,
    remote: objects.RemoteCheckpoint | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Validate and train; the exit code, and the result's summary when it succeeded."""
    code, report = guard.validate_shard(shard, err, args.shard)
    if code:
        return code, None
    code, config = guard.pinned_config(args, config, err)
    if code:
        return code, None

    guard.skip_bitsandbytes(config)
    from trait_lora.train import trainer  # torch, transformers, peft: only once the input is known good

    code, result = guard.guarded(
        lambda: trainer.train_adapter(
            shard,
            out,
            config,
            base_model_id=args.base_model_id,
            device=args.device,
            precision=args.precision,
            micro_batch=args.micro_batch,
            max_steps=args.max_steps,
            seed=args.seed,
            max_length=args.max_length,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=remote.local if remote else args.checkpoint_dir,
            on_checkpoint=remote.upload if remote else None,
            report=report,
        ),
        err,
    )
    return code, result.summary() if code == EXIT_OK else None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run() -> None:
    """Entry point that turns an unexpected exception into exit 1 with a traceback on stderr, and
    exits without collecting the heap torch and transformers leave (~0.8 s after the result line).

    SIGTERM (a killed task, a preempted pod) is handled like Ctrl-C: the staging folder is removed and
    the exit (130) says a rerun resumes from the last checkpoint, instead of dying mid-write."""
    guard.FRESH_PROCESS = "torch" not in sys.modules  # a forked warm interpreter has its imports already
    signal.signal(signal.SIGTERM, _interrupt)
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
