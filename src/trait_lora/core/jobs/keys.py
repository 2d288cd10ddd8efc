"""Content keys: a trait is retrained exactly when its shard bytes or its training config change.

The job key is the identity of one paid training job. Its short tag rides in Together's 40-character
``suffix`` so that a job can be found again by listing, even when our own records were lost.
"""

from __future__ import annotations

import hashlib

SUFFIX_MAX = 40
TAG_HEX = 16  # 64 bits of the job key: the part that is never shortened


def job_key(shard_sha256: str, config_hash: str, nonce: str = "") -> str:
    """One key per (shard content, training config): equal keys mean the same adapter.

    ``nonce`` is empty except for a forced retrain, which passes its run id: the forced job then has
    a key of its own (so Together's completed twin is not adopted) that is still stable across
    retries of that run (so a retry adopts the forced job instead of paying for another).
    """
    material = f"trait-lora/v1:{shard_sha256}:{config_hash}"
    if nonce:
        material += f":{nonce}"
    return hashlib.sha256(material.encode()).hexdigest()


def job_tag(key: str) -> str:
    return key[:TAG_HEX]


def job_suffix(trait: str, key: str) -> str:
    """``<trait, shortened>-<tag>`` in at most 40 characters; the tag is never cut."""
    tag = job_tag(key)
    room = SUFFIX_MAX - len(tag) - 1
    readable = trait.replace("_", "-")[:room].rstrip("-")
    return f"{readable}-{tag}"
