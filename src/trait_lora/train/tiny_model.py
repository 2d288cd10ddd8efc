"""A tiny Llama-shaped model and tokenizer, built offline from shard text, for tests, demos and benches.

Nothing can be downloaded on the machines this project is tested on, yet the trainer must be exercised
against the real thing's shape: a ``LlamaForCausalLM`` with grouped-query attention (so ``q_proj`` and
``v_proj`` have different output sizes, as in Llama-3.1-8B), a byte-level BPE tokenizer with the Llama-3
special tokens and a Llama-3 style chat template. The weights are random; only the shapes and the text
pipeline matter.

The build is deterministic (fixed seed) and cached: ``out_dir`` gets a fingerprint of the inputs and
settings, and a later call with the same fingerprint returns the existing model instead of rebuilding, so a
test session or a demo pays for it once.

Usage: ``python -m trait_lora.train.tiny_model --shards-dir DIR --out DIR``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

FINGERPRINT_FILE = "tiny_model.json"
BUILDER_VERSION = 1  # bump when the build recipe changes, so stale caches are rebuilt

BOS = "<|begin_of_text|>"
EOS_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"  # Llama-3.1's own padding token
SPECIAL_TOKENS = (BOS, EOS_TEXT, START_HEADER, END_HEADER, EOT, PAD)

# Llama-3's template, minus the tool-calling and date preamble: each turn is
# <|start_header_id|>role<|end_header_id|>\n\n content (trimmed) <|eot_id|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def _shard_files(shards_dir: Path) -> list[Path]:
    files = sorted(p for p in shards_dir.iterdir() if p.suffix == ".jsonl" and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .jsonl shards in {shards_dir}: the tokenizer is trained on shard text")
    return files


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed record (contents, prompts, completions, texts, roles)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _corpus(files: Sequence[Path]) -> Iterator[str]:
    """Shard text for the tokenizer; unparsable lines are skipped (validation is the trainer's job)."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                yield from _strings(record)


def _fingerprint(files: Sequence[Path], settings: dict[str, Any]) -> dict[str, Any]:
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    blob = json.dumps({"v": BUILDER_VERSION, "settings": settings, "shards": digests}, sort_keys=True)
    return {
        "fingerprint": hashlib.sha256(blob.encode()).hexdigest(),
        "builder_version": BUILDER_VERSION,
        "settings": settings,
        "shards": digests,
    }


def cached_model_dir(out_dir: Path, marker: str, key: str, expected: Any) -> bool:
    """A model directory built earlier from the same inputs: its marker file records ``expected``
    under ``key`` and the files a load needs are there (a half-deleted cache rebuilds)."""
    try:
        stored = json.loads((out_dir / marker).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(stored, dict)
        and stored.get(key) == expected
        and (out_dir / "config.json").is_file()
        and (out_dir / "tokenizer.json").is_file()
        and any(out_dir.glob("*.safetensors"))
    )


def publish_model_dir(staging: Path, target: Path, same_inputs: Any) -> None:
    """Rename a finished ``staging`` directory over ``target``. A concurrent build from the same inputs
    that won the rename (``same_inputs()`` is then true) is as good as ours: ours is dropped."""
    try:
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError:
        if not same_inputs():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _cached(out_dir: Path, fingerprint: str) -> bool:
    return cached_model_dir(out_dir, FINGERPRINT_FILE, "fingerprint", fingerprint)


def build_tokenizer(texts: Iterator[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on ``texts``, wrapped like Llama-3's fast tokenizer (same special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    # Like Llama-3: encoding with special tokens prepends <|begin_of_text|>.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOT,  # Llama-3.1-Instruct ends a reply (and generation) with <|eot_id|>
        pad_token=PAD,
        additional_special_tokens=[EOS_TEXT, START_HEADER, END_HEADER],
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    shards_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int = 3072,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Build (or reuse) a random-init Llama + tokenizer in ``out_dir``; returns ``out_dir``.

    ``kv_heads < heads`` keeps grouped-query attention, so LoRA shapes differ per module as in the real
    model. The result is written to a temp dir beside ``out_dir`` and renamed, so a crash or a concurrent
    build never leaves a half model that the cache check would accept.
    """
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})"
        )
    source = Path(shards_dir)
    target = Path(out_dir)
    files = _shard_files(source)
    settings = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "intermediate": intermediate or _default_intermediate(hidden),
        "vocab_size": vocab_size,
        "max_positions": max_positions,
        "seed": seed,
    }
    stamp = _fingerprint(files, settings)
    if _cached(target, stamp["fingerprint"]):
        return target

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = build_tokenizer(_corpus(files), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=settings["intermediate"],
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with _seeded(torch, seed):
        model = LlamaForCausalLM(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the model is shared by tests and demos
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / FINGERPRINT_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        publish_model_dir(staging, target, lambda: _cached(target, stamp["fingerprint"]))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _default_intermediate(hidden: int) -> int:
    """Llama's MLP ratio (~2.75x hidden), rounded to a multiple of 32 (128 -> 352)."""
    return max(32, round(hidden * 2.75 / 32) * 32)


@contextlib.contextmanager
def _seeded(torch: Any, seed: int) -> Iterator[None]:
    """Seed torch for the weight init without leaking the seed into the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trait_lora.train.tiny_model",
        description="Build a tiny random Llama + BPE tokenizer from shard text, offline (cached).",
    )
    parser.add_argument("--shards-dir", required=True, type=Path, help="directory of .jsonl shards")
    parser.add_argument("--out", required=True, type=Path, help="model directory to create or reuse")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=3072)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = build_tiny_model(
            args.shards_dir,
            args.out,
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.kv_heads,
            vocab_size=args.vocab_size,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
