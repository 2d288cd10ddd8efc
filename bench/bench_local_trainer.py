"""Benchmark: the local trainer's real tokens/s against a naive HF Trainer + peft baseline, in one run.

Why: on CPU (and on a GPU with a small model) the time goes to padding, not to the framework. The trainer
pads each micro-batch only to its own longest example and groups similar lengths; the baseline pads every
example to the shard's longest and samples at random, which is what a straightforward script does. Both
train the same LoRA (same model, labels, batch, micro-batch, accumulation, epochs, lr, seed) on the same
variable-length shard, each in its own process so that peak RSS is per run.

Figures printed:
* real (non-pad) tokens/s of each and their ratio (goal: >= 1.5x);
* MFU = useful FLOP/s / the fp32 matmul peak measured here with a large ``torch.matmul`` loop. Useful FLOPs
  count only real tokens: per token 4 x (matmul weight params: every ``nn.Linear`` in the blocks plus the
  LM head; forward 2N, backward through activations 2N, no weight gradients for frozen weights) plus
  attention 12 x layers x seq x hidden (QK^T and AV, forward + 2x backward, seq = the example's own length,
  no causal halving), LoRA's own FLOPs ignored (< 1%). The padded baseline also computes on padding;
  that work counts as waste, not as FLOPs;
* peak RSS of each training process (``wait4`` rusage).

Usage: ``.venv/bin/python bench/bench_local_trainer.py [--examples 320] [--hidden 256] [--layers 4]``.
No asserts: it prints figures and PASS/MISS against the goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATIO_GOAL = 1.5
BATCH_SIZE = 32
MICRO_BATCH = 8
LEARNING_RATE = 2e-4
SEED = 42

# About 170 common words, so the BPE has something to learn and sequences look like prose.
VOCAB_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
    "he",
    "be",
    "by",
    "at",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "her",
    "all",
    "she",
    "there",
    "would",
    "their",
    "we",
    "him",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "wisdom",
    "patience",
    "calm",
    "kindness",
    "courage",
    "honesty",
    "humility",
    "curiosity",
    "doubt",
    "reflect",
    "listen",
    "learn",
    "careful",
    "thought",
    "answer",
    "question",
)


def write_variable_shard(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Chat examples whose reply lengths are log-uniform from a few words to ~350: short-heavy, long tail."""
    rng = random.Random(seed)

    def sentence(words: int) -> str:
        return " ".join(rng.choice(VOCAB_WORDS) for _ in range(words)).capitalize() + "."

    lengths = []
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            reply_words = int(math.exp(rng.uniform(math.log(4), math.log(350))))
            lengths.append(reply_words)
            record = {
                "messages": [
                    {"role": "system", "content": "You are a wise assistant."},
                    {"role": "user", "content": sentence(rng.randint(4, 24))},
                    {"role": "assistant", "content": sentence(reply_words)},
                ]
            }
            fh.write(json.dumps(record) + "\n")
    return {"min_reply_words": min(lengths), "max_reply_words": max(lengths), "examples": n}


