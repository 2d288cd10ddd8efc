"""The held-out split of a shard: which examples an adapter is evaluated on, never trained on.

Chosen by content, not position: an example is held out when the sha256 of its canonical JSON is among
the smallest ``k`` digests of the shard. So the split is the same on every machine and every run and
does not depend on line order; an appended example moves at most one earlier one across the line; both
backends that use it hold out the same examples; and identical duplicates always land on the same side (a
duplicate on both sides would leak the answer into the evaluation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trait_lora.core.keys import sha256_json

DEFAULT_EVAL_FRACTION = 0.1
MAX_EVAL_FRACTION = 0.5
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
    n = len(records)
    k = eval_count(n, fraction)
    if k == 0:
        return EvalSplit(train=tuple(range(n)), held_out=())
    digests = [sha256_json(r) for r in records]
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
