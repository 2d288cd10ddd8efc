"""Benchmark: the trainer on a CUDA GPU in bf16, fp16 and 4-bit: tokens/s, MFU and peak memory.

Two workloads:
* SmolLM2-135M-Instruct (real weights, offline: ``trait_lora.train.smollm2``) trained by the trainer's own
  ``train_adapter`` on a sample shard, as ``trait-lora train --backend local`` would on a GPU;
* one optimizer step of the Llama-3.1-8B shape (random weights, ``bench_memory.build``), batch 32 =
  micro-batch x accumulation at 4,096 tokens, through the trainer's ``TrainLoop``.

MFU = useful FLOP/s / the device's dense peak in that precision (a table of data-sheet figures; unknown
devices get a measured large-matmul peak instead, and the output says which). Useful FLOPs count real
tokens only: per token 4 x (matmul weight parameters: the blocks' linear layers and the LM head; forward
2N and the backward through activations 2N, frozen weights get no gradient) plus attention
12 x layers x seq x hidden; gradient checkpointing's recompute and LoRA's own FLOPs are not counted. Peak
memory is ``torch.cuda.max_memory_allocated``.

Without CUDA it says so and exits 0. Usage: ``.venv/bin/python bench/bench_gpu.py [--micro 4]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
SHARD = REPO / "include" / "sample_shards" / "joy_plus.jsonl"
# Dense tensor-core peaks (TFLOP/s) from the vendors' data sheets: bf16 and fp16 alike where both exist.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX A6000": 155.0,
    "V100": 125.0,
    "T4": 65.0,
}
PRECISIONS = (("bf16", "bf16", None), ("fp16", "fp16", None), ("4bit", "auto", "4bit"))


def device_peak(precision: str) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from) for this device in ``precision``."""
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_TFLOPS.items():  # the more specific names come first
        if key in name:
            return tflops * 1e12, f"data sheet ({key})"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started, runs = time.perf_counter(), 20
    for _ in range(runs):
        a @ b
    torch.cuda.synchronize()
    return runs * 2 * 8192**3 / (time.perf_counter() - started), "measured 8192^3 matmul"


def useful_flops_per_token(config: Any, seq: int) -> float:
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = hidden * config.num_key_value_heads // config.num_attention_heads
    per_layer = hidden * (2 * hidden + 2 * kv) + 3 * hidden * config.intermediate_size
    matmul = layers * per_layer + hidden * config.vocab_size
    return 4 * matmul + 12 * layers * seq * hidden


def smollm2_runs(micro: int) -> list[dict[str, Any]]:
    from transformers import AutoConfig

    from trait_lora.core.config import TrainingConfig
    from trait_lora.train.smollm2 import ensure_smollm2
    from trait_lora.train.trainer import train_adapter

    model_dir = ensure_smollm2(Path(sys.prefix) / "share" / "trait-lora" / "smollm2")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    rows = []
    for name, precision, quantization in PRECISIONS:
        if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            rows.append({"workload": "SmolLM2-135M", "precision": name, "skipped": "no native bf16"})
            continue
        settings = TrainingConfig(
            backend="local", local_model=str(model_dir), n_epochs=2, quantization=quantization
        )
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as out, open(os.devnull, "w") as quiet:
            result = train_adapter(
                SHARD,
                Path(out) / "adapter",
                settings,
                device="cuda",
                precision=precision,
                micro_batch=micro,
                log=quiet,
            )
        metrics = result.metrics
        gc.collect()  # the trained model goes before the next one loads
        torch.cuda.empty_cache()
        mean_seq = metrics["real_tokens"] / max(1, metrics["num_examples"] * settings.n_epochs)
        flops = useful_flops_per_token(config, int(mean_seq)) * metrics["tokens_per_second"]
        peak, source = device_peak(metrics["precision"])
        rows.append(
            {
                "workload": "SmolLM2-135M",
                "precision": name,
                "trained_in": metrics["precision"],
                "tokens_per_s": round(metrics["tokens_per_second"]),
                "mfu": flops / peak,
                "peak_gib": torch.cuda.max_memory_allocated() / GIB,
                "peak_source": source,
            }
        )
    return rows


def llama8b_step(micro: int, seq: int) -> list[dict[str, Any]]:
    import bench_memory

    rows = []
    for name, precision, quantization in PRECISIONS:
        trained_in = precision if precision != "auto" else "bf16"
        if trained_in == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            trained_in = "fp16"
        dtype = torch.bfloat16 if trained_in == "bf16" else torch.float16
        row: dict[str, Any] = {"workload": "Llama-3.1-8B shape", "precision": name, "trained_in": trained_in}
        model = warm = loop = None
        try:
            model = bench_memory.build(bench_memory.LAYERS, quantization is not None, "cuda", dtype)
            warm, indices = bench_memory.one_step(model, "cuda", micro, seq, False, trained_in)
            warm._step(indices, 2e-4)  # kernels and allocator warmed on one micro-batch
            loop, indices = bench_memory.one_step(model, "cuda", micro, seq, True, trained_in)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            loop._step(indices, 2e-4)
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            tokens = bench_memory.BATCH * seq
            flops = useful_flops_per_token(model.get_base_model().config, seq) * tokens / elapsed
            peak, source = device_peak(trained_in)
            row.update(
                tokens_per_s=round(tokens / elapsed),
                mfu=flops / peak,
                step_s=elapsed,
                peak_gib=torch.cuda.max_memory_allocated() / GIB,
                peak_source=source,
                micro_batch=loop.micro,
                accumulation=math.ceil(bench_memory.BATCH / loop.micro),
            )
        except torch.OutOfMemoryError as exc:
            row["skipped"] = f"out of memory ({str(exc).splitlines()[0][:80]})"
        finally:
            del model, warm, loop
            gc.collect()
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", type=int, default=4, help="micro-batch (the trainer's GPU default: 4)")
    parser.add_argument("--seq", type=int, default=4096, help="tokens per example for the 8B step")
    parser.add_argument("--skip-8b", action="store_true", help="SmolLM2 only (a card under ~24 GB)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: bench_gpu measures GPU training only; nothing to do here")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    rows = smollm2_runs(args.micro)
    if not args.skip_8b:
        rows += llama8b_step(args.micro, args.seq)
    print(f"{'workload':<20} {'precision':<9} {'in':<5} {'tokens/s':>9} {'MFU':>6} {'peak GiB':>9}  note")
    for row in rows:
        if "skipped" in row:
            print(f"{row['workload']:<20} {row['precision']:<9} {'':<32}  {row['skipped']}")
            continue
        note = row["peak_source"] + (f", one step {row['step_s']:.1f} s" if "step_s" in row else "")
        print(
            f"{row['workload']:<20} {row['precision']:<9} {row['trained_in']:<5} {row['tokens_per_s']:>9} "
            f"{row['mfu']:>6.1%} {row['peak_gib']:>9.1f}  {note}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
