"""The optimisation loop: effective batches, micro-batches that shrink when memory runs out, checkpoints.

A hand-written loop rather than ``transformers.Trainer`` because three things here are about *one
optimizer step*: the loss is normalised by the labelled tokens of the whole effective batch (so the
micro-batch size changes speed and memory, never the maths); an out-of-memory error redoes the step
with half the micro-batch (twice the accumulation) instead of failing the run; and a checkpoint is the
state between two steps. The Trainer owns its step and its batching, so each of these would fight it.

Each epoch's order is ``length_grouped_order(lengths, batch_size, seed + epoch)``, cut into effective
batches of ``batch_size`` (the partial one last), which makes step ``k`` of a run a pure function of the
seed and ``k``: that is what lets a resumed run continue exactly.
"""

from __future__ import annotations

import gc
import math
import os
import re
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from trait_lora.train import TrainOutOfMemory, is_out_of_memory
from trait_lora.train import checkpoint as ckpt
from trait_lora.train import loss as loss_fn
from trait_lora.train.data import IGNORE_INDEX, DynamicPaddingCollator, length_grouped_order
from trait_lora.train.precision import Runtime

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
GIB = 1024**3


@dataclass(frozen=True)
class LoopSettings:
    """Everything that decides the trajectory of a run (the checkpoint fingerprint covers it)."""

    batch_size: int
    micro_batch: int
    total_steps: int
    steps_per_epoch: int
    seed: int
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    warmup_steps: int
    lr_scheduler_type: str
    min_lr_ratio: float
    scheduler_num_cycles: float
    checkpoint_every: int | None = None
    checkpoint_dir: Path | None = None
    on_checkpoint: Callable[[Path], None] | None = None
    fingerprint: str = ""


@dataclass
class LoopResult:
    steps: list[dict[str, Any]]
    micro_batch: int
    backoffs: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    wall_seconds: float = 0.0


