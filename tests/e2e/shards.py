"""Small, distinct, valid chat shards for the e2e, the benches and the core tests.

Apart from the rest of the harness so that a test or bench that only needs shards on disk does not
import process, service or HTTP code. Imports nothing of ours.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_shards(
    dest: Path, count: int, *, prefix: str = "axis", examples: int = 4, salt: str = ""
) -> list[str]:
    """``count`` small valid chat shards ``<prefix><i>_plus.jsonl``; every shard's bytes differ.

    Distinct bytes matter: the job key is (shard content, config), so two identical shards would be
    one job (the second trait adopts the first one's job), which is right in production and wrong here.
    ``salt`` makes the bytes differ from another set with the same trait names (another benchmark run).
    """
    dest.mkdir(parents=True, exist_ok=True)
    traits = []
    for i in range(count):
        trait = f"{prefix}{i}_plus"
        lines = [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {j} ({trait}{salt}): plan my week?"},
                        {
                            "role": "assistant",
                            "content": f"Answer {j} in the voice of {trait}: start with what matters most.",
                        },
                    ]
                }
            )
            for j in range(examples)
        ]
        (dest / f"{trait}.jsonl").write_text("\n".join(lines) + "\n")
        traits.append(trait)
    return traits
