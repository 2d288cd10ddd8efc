"""Benchmark: peak memory of one optimizer step for the Llama-3.1-8B shape, bf16 and 4-bit, and the cards
it fits.

Why: the stage we replace trains Llama-3.1-8B "on an NVIDIA GPU with 16 GB+ VRAM"; this says which
settings fit which card. The model is the 8B shape (hidden 4096, 32 heads, 8 kv heads, intermediate
14336, vocabulary 128256, 32 layers) with random weights built here (nothing is downloaded), trained the
way the trainer trains it: the seed's LoRA (r=4, alpha 16, q_proj/v_proj), gradient checkpointing, the
chunked loss (``trait_lora.train.loss``), AdamW, one optimizer step through the trainer's own
``TrainLoop._step``, in bf16 and with an NF4 (double-quantized) base.

* With CUDA: the whole 32-layer model on the device; the step's peak is ``torch.cuda.max_memory_reserved``
  (what the allocator took from the card) for each micro-batch. The peak of a step does not depend on
  how many micro-batches it accumulates (gradients are LoRA-sized), so one micro-batch per step is
  measured unless ``--accumulate`` runs the whole batch of 32.
* Without CUDA (this machine): one and two decoder layers of that exact shape (with the full vocabulary's
  embedding and head) run a real step at two short sequences, their tensors counted exactly by torch's
  ``MemTracker`` (every live storage; RSS would mix in the allocator's caching); the figures are
  extrapolated to 32 layers and to micro-batch x 4096 tokens, as printed under the table. A short
  sequence keeps the CPU run to a few minutes; the output says so.

A card fits when the peak plus ``CUDA_OVERHEAD_GIB`` (CUDA context, cuBLAS workspace, fragmentation)
is at most the card's memory. Usage: ``.venv/bin/python bench/bench_memory.py [--seq 4096]``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import torch  # noqa: E402

GIB = 1024**3
LAYERS = 32
SHAPE = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
BATCH = 32
CARDS_GB = (16, 24, 40, 80)
CUDA_OVERHEAD_GIB = 1.0
MICROS = (1, 2, 4, 8)
CPU_SEQS = (128, 256)
CPU_LOSS_CHUNK = (
    16  # tokens per loss chunk in the CPU runs: the layers' memory, not the head's, decides there
)


def build(layers: int, quantized: bool, device: str, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The 8B shape with ``layers`` decoder layers, random weights in ``dtype``, the seed's LoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    config = LlamaConfig(**SHAPE, num_hidden_layers=layers, attn_implementation="sdpa")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.02, 0.02)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
    if quantized:
        _quantize_blocks(model, device, dtype)
    model.config.use_cache = False
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="none")
    return get_peft_model(model, lora)


def _quantize_blocks(model: Any, device: str, dtype: torch.dtype) -> None:
    """Every linear layer of the blocks in NF4 with double quantization, as ``quantization: 4bit`` loads."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                quantized = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    compute_dtype=dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                quantized.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
                ).to(device)
                quantized.support_avx512bf16_for_cpu = False  # as the trainer: training kernels throughout
                setattr(parent, name, quantized)


