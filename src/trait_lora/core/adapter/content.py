"""Installing an adapter on object storage, where there is no rename: content-addressed keys.

The verified files go to ``lora_checkpoints/<trait>/<adapter sha256>/``, each created once
(create-if-absent), the weights last; nothing ever overwrites them. The trait's hash-ledger record is
then swapped to point at that folder, and the mapping names it: a reader that follows the ledger or
the mapping never meets half an adapter, and a reader that lists the folder early sees at most a
config without weights, which no reader takes for an adapter. Earlier adapters stay where they are
(a mapping stage 3 already read keeps working); removing old folders is an operator's choice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from trait_lora.core.adapter.install import install_adapter, stage_verified
from trait_lora.core.adapter.spec import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    DEFAULT_MAX_BYTES,
    WEIGHTS_FILE,
    AdapterInfo,
    AdapterSpec,
)
from trait_lora.core.errors import AdapterError
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.store import AlreadyExists, Store


def content_folder(trait: str, sha256: str) -> str:
    """The key of a trait's adapter with these weights: ``lora_checkpoints/<trait>/<sha256>``."""
    return f"{CHECKPOINTS_DIR}/{check_trait_name(trait)}/{sha256}"


def install_adapter_to_store(
    source: Path, store: Store, trait: str, spec: AdapterSpec, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str, AdapterInfo]:
    """Verify the adapter at ``source`` (folder or archive) and write it at its content-addressed
    folder; returns the folder's key. A refused adapter writes nothing."""
    source = Path(source)
    if not source.exists():
        raise AdapterError(f"adapter source {source} does not exist; download or train the adapter first")
    with tempfile.TemporaryDirectory(prefix=f"trait-lora-{check_trait_name(trait)}-") as tmp:
        staging = Path(tmp)
        info = stage_verified(source, staging, spec, max_bytes)
        folder = content_folder(trait, info.sha256)
        for name in (CONFIG_FILE, WEIGHTS_FILE):  # weights last: their presence means "complete"
            create_once(store, f"{folder}/{name}", (staging / name).read_bytes())
    return folder, info


def install_adapter_at(
    source: Path, store: Store, trait: str, spec: AdapterSpec
) -> tuple[str, AdapterInfo, str | None]:
    """Install on whichever store holds the outputs: renamed into ``lora_checkpoints/<trait>`` in a
    folder, written once at its content-addressed folder on object storage. Returns where it is, its
    info, and the content-addressed folder the ledger must point at (None in a folder)."""
    if isinstance(store, LocalStore):
        path, info = install_adapter(source, store.root, trait, spec)
        return str(path), info, None
    folder, info = install_adapter_to_store(source, store, trait, spec)
    return store.url(folder), info, folder


def create_once(store: Store, key: str, data: bytes) -> None:
    """Create ``key``; finding it already there with the same bytes is success (a retry, or the same
    adapter installed twice), with other bytes an error that names it."""
    try:
        store.create(key, data)
    except AlreadyExists:
        existing = store.read(key)
        if existing is not None and existing.data == data:
            return
        raise AdapterError(
            f"{store.url(key)} holds other bytes than this adapter's, though its folder is named by the "
            "weights' sha256: something other than trait-lora wrote there. Move that folder aside and "
            "download the adapter again"
        ) from None
