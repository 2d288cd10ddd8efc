"""The held-out split of a shard: which examples an adapter is evaluated on, never trained on.

Chosen by content, not position: an example is held out when the sha256 of its canonical JSON is among
the smallest ``k`` digests of the shard. So the split is the same on every machine and every run and
does not depend on line order; an appended example moves at most one earlier one across the line; both
backends that use it hold out the same examples; and identical duplicates always land on the same side (a
duplicate on both sides would leak the answer into the evaluation).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trait_lora.core.hashing import sha256_json
from trait_lora.core.storage.atomic import atomic_writer

MIN_EVAL_EXAMPLES = 2  # a held-out loss over one example is noise
MIN_TRAIN_EXAMPLES = 8  # below this a shard trains on everything: learning comes first


@dataclass(frozen=True)
class EvalSplit:
    train: tuple[int, ...]
    held_out: tuple[int, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.held_out)


def eval_count(n: int, fraction: float) -> int:
    """How many of ``n`` examples to hold out: none when off or when the shard is too small to spare them."""
    if fraction <= 0 or n < MIN_TRAIN_EXAMPLES + MIN_EVAL_EXAMPLES:
        return 0
    wanted = max(MIN_EVAL_EXAMPLES, round(n * fraction))
    return min(wanted, n - MIN_TRAIN_EXAMPLES)


def split_examples(records: Sequence[Any], fraction: float) -> EvalSplit:
    """Indices of the training and held-out examples of ``records`` (each a parsed JSON example)."""
    if eval_count(len(records), fraction) == 0:
        return EvalSplit(train=tuple(range(len(records))), held_out=())
    return split_digests([sha256_json(r) for r in records], fraction)


def split_digests(digests: Sequence[str], fraction: float) -> EvalSplit:
    """``split_examples`` on the examples' digests (what a streaming reader keeps: 64 bytes a line)."""
    n = len(digests)
    k = eval_count(n, fraction)
    if k == 0:
        return EvalSplit(train=tuple(range(n)), held_out=())
    copies = Counter(digests)
    # Whole groups of duplicates, smallest digest first, until k examples are held out.
    chosen: set[str] = set()
    count = 0
    for d in sorted(copies):
        if count >= k or n - count - copies[d] < MIN_TRAIN_EXAMPLES:
            break
        chosen.add(d)
        count += copies[d]
    held = tuple(i for i, d in enumerate(digests) if d in chosen)
    train = tuple(i for i, d in enumerate(digests) if d not in chosen)
    return EvalSplit(train=train, held_out=held)


@dataclass(frozen=True)
class SplitFiles:
    """A shard cut into the two files Together trains and evaluates on, with their sha256."""

    train: Path
    train_sha256: str
    validation: Path
    validation_sha256: str
    num_train: int
    num_validation: int


def write_split_files(shard: Path, fraction: float, dest_dir: Path) -> SplitFiles | None:
    """Write ``<trait>.train.jsonl`` and ``<trait>.validation.jsonl`` (the shard's own lines, in order)
    into ``dest_dir``; None when the shard gets no held-out split. Two streaming passes, each file
    written to a temp name and renamed, so memory stays flat and no half file is ever uploaded."""
    lines = _nonblank_lines(shard)
    digests = [sha256_json(json.loads(line)) for line in lines]
    split = split_digests(digests, fraction)
    if not split.enabled:
        return None
    held = set(split.held_out)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, keep in (("train", lambda i: i not in held), ("validation", lambda i: i in held)):
        target = dest_dir / f"{shard.stem}.{name}.jsonl"
        digest = hashlib.sha256()
        with atomic_writer(target) as fh:
            for i, line in enumerate(_nonblank_lines(shard)):
                if keep(i):
                    data = line if line.endswith(b"\n") else line + b"\n"
                    fh.write(data)
                    digest.update(data)
        out[name] = (target, digest.hexdigest())
    return SplitFiles(
        train=out["train"][0],
        train_sha256=out["train"][1],
        validation=out["validation"][0],
        validation_sha256=out["validation"][1],
        num_train=len(split.train),
        num_validation=len(split.held_out),
    )


def _nonblank_lines(shard: Path) -> Iterator[bytes]:
    with open(shard, "rb") as fh:
        for line in fh:
            if not line.isspace():
                yield line
