"""Train one LoRA adapter from one validated shard with peft and the loop in ``loop``.

Every hyperparameter comes from the one ``TrainingConfig`` both backends share: sequence length,
learning-rate schedule, weight decay, clipping, seed and quantization included (Together reads the same
fields; ``packing`` is refused for this backend by the config). The effective batch is the config's
``batch_size``, reached as micro-batch x gradient accumulation; the loss is normalised by the labelled
tokens of the whole effective batch, so the micro-batch size changes speed and memory, not the maths.
What makes CPU training fast is avoiding padding: every micro-batch is padded only to its own longest
example and batches group similar lengths.

The hardware decides the number format (``precision``): bf16 on GPUs that have it, fp16 with loss
scaling on those that do not, fp32 on the CPU. Each adapter's ``metrics.json`` records every setting
it was trained with.

The output directory appears only complete: everything is written to a temp dir beside ``out`` and
renamed over it at the end, so a crash never leaves something that looks like an adapter. Checkpoints
(``--checkpoint-every``) go to ``<out>.checkpoint`` and a rerun with the same ``out`` resumes from them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU backend warns of an optional package

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from trait_lora.core.config import TrainingConfig  # noqa: E402
from trait_lora.core.hashing import sha256_file  # noqa: E402
from trait_lora.core.shards.split import split_examples  # noqa: E402
from trait_lora.core.shards.validation import ShardReport, iter_examples, require_valid  # noqa: E402
from trait_lora.train import ModelLoadError, TrainInputError  # noqa: E402
from trait_lora.train import checkpoint as ckpt  # noqa: E402
from trait_lora.train.data import DynamicPaddingCollator, encode_records  # noqa: E402
from trait_lora.train.evaluate import eval_figures, opposite_held_out  # noqa: E402
from trait_lora.train.loop import LoopSettings, TrainLoop  # noqa: E402
from trait_lora.train.model import load_base_model, pad_token_id  # noqa: E402
from trait_lora.train.precision import Runtime, resolve  # noqa: E402
from trait_lora.train.publish import fix_base_model, peak_memory, publish_dir, trained_settings  # noqa: E402

DEFAULT_MICRO_BATCH_CPU = 8
DEFAULT_MICRO_BATCH_GPU = 4  # 128k-vocab logits dominate GPU memory; accumulate up to the batch
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
            "precision": self.metrics["precision"],
            "quantization": self.metrics["quantization"],
            "micro_batch": self.metrics["micro_batch"],
            "eval": self.metrics.get("eval"),
        }


@dataclass
class Base:
    """A base model loaded once, on which one or more adapters are trained one after the other."""

    tokenizer: Any
    model: Any
    runtime: Runtime
    model_ref: str
    quantization: str | None
    load_seconds: float = 0.0
    intact: bool = True  # False once taking an adapter out failed: no trait may train on it then

    def require_same(self, config: TrainingConfig) -> None:
        if (config.local_model, config.quantization) != (self.model_ref, self.quantization):
            raise TrainInputError(
                f"a group trains on one base model: this trait asks for {config.local_model!r} "
                f"(quantization {config.quantization}), the group loaded {self.model_ref!r} "
                f"(quantization {self.quantization}); put it in a group of its own"
            )

    def release(self, peft_model: Any) -> None:
        """Take the adapter out (no merge): the base is as it was loaded, for the next trait."""
        self.model = peft_model.unload()
        self.intact = True
        if getattr(self.model, "_require_grads_hook", None) is not None:
            self.model.disable_input_require_grads()  # peft's hook for checkpointing; the next adds its own

    def tidy(self) -> None:
        """Between two traits, once the last one's adapter, optimizer and batches are unreachable."""
        gc.collect()
        if self.runtime.cuda:
            torch.cuda.empty_cache()


def load_base(
    config: TrainingConfig, *, device: str = "auto", precision: str = "auto", runtime: Runtime | None = None
) -> Base:
    """The config's base model on the resolved device, in the resolved precision (see ``precision``)."""
    runtime = runtime or resolve(device, precision)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if runtime.cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    tokenizer, model = load_base_model(config.local_model, runtime, quantization=config.quantization)
    return Base(
        tokenizer, model, runtime, config.local_model, config.quantization, time.perf_counter() - started
    )


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


