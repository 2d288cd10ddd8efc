"""Train one LoRA adapter from one validated shard with ``transformers.Trainer`` + peft.

Why plain ``Trainer`` and an own collator: it is as fast as a hand-written loop, TRL adds ~270 MB of
dependencies, and TRL's assistant-only mode refuses the real Llama-3.1 template. What makes CPU training
fast is avoiding padding, so every micro-batch is padded only to its own longest example and the sampler
groups similar lengths together (``train_sampling_strategy="group_by_length"``).

Every hyperparameter comes from the one ``TrainingConfig`` both backends share. The effective batch is the
config's ``batch_size``, reached as micro-batch x gradient accumulation; the Trainer normalises the loss by
the number of labeled tokens in the whole effective batch, so the micro-batch size changes speed and
memory, not the maths.

The output directory appears only complete: everything is written to a temp dir beside ``out`` and renamed
over it at the end, so a crash never leaves something that looks like an adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from trait_lora.core.config import TrainingConfig
from trait_lora.core.hashing import sha256_file
from trait_lora.core.shards.split import split_examples
from trait_lora.core.shards.validation import ShardReport, iter_examples, require_valid
from trait_lora.core.storage.atomic import fsync_dir
from trait_lora.train import ModelLoadError, TrainInputError
from trait_lora.train.data import DynamicPaddingCollator, LengthGroupedOrder, encode_records
from trait_lora.train.evaluate import eval_figures, opposite_held_out
from trait_lora.train.model import load_base_model, pad_token_id

DEFAULT_MICRO_BATCH_CPU = 8
DEFAULT_MICRO_BATCH_GPU = 4  # 128k-vocab logits dominate GPU memory; accumulate up to the batch
DEFAULT_MAX_LENGTH = 4096
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass(frozen=True)
class TrainResult:
    """What the CLI prints (one JSON line) and the in-process backend reads back."""

    adapter_dir: Path
    sha256: str
    num_examples: int
    final_loss: float
    metrics: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir),
            "sha256": self.sha256,
            "num_examples": self.num_examples,
            "final_loss": self.final_loss,
            "train_loss": self.metrics["train_loss"],
            "steps": len(self.metrics["steps"]),
            "tokens_per_second": self.metrics["tokens_per_second"],
            "device": self.metrics["device"],
            "eval": self.metrics.get("eval"),
        }


def plan_batches(batch_size: int, micro_batch: int) -> tuple[int, int]:
    """(micro-batch, accumulation) whose product is exactly ``batch_size``.

    The micro-batch is the largest divisor of ``batch_size`` not above the requested one, so the effective
    batch (a hashed hyperparameter) never silently changes; e.g. batch 32 / micro 8 -> 8 x 4,
    batch 10 / micro 8 -> 5 x 2.
    """
    if micro_batch < 1:
        raise TrainInputError(f"--micro-batch must be at least 1, got {micro_batch}")
    micro = max(d for d in range(1, min(batch_size, micro_batch) + 1) if batch_size % d == 0)
    return micro, batch_size // micro


class _LengthGroupedTrainer(Trainer):
    """``Trainer`` whose sampler groups lengths over the whole effective batch, on shards of any size.

    transformers' own ``group_by_length`` sorts only within one effective batch when a shard has fewer
    than ~4 batches x 50 examples, which left 39% padding on a 192-example shard; ``_get_train_sampler``
    is the Trainer's hook for the sampler (present in 4.x and 5.x).
    """

    def __init__(self, *args: Any, sampler_seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sampler_seed = sampler_seed

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        effective = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedOrder([len(f["input_ids"]) for f in dataset], effective, self._sampler_seed)


class _ProgressLog(TrainerCallback):
    """One ``step k/N loss x tokens/s y`` line per optimizer step on stderr (stdout carries the result)."""

    def __init__(self, collator: DynamicPaddingCollator, stream: TextIO) -> None:
        self.collator = collator
        self.stream = stream
        self.started = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not logs or "loss" not in logs:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        print(
            f"step {state.global_step}/{state.max_steps} loss {float(logs['loss']):.4f} "
            f"lr {float(logs.get('learning_rate', 0.0)):.3g} "
            f"tokens/s {self.collator.real_tokens / elapsed:.0f}",
            file=self.stream,
            flush=True,
        )


def _device(gpu: bool) -> tuple[str, str]:
    if gpu:
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", f"{torch.get_num_threads()} threads"


def _publish(staging: Path, out: Path) -> None:
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


def train_adapter(
    shard: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TrainingConfig,
    *,
    base_model_id: str | None = None,
    gpu: bool = False,
    micro_batch: int | None = None,
    max_steps: int | None = None,
    seed: int = 42,
    max_length: int = DEFAULT_MAX_LENGTH,
    log: TextIO | None = None,
    report: ShardReport | None = None,
) -> TrainResult:
    """Validate ``shard``, train a LoRA on ``config.local_model`` and publish it atomically at ``out``.

    Raises ``ShardError`` (bad shard), ``ModelLoadError`` (model missing or unusable),
    ``TrainInputError`` (nothing trainable / bad arguments) or torch's OOM error; on any failure ``out``
    is left as it was. ``max_steps`` caps optimizer steps (for smoke tests); ``base_model_id`` is the id
    recorded in ``adapter_config.json`` (defaults to ``config.local_model``), because the path trained on
    is usually a local copy of a real model. ``report`` is the shard's validation report when the caller
    already has it (saves a second pass over a large shard).
    """
    stream = log if log is not None else sys.stderr
    shard_path, out_path = Path(shard), Path(out)
    if report is None:  # the CLI validates before importing torch and hands its report over
        report = require_valid(shard_path)
    if out_path.exists() and not out_path.is_dir():
        raise TrainInputError(f"--out {out_path} exists and is not a directory; pass a directory path")
    if gpu and not torch.cuda.is_available():
        raise TrainInputError("--gpu was given but torch sees no CUDA device; drop --gpu to train on CPU")
    if max_steps is not None and max_steps < 1:
        raise TrainInputError(f"--max-steps must be at least 1, got {max_steps}")
    if max_length < 8:
        raise TrainInputError(f"--max-length must be at least 8 tokens, got {max_length}")
    micro, accum = plan_batches(
        config.batch_size, micro_batch or (DEFAULT_MICRO_BATCH_GPU if gpu else DEFAULT_MICRO_BATCH_CPU)
    )
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    tokenizer, model = load_base_model(config.local_model, gpu=gpu)
    fmt = report.format or "text"
    if fmt != "text" and not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"{config.local_model!r} has no chat template, so {fmt} examples cannot be rendered; use an "
            "instruct model's tokenizer (or a text-format shard)"
        )
    records = list(iter_examples(shard_path))
    split = split_examples(records, config.eval_fraction)  # the same held-out set Together would get
    encode = partial(encode_records, tokenizer, fmt=fmt, train_on_inputs=config.train_on_inputs)
    try:
        examples, dropped = encode([records[i] for i in split.train], max_length=max_length)
        held_out, _ = encode([records[i] for i in split.held_out], max_length=max_length)
        opposite = (
            opposite_held_out(
                shard_path,
                tokenizer,
                fmt,
                config.eval_fraction,
                train_on_inputs=config.train_on_inputs,
                max_length=max_length,
            )
            if held_out
            else (None, [])
        )
    except ValueError as exc:  # a template that cannot locate assistant turns
        raise ModelLoadError(f"{config.local_model!r}: {exc}") from None
    if not examples:
        raise TrainInputError(
            f"none of the {report.num_examples} examples in {shard_path} has a token to learn from within "
            f"{max_length} tokens; shorten the prompts or raise --max-length"
        )
    if dropped:
        print(f"note: {dropped} example(s) dropped: nothing to learn within {max_length} tokens", file=stream)

    transformers.set_seed(seed)  # LoRA init (lora_A) draws from the global RNG
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft 0.21 still asks for the pre-v5 `is_gradient_checkpointing` name
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, lora)
    model.config.use_cache = False  # the KV cache is for generation; training would only pay for it
    collator = DynamicPaddingCollator(pad_token_id(tokenizer), pad_to_multiple_of=8 if gpu else None)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        args = TrainingArguments(
            output_dir=str(staging / ".trainer"),
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=accum,
            num_train_epochs=config.n_epochs,
            max_steps=max_steps if max_steps is not None else -1,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler_type,
            warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            train_sampling_strategy="group_by_length",  # replaced by _LengthGroupedTrainer's sampler
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            use_cpu=not gpu,
            bf16=gpu,
            activation_checkpointing=gpu,  # transformers 5 name of gradient_checkpointing
            activation_checkpointing_kwargs={"use_reentrant": False} if gpu else None,
            dataloader_num_workers=0,
            dataloader_pin_memory=gpu,
            remove_unused_columns=False,
        )
        trainer = _LengthGroupedTrainer(
            model=model,
            args=args,
            sampler_seed=seed,
            train_dataset=[e.as_feature() for e in examples],
            data_collator=collator,
            processing_class=tokenizer,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        trainer.add_callback(_ProgressLog(collator, stream))
        print(
            f"training {len(examples)} {fmt} examples from {shard_path.name} ({len(held_out)} held out): "
            f"micro-batch {micro} x "
            f"accumulation {accum} = batch {config.batch_size}, {config.n_epochs} epoch(s)"
            + (f", max {max_steps} steps" if max_steps else ""),
            file=stream,
            flush=True,
        )
        # Libraries print progress to stdout; the CLI's last stdout line must stay the JSON result.
        started = time.perf_counter()
        with contextlib.redirect_stdout(stream):
            output = trainer.train()
        wall = time.perf_counter() - started
        pad_id = pad_token_id(tokenizer)
        evaluation = eval_figures(model, held_out, pad_token_id=pad_id, micro=micro, opposite=opposite)
        if evaluation:
            print(f"held-out eval: {json.dumps(evaluation, sort_keys=True)}", file=stream, flush=True)

        model.save_pretrained(staging, safe_serialization=True)
        shutil.rmtree(staging / ".trainer", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (staging / "README.md").unlink()  # peft's model card: not part of the adapter contract
        _fix_base_model(staging / "adapter_config.json", base_model_id or config.local_model)

        steps = [
            {
                "step": int(entry["step"]),
                "loss": float(entry["loss"]),
                "learning_rate": float(entry.get("learning_rate", 0.0)),
                "epoch": float(entry.get("epoch", 0.0)),
            }
            for entry in trainer.state.log_history
            if "loss" in entry
        ]
        device, device_name = _device(gpu)
        metrics: dict[str, Any] = {
            "steps": steps,
            "train_loss": float(output.training_loss),
            "final_loss": steps[-1]["loss"] if steps else float(output.training_loss),
            "real_tokens": collator.real_tokens,
            "padded_tokens": collator.padded_tokens,
            "tokens_per_second": collator.real_tokens / wall if wall > 0 else 0.0,
            "wall_seconds": wall,
            "num_examples": len(examples),
            "dropped_examples": dropped,
            "eval": evaluation,
            "eval_fraction": config.eval_fraction,
            "format": fmt,
            "micro_batch": micro,
            "grad_accum": accum,
            "batch_size": config.batch_size,
            "max_steps": max_steps,
            "seed": seed,
            "device": device,
            "device_name": device_name,
            "shard_sha256": report.sha256,
            "config_hash": config.config_hash(),
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        digest = sha256_file(staging / "adapter_model.safetensors")
        # mkdtemp and safetensors make files private; an adapter is meant to be read by others.
        os.chmod(staging, 0o755)
        for name in os.listdir(staging):
            os.chmod(staging / name, 0o644)
        _publish(staging, out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainResult(
        adapter_dir=out_path.resolve(),
        sha256=digest,
        num_examples=len(examples),
        final_loss=metrics["final_loss"],
        metrics=metrics,
    )


def _fix_base_model(config_path: Path, base_model_id: str) -> None:
    """Record the real model id (peft writes the path the base was loaded from) and fix module order.

    peft keeps target_modules as a set, whose order changes with each process's hash seed; sorting it
    makes the file byte-identical across identical runs.
    """
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = base_model_id
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
