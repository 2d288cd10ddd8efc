"""Stage-3 intake of a mapping on object storage: verify and stack exactly as in a folder, then
publish the dataset without a rename.

The mapping and what it names (each adapter's content-addressed folder, its metrics) are copied to a
temp folder, where ``intake.build_intake`` checks and stacks them unchanged. The dataset is then
written once at ``hypernetwork_dataset/<mapping sha256>/`` (create-if-absent) and
``hypernetwork_dataset/current.json`` is swapped to point at it, so a reader that follows the pointer
sees the previous dataset or the new one, never half of one. Only keys the mapping names under its own
location are read (the schema keeps ``adapter_path`` relative and plain).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from trait_lora.core.adapter.content import create_once
from trait_lora.core.adapter.spec import ADAPTER_FILES
from trait_lora.core.errors import IntakeError
from trait_lora.core.handoff.intake import DATASET_DIR, INDEX_FILE, METRICS_DIR, STACK_FILE, build_intake
from trait_lora.core.storage.opener import is_url, open_location
from trait_lora.core.storage.records import swap
from trait_lora.core.storage.store import Store, StoreError, check_key

POINTER = f"{DATASET_DIR}/current.json"


def build_intake_at(location: str) -> dict[str, Any]:
    """``build_intake`` for a mapping in a folder or at an object-storage URL; the task's summary."""
    if not is_url(location):
        return build_intake(location).to_dict()
    base, _, name = location.rstrip("/").rpartition("/")
    store = open_location(base, what="mapping_path")
    with tempfile.TemporaryDirectory(prefix="trait-lora-intake-") as tmp:
        root = Path(tmp)
        _mirror(store, name, root, location)
        result = build_intake(root / name)
        folder = f"{DATASET_DIR}/{result.mapping_sha256}"
        for file in (STACK_FILE, INDEX_FILE):  # the index last: its presence means "complete"
            create_once(store, f"{folder}/{file}", (result.dataset_dir / file).read_bytes())
    pointer = {
        "mapping_sha256": result.mapping_sha256,
        "dataset": folder,
        "stack_file": f"{folder}/{STACK_FILE}",
        "index_file": f"{folder}/{INDEX_FILE}",
        "traits": list(result.traits),
    }
    swap(store, POINTER, what="the dataset pointer", change=lambda _old: pointer)
    return {
        **result.to_dict(),
        "mapping_path": location,
        "dataset_dir": store.url(folder),
        "adapters_path": store.url(f"{folder}/{STACK_FILE}"),
        "index_path": store.url(f"{folder}/{INDEX_FILE}"),
        "pointer": store.url(POINTER),
    }


def _mirror(store: Store, name: str, root: Path, location: str) -> None:
    """Copy the mapping and every object it names into ``root``, keeping their relative keys."""
    blob = store.read(check_key(name))
    if blob is None:
        raise IntakeError(f"{location}: no mapping here; run a training DAG to publish it")
    (root / name).write_bytes(blob.data)
    try:
        traits = json.loads(blob.data).get("traits") or {}
    except (ValueError, AttributeError):
        return  # build_intake names what is wrong with the file
    for trait, entry in traits.items() if isinstance(traits, dict) else ():
        folder = entry.get("adapter_path") if isinstance(entry, dict) else None
        keys = [f"{METRICS_DIR}/{trait}.json"]
        if isinstance(folder, str):
            keys += [f"{folder}/{file}" for file in ADAPTER_FILES]
        for key in keys:
            try:
                found = store.read(check_key(key))
            except StoreError:
                continue  # an unusable key: build_intake reports the adapter as missing
            if found is not None:
                target = root / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(found.data)