def weight_bytes(model: Any) -> int:
    """Bytes of every parameter and buffer, quantization statistics included (each storage once)."""
    seen: dict[int, int] = {}

    def add(tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            for value in state.as_dict(packed=True).values():
                add(value)
    return sum(seen.values())


def one_step(
    model: Any, device: str, micro: int, seq: int, accumulate: bool, precision: str = "bf16"
) -> tuple[Any, Any]:
    """A TrainLoop over random token sequences and the indices of one optimizer step."""
    from trait_lora.train.data import DynamicPaddingCollator
    from trait_lora.train.loop import LoopSettings, TrainLoop
    from trait_lora.train.precision import Runtime

    batch = BATCH if accumulate else micro
    generator = torch.Generator().manual_seed(1)
    features = []
    for _ in range(batch):
        ids = torch.randint(0, SHAPE["vocab_size"], (seq,), generator=generator).tolist()
        features.append({"input_ids": ids, "labels": ids})  # every token labelled: the costliest case
    runtime = Runtime(device, precision, device)
    settings = LoopSettings(
        batch_size=batch,
        micro_batch=micro,
        total_steps=1,
        steps_per_epoch=1,
        seed=0,
        learning_rate=2e-4,
        weight_decay=0.0,
        max_grad_norm=1.0,
        warmup_steps=0,
        lr_scheduler_type="linear",
        min_lr_ratio=0.0,
        scheduler_num_cycles=0.5,
    )
    collator = DynamicPaddingCollator(0, pad_to_multiple_of=8 if device == "cuda" else None)
    return TrainLoop(model, features, collator, runtime, settings, sys.stderr), list(range(batch))


@dataclass(frozen=True)
class Peak:
    weights: int
    step: int  # peak bytes during the step, weights included


def measure_cuda(quantized: bool, micros: tuple[int, ...], seq: int, accumulate: bool) -> dict[int, Peak]:
    from trait_lora.train import TrainOutOfMemory

    model = build(LAYERS, quantized, "cuda")
    weights = weight_bytes(model)
    out: dict[int, Peak] = {}
    for micro in micros:
        loop, indices = one_step(model, "cuda", micro, seq, accumulate)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            loop._step(indices, 2e-4)
            torch.cuda.synchronize()
            # The trainer halves its micro-batch when a step runs out of memory: then this one did not fit.
            out[micro] = Peak(weights, torch.cuda.max_memory_reserved() if loop.micro == micro else -1)
        except TrainOutOfMemory:
            out[micro] = Peak(weights, -1)
        del loop
    del model
    torch.cuda.empty_cache()
    return out


def _tracker() -> Any:
    """torch's MemTracker, minus its gradient hooks on every parameter (it assumes all of them train;
    a hook on a frozen weight raises). Gradients are still counted, as the tensors they are."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class FrozenBaseTracker(MemTracker):
        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> Any:
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    return FrozenBaseTracker()


def measure_cpu(quantized: bool, layers: int, seqs: tuple[int, ...]) -> tuple[int, dict[int, int]]:
    """(weight bytes, {seq: peak tensor bytes of one step at micro-batch 1}) for ``layers`` layers."""
    from trait_lora.train import loss

    model = build(layers, quantized, "cpu")
    weights = weight_bytes(model)
    peaks: dict[int, int] = {}
    real = loss.label_loss_sum
    loss.label_loss_sum = functools.partial(real, chunk_tokens=CPU_LOSS_CHUNK)
    try:
        for seq in seqs:
            loop, indices = one_step(model, "cpu", 1, seq, accumulate=False)
            tracker = _tracker()
            tracker.track_external(model, loop.optimizer)
            with tracker:
                loop._step(indices, 2e-4)
            peaks[seq] = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    finally:
        loss.label_loss_sum = real
    return weights, peaks


def loss_chunk_bytes(seq_tokens: int = 64) -> float:
    """Peak bytes per token of one chunk of the chunked loss (head + cross-entropy, forward and backward)."""
    head = torch.nn.Linear(SHAPE["hidden_size"], SHAPE["vocab_size"], bias=False, dtype=torch.bfloat16)
    head.requires_grad_(False)
    peaks = []
    for chunk in (seq_tokens // 2, seq_tokens):
        hidden = torch.randn(chunk, SHAPE["hidden_size"], dtype=torch.bfloat16, requires_grad=True)
        targets = torch.randint(0, SHAPE["vocab_size"], (chunk,))
        tracker = _tracker()
        tracker.track_external(head, hidden)
        with tracker:
            from trait_lora.train.loss import _chunk_sum

            with torch.autocast("cpu", dtype=torch.bfloat16):
                value = torch.utils.checkpoint.checkpoint(
                    _chunk_sum, hidden, head.weight, None, targets, None, use_reentrant=False
                )
            value.backward()
        peaks.append(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])
    return (peaks[1] - peaks[0]) / (seq_tokens - seq_tokens // 2)


@dataclass(frozen=True)
class Activations:
    """Per-token activation figures measured on the bf16 model; the frozen weights' storage (bf16 or
    NF4) does not change them, since the activations are bf16 either way."""

    kept_per_layer: float  # bytes per token a checkpointed layer keeps for the backward (its input)
    top_per_token: float  # bytes per token of the recomputed top layer and the hidden states at the head


def extrapolate_cpu(
    quantized: bool,
    seq: int,
    micros: tuple[int, ...],
    per_chunk_token: float,
    chunk: int,
    activations: Activations | None,
) -> tuple[dict[int, Peak], Activations, dict[str, float]]:
    """The 32-layer, ``micro x seq``-token peaks implied by the 1- and 2-layer measurements.

    With gradient checkpointing, a layer keeps its input for the backward (linear in tokens, the same
    for every layer): the 2-layer minus the 1-layer step gives it per token. What is left of the 1-layer
    peak is the recomputed top layer's activations and the hidden states around the head (linear in
    tokens: fitted at two sequence lengths on the bf16 model) plus what does not grow with tokens (for
    4-bit, the dequantized weight of the layer being computed): measured at the longer sequence. The
    loss chunk (a fixed number of tokens, whatever the batch) is measured on its own and added in full,
    although it never coexists with the top layer's recompute: the figure errs on the high side by that.
    """
    s_lo, s_hi = CPU_SEQS
    w1, p1 = measure_cpu(quantized, 1, CPU_SEQS if activations is None else (s_hi,))
    w2, p2 = measure_cpu(quantized, 2, (s_hi,) if activations is None else ())  # 4-bit: its weights only
    if activations is None:
        kept = ((p2[s_hi] - w2) - (p1[s_hi] - w1)) / s_hi
        rest_lo, rest_hi = (p1[s] - w1 - kept * s for s in CPU_SEQS)
        activations = Activations(kept, (rest_hi - rest_lo) / (s_hi - s_lo))
    fixed = p1[s_hi] - w1 - (activations.kept_per_layer + activations.top_per_token) * s_hi
    weights = w1 + (LAYERS - 1) * (w2 - w1)
    out: dict[int, Peak] = {}
    for micro in micros:
        tokens = micro * seq
        kept_total = LAYERS * activations.kept_per_layer * tokens
        top = activations.top_per_token * tokens + fixed
        out[micro] = Peak(weights, int(weights + kept_total + top + per_chunk_token * min(tokens, chunk)))
    facts = {
        "weights_gib": weights / GIB,
        "weights_per_layer_mib": (w2 - w1) / 2**20,
        "kept_per_layer_per_token_kib": activations.kept_per_layer / 1024,
        "top_layer_and_head_per_token_kib": activations.top_per_token / 1024,
        "fixed_mib": fixed / 2**20,
        "loss_chunk_gib": per_chunk_token * chunk / GIB,
    }
    return out, activations, facts


def table(results: dict[str, dict[int, Peak]], seq: int) -> str:
    lines = [
        f"{'base':<6} {'micro x accum':>13} {'weights GiB':>11} {'peak GiB':>9}  "
        + "  ".join(f"{gb:>4} GB" for gb in CARDS_GB),
    ]
    for name, peaks in results.items():
        for micro, peak in peaks.items():
            if peak.step < 0:  # out of memory on the device measured: unknown on larger cards
                device_gib = torch.cuda.get_device_properties(0).total_memory / GIB
                fits = ["  no  " if gb <= device_gib else "   ?  " for gb in CARDS_GB]
                shown = "    > dev"
            else:
                need = peak.step / GIB + CUDA_OVERHEAD_GIB
                fits = [" fits " if need <= gb else "  no  " for gb in CARDS_GB]
                shown = f"{peak.step / GIB:9.1f}"
            accum = f"{micro} x {math.ceil(BATCH / micro)}"
            lines.append(f"{name:<6} {accum:>13} {peak.weights / GIB:11.1f} {shown}  " + "  ".join(fits))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seq", type=int, default=4096, help="tokens per example (the trainer's max_seq_length)"
    )
    parser.add_argument("--micro", type=int, nargs="+", default=list(MICROS), help="micro-batch sizes")
    parser.add_argument("--accumulate", action="store_true", help="CUDA: run the whole batch of 32 per step")
    parser.add_argument("--no-4bit", action="store_true", help="bf16 only (no bitsandbytes)")
    args = parser.parse_args()
    from trait_lora.train.loss import CHUNK_TOKENS

    micros = tuple(args.micro)
    kinds = [("bf16", False)] + ([] if args.no_4bit else [("4bit", True)])
    started = time.perf_counter()
    results: dict[str, dict[int, Peak]] = {}
    print(
        f"Llama-3.1-8B shape ({LAYERS} layers, vocabulary {SHAPE['vocab_size']}), LoRA r=4 alpha 16 on "
        f"q_proj/v_proj, {args.seq} tokens per example, batch {BATCH} = micro-batch x accumulation,\n"
        f"gradient checkpointing, chunked loss ({CHUNK_TOKENS} tokens a chunk), AdamW, bf16 compute "
        "(4bit: an NF4 base with double quantization)"
    )
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for kind, quantized in kinds:
            results[kind] = measure_cuda(quantized, micros, args.seq, args.accumulate)
        how = f"measured on {name}: whole model, max_memory_reserved of one optimizer step"
        if not args.accumulate:
            how += " (one micro-batch per step; the peak does not grow with accumulation)"
        print(how)
    else:
        per_chunk_token = loss_chunk_bytes()
        facts: dict[str, dict[str, float]] = {}
        activations = None
        for kind, quantized in kinds:
            results[kind], activations, facts[kind] = extrapolate_cpu(
                quantized, args.seq, micros, per_chunk_token, CHUNK_TOKENS, activations
            )
        print(
            "no CUDA device: measured on this CPU with 1 and 2 decoder layers of this exact shape at "
            f"micro-batch 1 and {' and '.join(map(str, CPU_SEQS))} tokens (a short sequence keeps this run "
            "to minutes),\nevery live tensor counted by torch's MemTracker, then extrapolated to "
            f"{LAYERS} layers and micro-batch x {args.seq} tokens (see extrapolate_cpu):"
        )
        for kind, values in facts.items():
            print(f"  {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"fits = peak + {CUDA_OVERHEAD_GIB:.1f} GiB (CUDA context, workspaces, fragmentation) <= the card")
    print(table(results, args.seq))
    full_logits = args.seq * SHAPE["vocab_size"] * (2 + 4 + 4) / GIB
    print(
        f"for comparison, the model's own (unchunked) loss holds {full_logits:.1f} GiB of logits per example "
        f"of {args.seq} tokens (bf16 logits, their fp32 copy and its gradient) on top of this"
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
