"""Shards on object storage: listed where they live, copied to this worker before they are read.

Validation, hashing, the eval split and Together's upload all read a local file (the SDK uploads from a
path), so a shard on object storage is copied once per worker into a cache beside the temp dir and read
from there. A copy is trusted only for the run that made it: the plan carries the shard's sha256, and
a later step on another worker copies the object again and refuses it if the bytes changed in between.
Only the selected traits are copied; the listing alone decides which traits exist.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trait_lora.core.shards.catalog import (
    SHARD_SUFFIX,
    TRAIT_PATTERN,
    TRAIT_RE,
    Discovery,
    IgnoredFile,
    Shard,
    opposite_trait,
    parse_trait,
)
from trait_lora.core.storage.atomic import atomic_write_bytes
from trait_lora.core.storage.opener import open_location
from trait_lora.core.storage.store import Store, check_key

CACHE_DIR = "trait-lora-shards"


def cache_dir(store: Store, root: str | Path | None = None) -> Path:
    """This worker's folder for copies of one location's shards (per location, so names never clash)."""
    digest = hashlib.sha256(store.location.encode()).hexdigest()[:16]
    return Path(root or tempfile.gettempdir()) / CACHE_DIR / digest


def fetch_shard(store: Store, key: str, cache: Path) -> Path:
    """Copy one shard to ``cache`` (whole or not at all) and return the copy's path."""
    blob = store.read(check_key(key))
    if blob is None:
        raise FileNotFoundError(
            f"shard {store.url(key)} is gone from object storage; restore it, or plan the run again"
        )
    path = cache / key
    if not path.is_file() or path.read_bytes() != blob.data:
        atomic_write_bytes(path, blob.data)
    return path


def discover_remote_shards(
    store: Store, traits: list[str] | None = None, *, cache_root: str | Path | None = None
) -> Discovery:
    """The shards at the top of ``store`` (one listing), the selected ones copied to this worker."""
    cache = cache_dir(store, cache_root)
    found = Discovery(directory=store.location)
    for key in store.list(""):
        if "/" in key:
            continue  # not recursive, like a local shards folder
        name = key
        if not name.endswith(SHARD_SUFFIX):
            found.ignored.append(IgnoredFile(Path(name), f"not a {SHARD_SUFFIX} file"))
            continue
        stem = name[: -len(SHARD_SUFFIX)]
        if not TRAIT_RE.fullmatch(stem):
            found.ignored.append(
                IgnoredFile(Path(name), f"name is not a trait ({TRAIT_PATTERN}); rename it to train it")
            )
            continue
        axis, direction = parse_trait(stem)
        found.shards[stem] = Shard(stem, axis, direction, cache / key, source=store.url(key))
    for shard in found.select(traits):  # unknown names fail here, before anything is copied
        fetch_shard(store, shard.path.name, cache)
    return found


def shard_source(plan: Mapping[str, Any]) -> str:
    """The shard a plan names, as a user should see it: its URL on object storage, else its path."""
    if plan.get("shard_key"):
        return f"{plan['shard_location']}/{plan['shard_key']}"
    return str(plan["shard_path"])


def shard_file(plan: Mapping[str, Any]) -> Path:
    """The shard a plan names, as a local file: the path itself, or (object storage) a fresh copy on
    this worker. The caller compares its sha256 with the plan's: the object may have changed since."""
    if not plan.get("shard_key"):
        return Path(plan["shard_path"])
    store = open_location(str(plan["shard_location"]), what="shards_dir")
    return fetch_shard(store, str(plan["shard_key"]), cache_dir(store))


def opposite_shard_file(plan: Mapping[str, Any]) -> Path | None:
    """The opposite pole's shard beside this worker's copy of the plan's shard, for the held-out
    evaluation's ``own_pole_margin`` (the trainer looks for it next to the shard): copied too when the
    shards live on object storage, so the figure is the same wherever the data lives. None when there
    is no opposite shard; it is a yardstick, so its absence costs the figure, never the trait."""
    if not plan.get("shard_key"):
        return None
    store = open_location(str(plan["shard_location"]), what="shards_dir")
    key = str(plan["shard_key"])
    folder, _, name = key.rpartition("/")
    other = f"{opposite_trait(name[: -len(SHARD_SUFFIX)])}{SHARD_SUFFIX}"
    try:
        return fetch_shard(store, f"{folder}/{other}" if folder else other, cache_dir(store))
    except FileNotFoundError:
        return None