def lr_factor(step: int, s: LoopSettings) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of the configured one.

    Linear warmup from 0, then linear or cosine decay (``scheduler_num_cycles`` cycles, 0.5 = half a
    cosine) towards ``min_lr_ratio``: transformers' formulas, with Together's floor.
    """
    if step < s.warmup_steps:
        return step / max(1, s.warmup_steps)
    progress = (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps)
    if s.lr_scheduler_type == "cosine":
        decay = max(0.0, 0.5 * (1.0 + math.cos(math.pi * s.scheduler_num_cycles * 2.0 * progress)))
    else:
        decay = max(0.0, (s.total_steps - step) / max(1, s.total_steps - s.warmup_steps))
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * decay


def effective_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = length_grouped_order(lengths, batch_size, seed + epoch)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _labelled(feature: dict[str, list[int]]) -> int:
    return sum(1 for label in feature["labels"][1:] if label != IGNORE_INDEX)  # next-token targets


class TrainLoop:
    """One run's optimizer, loss scaler and step loop over ``features`` (``Encoded.as_feature()``)."""

    def __init__(
        self,
        model: Any,
        features: Sequence[dict[str, list[int]]],
        collator: DynamicPaddingCollator,
        runtime: Runtime,
        settings: LoopSettings,
        log: TextIO,
    ) -> None:
        self.model = model
        self.features = list(features)
        self.lengths = [len(f["input_ids"]) for f in self.features]
        self.collator = collator
        self.runtime = runtime
        self.settings = settings
        self.log = log
        self.micro = settings.micro_batch
        self.backoffs: list[dict[str, Any]] = []
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable,
            lr=settings.learning_rate,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            weight_decay=settings.weight_decay,
        )
        self.scaler = runtime.grad_scaler()

    def run(self) -> LoopResult:
        s = self.settings
        step, steps = self._resume()
        resumed = step or None
        self.model.train()
        started = time.perf_counter()
        cached: tuple[int, list[list[int]]] | None = None
        while step < s.total_steps:
            epoch, index = divmod(step, s.steps_per_epoch)
            if cached is None or cached[0] != epoch:
                cached = (epoch, effective_batches(self.lengths, s.batch_size, s.seed, epoch))
            rate = s.learning_rate * lr_factor(step, s)
            loss = self._step(cached[1][index], rate)
            step += 1
            epochs = epoch + (index + 1) / s.steps_per_epoch
            steps.append({"step": step, "loss": loss, "learning_rate": rate, "epoch": epochs})
            elapsed = max(time.perf_counter() - started, 1e-9)
            print(
                f"step {step}/{s.total_steps} loss {loss:.4f} lr {rate:.3g} "
                f"tokens/s {self.collator.real_tokens / elapsed:.0f}",
                file=self.log,
                flush=True,
            )
            if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.total_steps:
                self._save(step, steps)
        return LoopResult(steps, self.micro, self.backoffs, resumed, time.perf_counter() - started)

    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        """(steps done, their log): from this run's checkpoint when there is one, else (0, [])."""
        s = self.settings
        state = (
            ckpt.load(s.checkpoint_dir, fingerprint=s.fingerprint, log=self.log) if s.checkpoint_dir else None
        )
        if state is None:
            return 0, []
        ckpt.restore(state, model=self.model, optimizer=self.optimizer, scaler=self.scaler)
        self.micro = int(state["progress"]["micro_batch"])  # a step that did not fit will not fit now
        self.backoffs = list(state["progress"]["backoffs"])
        step = int(state["step"])
        print(f"resuming from the checkpoint after step {step}/{s.total_steps}", file=self.log, flush=True)
        return step, list(state["progress"]["steps"])

    def _save(self, step: int, steps: list[dict[str, Any]]) -> None:
        s = self.settings
        if s.checkpoint_dir is None:
            return
        progress = {"steps": steps, "micro_batch": self.micro, "backoffs": self.backoffs}
        saved = ckpt.save(
            s.checkpoint_dir,
            fingerprint=s.fingerprint,
            step=step,
            model=self.model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            progress=progress,
        )
        if s.on_checkpoint is not None:
            s.on_checkpoint(saved)

    def _step(self, indices: Sequence[int], rate: float) -> float:
        """One optimizer step over the effective batch ``indices``; halves the micro-batch on OOM."""
        features = [self.features[i] for i in indices]
        n_items = max(1, sum(_labelled(f) for f in features))
        counters = (self.collator.real_tokens, self.collator.padded_tokens)
        while True:
            failure = None
            try:
                loss = self._accumulate(features, n_items)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if failure is None:
                break
            # Outside the except block, so the traceback's tensors are gone before memory is reclaimed.
            self.optimizer.zero_grad(set_to_none=True)
            self.collator.real_tokens, self.collator.padded_tokens = counters
            gc.collect()
            if self.runtime.cuda:
                torch.cuda.empty_cache()
            if self.micro == 1:
                raise TrainOutOfMemory(self._oom_message(failure, features))
            old, self.micro = self.micro, self.micro // 2
            self.backoffs.append({"micro_batch": old, "to": self.micro, "error": failure[:200]})
            print(
                f"note: out of memory at micro-batch {old}; redoing this step with micro-batch {self.micro} "
                f"(accumulation {math.ceil(len(features) / self.micro)}; the step's maths is unchanged)",
                file=self.log,
                flush=True,
            )
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.scaler.unscale_(self.optimizer)
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _accumulate(self, features: Sequence[dict[str, list[int]]], n_items: int) -> float:
        """Forward and backward over the micro-batches; the gradient of the batch's mean token loss."""
        device = self.runtime.device
        total = 0.0
        for start in range(0, len(features), self.micro):
            batch = self.collator(list(features[start : start + self.micro]))
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with self.runtime.autocast():
                summed, _ = loss_fn.label_loss_sum(
                    self.model, batch["input_ids"], batch["attention_mask"], batch["labels"]
                )
                loss = summed / n_items
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        return total

    def _oom_message(self, failure: str, features: Sequence[dict[str, list[int]]]) -> str:
        longest = max(len(f["input_ids"]) for f in features)
        hint = (
            f'set quantization to "4bit", lower max_seq_length (this batch\'s longest example has {longest} '
            "tokens) or train on a device with more memory"
        )
        if self.runtime.cuda:
            props = torch.cuda.get_device_properties(0)
            peak = torch.cuda.max_memory_allocated()
            asked = _requested_bytes(failure)
            need = f"more than {(peak + asked) / GIB:.1f} GiB" if asked else f"more than {peak / GIB:.1f} GiB"
            return (
                f"out of memory on {props.name} ({props.total_memory / GIB:.1f} GiB) even at micro-batch 1: "
                f"one step needs {need} (peak {peak / GIB:.1f} GiB allocated, then {failure}); {hint}"
            )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return (
            f"out of memory on the CPU even at micro-batch 1: one step needs more than {rss / GIB:.1f} GiB "
            f"(the peak this process reached; the machine has {ram / GIB:.1f} GiB): {failure}; {hint}"
        )


def _requested_bytes(message: str) -> int:
    """The failed allocation in CUDA's "Tried to allocate 2.00 GiB" message (0 when absent)."""
    found = re.search(r"Tried to allocate ([\d.]+) (KiB|MiB|GiB|TiB|B)", message)
    if not found:
        return 0
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": GIB, "TiB": 1024**4}[found.group(2)]
    return int(float(found.group(1)) * scale)