def run_child(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one training process; return its exit code, output and peak RSS (this child only)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return {
            "rc": proc.returncode,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
            "process_seconds": elapsed,
        }


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """fp32 matmul throughput with torch's default threads: the roofline MFU is measured against."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best / 1e9


def model_flop_counts(model_dir: Path) -> dict[str, int]:
    """Matmul weight parameters (blocks' Linear layers + LM head), layers and hidden size."""
    config = json.loads((model_dir / "config.json").read_text())
    d = config["hidden_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or d // heads
    ff = config["intermediate_size"]
    per_layer = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * ff
    matmul_params = config["num_hidden_layers"] * per_layer + d * config["vocab_size"]
    return {"matmul_params": matmul_params, "layers": config["num_hidden_layers"], "hidden": d}


def useful_flops(lengths: list[int], counts: dict[str, int], epochs: int) -> float:
    """Σ over real tokens of 4·N + 12·L·seq·d, seq being each example's own length (see module doc)."""
    n, layers, d = counts["matmul_params"], counts["layers"], counts["hidden"]
    per_epoch = sum(length * (4 * n + 12 * layers * length * d) for length in lengths)
    return float(per_epoch * epochs)


def naive_worker(args: argparse.Namespace) -> int:
    """The baseline: same labels and hyperparameters, but pad-to-max and random order, stock collator."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, Trainer, TrainingArguments

    from trait_lora.core.shards.validation import iter_examples
    from trait_lora.train.data import IGNORE_INDEX, encode_records

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, dtype=torch.float32)
    examples, _ = encode_records(
        tokenizer, iter_examples(args.shard), "chat", train_on_inputs=False, max_length=4096
    )
    longest = max(len(e.input_ids) for e in examples)
    pad = tokenizer.pad_token_id
    dataset = []
    for e in examples:
        n = len(e.input_ids)
        dataset.append(
            {
                "input_ids": torch.tensor(e.input_ids + [pad] * (longest - n)),
                "attention_mask": torch.tensor([1] * n + [0] * (longest - n)),
                "labels": torch.tensor(e.labels + [IGNORE_INDEX] * (longest - n)),
            }
        )
    real_tokens = 0

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal real_tokens
        batch = {key: torch.stack([f[key] for f in features]) for key in features[0]}
        real_tokens += int(batch["attention_mask"].sum())
        return batch

    transformers.set_seed(args.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    training = TrainingArguments(
        output_dir=str(Path(args.out_json).parent / "naive-trainer"),
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=BATCH_SIZE // args.micro_batch,
        num_train_epochs=args.epochs,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=True,
        train_sampling_strategy="random",
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=collate)
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    Path(args.out_json).write_text(
        json.dumps(
            {
                "real_tokens": real_tokens,
                "padded_tokens": len(dataset) * longest * args.epochs - real_tokens,
                "wall_seconds": wall,
                "tokens_per_second": real_tokens / wall,
                "train_loss": output.training_loss,
                "lengths": [len(e.input_ids) for e in examples],
            }
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=MICRO_BATCH)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    # Internal: the baseline runs in its own process (for its own peak RSS).
    parser.add_argument("--naive-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_worker:
        return naive_worker(args)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-local-trainer-"))
    try:
        return _bench(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> int:
    from trait_lora.core.config import TrainingConfig
    from trait_lora.train.tiny_model import build_tiny_model

    (work / "shards").mkdir(parents=True, exist_ok=True)
    shard = work / "shards" / "bench_plus.jsonl"
    shape = write_variable_shard(shard, args.examples)
    model = build_tiny_model(
        work / "shards", work / "model", hidden=args.hidden, layers=args.layers, heads=4, kv_heads=2
    )
    counts = model_flop_counts(model)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    config = TrainingConfig(
        backend="local",
        local_model=str(model),
        batch_size=BATCH_SIZE,
        n_epochs=args.epochs,
        learning_rate=LEARNING_RATE,
    )

    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at start (other work skews timings)")
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, "
        f"{counts['matmul_params'] / 1e6:.2f}M matmul params; shard: {shape['examples']} chat examples, "
        f"replies {shape['min_reply_words']}-{shape['max_reply_words']} words; batch {BATCH_SIZE} = "
        f"micro {args.micro_batch} x {BATCH_SIZE // args.micro_batch}, {args.epochs} epoch(s)",
        flush=True,
    )
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^3 torch.matmul loop): {peak:.1f} GFLOP/s", flush=True)

    out = work / "ours"
    ours_run = run_child(
        [
            sys.executable,
            "-m",
            "trait_lora.train",
            "--shard",
            str(shard),
            "--out",
            str(out),
            "--config-json",
            json.dumps(config.to_dict()),
            "--micro-batch",
            str(args.micro_batch),
            "--seed",
            str(args.seed),
        ],
        env,
    )
    if ours_run["rc"] != 0:
        print(f"our trainer failed (exit {ours_run['rc']}):\n{ours_run['stderr'][-3000:]}")
        return 1
    ours = json.loads((out / "metrics.json").read_text())

    naive_json = work / "naive.json"
    naive_run = run_child(
        [
            sys.executable,
            __file__,
            "--naive-worker",
            "--shard",
            str(shard),
            "--model",
            str(model),
            "--out-json",
            str(naive_json),
            "--epochs",
            str(args.epochs),
            "--micro-batch",
            str(args.micro_batch),
            "--seed",
            str(args.seed),
        ],
        env,
    )
    if naive_run["rc"] != 0:
        print(f"baseline failed (exit {naive_run['rc']}):\n{naive_run['stderr'][-3000:]}")
        return 1
    naive = json.loads(naive_json.read_text())

    flops = useful_flops(naive["lengths"], counts, args.epochs)
    rows = [
        ("ours (dynamic pad + length groups)", ours, ours_run),
        ("naive (pad to max, random)", naive, naive_run),
    ]
    print(
        f"\n{'run':36} {'real tok':>9} {'pad tok':>9} {'wall s':>7} {'real tok/s':>10} {'GFLOP/s':>8} "
        f"{'MFU':>6} {'peak RSS':>9}"
    )
    for name, metrics, run in rows:
        achieved = flops / metrics["wall_seconds"] / 1e9
        print(
            f"{name:36} {metrics['real_tokens']:>9} {metrics['padded_tokens']:>9} "
            f"{metrics['wall_seconds']:>7.1f} {metrics['tokens_per_second']:>10.0f} {achieved:>8.1f} "
            f"{achieved / peak:>6.1%} {run['peak_rss_mb']:>7.0f}MB"
        )
    ratio = ours["tokens_per_second"] / naive["tokens_per_second"]
    verdict = "PASS" if ratio >= RATIO_GOAL else "MISS"
    print(f"\nreal tokens/s ratio ours/naive: {ratio:.2f}x (goal >= {RATIO_GOAL}x): {verdict}")
    print(
        f"useful FLOPs per epoch: {flops / args.epochs / 1e12:.3f} TFLOP "
        f"(4 x {counts['matmul_params']} matmul params + 12 x {counts['layers']} layers x seq x "
        f"{counts['hidden']} per real token)"
    )
    if args.workdir is not None:
        print(f"inputs and outputs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