def train_adapter(
    shard: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TrainingConfig,
    *,
    base_model_id: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    micro_batch: int | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    max_length: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    log: TextIO | None = None,
    report: ShardReport | None = None,
    base: Base | None = None,
    base_losses: dict[Any, float | None] | None = None,
) -> TrainResult:
    """Validate ``shard``, train a LoRA on ``config.local_model`` and publish it atomically at ``out``.

    Raises ``ShardError`` (bad shard), ``ModelLoadError`` (model missing or unusable),
    ``TrainInputError`` (nothing trainable / bad arguments) or ``TrainOutOfMemory`` (one step does not
    fit even at micro-batch 1); on any failure ``out`` is left as it was. ``device`` is auto, cuda or
    cpu and ``precision`` auto, bf16, fp16 or fp32 (see ``precision``). ``seed`` and ``max_length``
    override the config's ``random_seed`` and ``max_seq_length`` (tests and smoke runs); ``max_steps``
    caps optimizer steps. ``checkpoint_every`` saves a checkpoint every N steps in ``checkpoint_dir``
    (default ``<out>.checkpoint``), from which a rerun resumes; ``on_checkpoint`` is called with each
    saved file (the CLI copies it to the bucket). ``base_model_id`` is the id recorded in
    ``adapter_config.json`` (defaults to ``config.local_model``), because the path trained on is usually
    a local copy of a real model. ``report`` is the shard's validation report when the caller already
    has it (saves a second pass over a large shard).

    ``base`` is a model already loaded by ``load_base`` (a group trains several adapters on one load;
    its device and precision then apply): the adapter is taken out again when this returns or fails,
    so the next trait starts from the same weights. ``base_losses`` caches the base model's held-out
    losses across such a group (the base scores an example set the same whichever adapter is off).
    """
    stream = log if log is not None else sys.stderr
    shard_path, out_path = Path(shard), Path(out)
    if report is None:  # the CLI validates before importing torch and hands its report over
        report = require_valid(shard_path)
    if out_path.exists() and not out_path.is_dir():
        raise TrainInputError(f"--out {out_path} exists and is not a directory; pass a directory path")
    for flag, value, low in (
        ("--max-steps", max_steps, 1),
        ("--max-length", max_length, 8),
        ("--checkpoint-every", checkpoint_every, 1),
    ):
        if value is not None and value < low:
            raise TrainInputError(f"{flag} must be at least {low}, got {value}")
    shared = base is not None
    if base is not None:
        base.require_same(config)
    runtime = base.runtime if base is not None else resolve(device, precision)
    seq_len = max_length or config.max_seq_length
    seed = config.random_seed if seed is None else seed
    micro, accum = plan_batches(
        config.batch_size,
        micro_batch or (DEFAULT_MICRO_BATCH_GPU if runtime.cuda else DEFAULT_MICRO_BATCH_CPU),
    )
    if base is None:
        base = load_base(config, runtime=runtime)
    elif runtime.cuda:  # this trait's peak: the base's weights stay, the last adapter's step not
        torch.cuda.reset_peak_memory_stats()
    tokenizer = base.tokenizer
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
        examples, dropped = encode([records[i] for i in split.train], max_length=seq_len)
        held_out, _ = encode([records[i] for i in split.held_out], max_length=seq_len)
        opposite = (
            opposite_held_out(
                shard_path,
                tokenizer,
                fmt,
                config.eval_fraction,
                train_on_inputs=config.train_on_inputs,
                max_length=seq_len,
            )
            if held_out
            else (None, [])
        )
    except ValueError as exc:  # a template that cannot locate assistant turns
        raise ModelLoadError(f"{config.local_model!r}: {exc}") from None
    if not examples:
        raise TrainInputError(
            f"none of the {report.num_examples} examples in {shard_path} has a token to learn from within "
            f"{seq_len} tokens; shorten the prompts or raise max_seq_length"
        )
    if dropped:
        print(f"note: {dropped} example(s) dropped: nothing to learn within {seq_len} tokens", file=stream)

    base.intact = not shared  # until the adapter is out again (Base.release)
    model = _with_lora(base.model, config, seed, checkpointing=runtime.cuda)
    try:
        collator = DynamicPaddingCollator(
            pad_token_id(tokenizer), pad_to_multiple_of=8 if runtime.cuda else None
        )
        steps_per_epoch = math.ceil(len(examples) / config.batch_size)
        total = max_steps if max_steps is not None else config.n_epochs * steps_per_epoch
        resume_dir = Path(checkpoint_dir) if checkpoint_dir else ckpt.default_dir(out_path)
        settings = LoopSettings(
            batch_size=config.batch_size,
            micro_batch=micro,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            seed=seed,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            warmup_steps=math.ceil(total * config.warmup_ratio),
            lr_scheduler_type=config.lr_scheduler_type,
            min_lr_ratio=config.min_lr_ratio,
            scheduler_num_cycles=config.scheduler_num_cycles,
            checkpoint_every=checkpoint_every,
            checkpoint_dir=resume_dir,
            on_checkpoint=on_checkpoint,
            fingerprint=ckpt.fingerprint(
                config_hash=config.config_hash(),
                shard_sha256=report.sha256,
                seed=seed,
                max_length=seq_len,
                batch_size=config.batch_size,
                total_steps=total,
                steps_per_epoch=steps_per_epoch,
            ),
        )

        out_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
        try:
            print(
                f"training {len(examples)} {fmt} examples from {shard_path.name} ({len(held_out)} "
                f"held out) on {runtime.device} ({runtime.device_name}) in {runtime.precision}"
                + (f" with a {config.quantization} base" if config.quantization else "")
                + f": micro-batch {micro} x accumulation {accum} = batch {config.batch_size}, "
                f"{config.n_epochs} epoch(s), {total} step(s)",
                file=stream,
                flush=True,
            )
            loop = TrainLoop(model, [e.as_feature() for e in examples], collator, runtime, settings, stream)
            # Libraries print progress to stdout; the CLI's last stdout line must stay the JSON result.
            with contextlib.redirect_stdout(stream):
                run = loop.run()
            eval_started = time.perf_counter()
            evaluation = eval_figures(
                model,
                held_out,
                pad_token_id=pad_token_id(tokenizer),
                micro=run.micro_batch,
                opposite=opposite,
                autocast=runtime.autocast,
                base_losses=base_losses,
            )
            eval_seconds = time.perf_counter() - eval_started
            if evaluation:
                print(f"held-out eval: {json.dumps(evaluation, sort_keys=True)}", file=stream, flush=True)

            model.save_pretrained(staging, safe_serialization=True)
            with contextlib.suppress(FileNotFoundError):
                (staging / "README.md").unlink()  # peft's model card: not part of the adapter contract
            fix_base_model(staging / "adapter_config.json", base_model_id or config.local_model)

            train_loss = sum(s["loss"] for s in run.steps) / len(run.steps) if run.steps else 0.0
            metrics: dict[str, Any] = {
                "steps": run.steps,
                "train_loss": train_loss,
                "final_loss": run.steps[-1]["loss"] if run.steps else train_loss,
                "real_tokens": collator.real_tokens,
                "padded_tokens": collator.padded_tokens,
                "tokens_per_second": collator.real_tokens / run.wall_seconds if run.wall_seconds > 0 else 0.0,
                "wall_seconds": run.wall_seconds,
                "eval_seconds": eval_seconds,
                "num_examples": len(examples),
                "dropped_examples": dropped,
                "eval": evaluation,
                "eval_fraction": config.eval_fraction,
                "format": fmt,
                "micro_batch": run.micro_batch,
                "grad_accum": math.ceil(config.batch_size / run.micro_batch),
                "batch_size": config.batch_size,
                "max_steps": max_steps,
                "seed": seed,
                "device": runtime.device,
                "device_name": runtime.device_name,
                "precision": runtime.precision,
                "quantization": config.quantization,
                "oom_backoffs": run.backoffs,
                "resumed_from_step": run.resumed_from_step,
                "peak_memory_bytes": peak_memory(runtime),
                "settings": trained_settings(config, runtime, settings, seq_len, checkpoint_every),
                "shard_sha256": report.sha256,
                "config_hash": config.config_hash(),
            }
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            digest = sha256_file(staging / "adapter_model.safetensors")
            # mkdtemp and safetensors make files private; an adapter is meant to be read by others.
            os.chmod(staging, 0o755)
            for name in os.listdir(staging):
                os.chmod(staging / name, 0o644)
            publish_dir(staging, out_path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ckpt.remove(resume_dir)  # the adapter is published: nothing left to resume
        return TrainResult(
            adapter_dir=out_path.resolve(),
            sha256=digest,
            num_examples=len(examples),
            final_loss=metrics["final_loss"],
            metrics=metrics,
        )
    finally:
        if shared:  # the next trait of the group starts from the untouched base
            base.release(model)


def _with_lora(model: Any, config: TrainingConfig, seed: int, *, checkpointing: bool) -> Any:
    """The base wrapped with the config's LoRA; its init draws from the seeded global RNG."""
    if checkpointing:  # recompute each block's activations in the backward: GPU memory is the limit there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    transformers.set_seed(seed)
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
    return model
