"""``hypernetwork_data.json``: the one file stage 3 reads.

It is a view of the hash ledger (what is installed and verified) plus the failures of the run that
writes it. Building it from the ledger, not from one run's results, is what keeps a trait's last good
adapter published when a later run fails for it, and keeps traits a filtered run did not touch.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from trait_lora.core.adapter.spec import WEIGHTS_FILE
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import MappingError
from trait_lora.core.hashing import sha256_json
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.shards.catalog import TRAIT_RE, parse_trait
from trait_lora.core.storage.location import parse_location
from trait_lora.core.storage.records import swap_bytes
from trait_lora.core.storage.store import Blob, encode_json

MAPPING_FILE = "hypernetwork_data.json"
MAPPING_VERSION = 2  # 2: per-trait held-out eval figures ("eval", null without a split)
CHECKPOINTS_DIR = "lora_checkpoints"


@cache
def mapping_schema() -> dict[str, Any]:
    text = resources.files("trait_lora.core").joinpath("schemas/hypernetwork_data.schema.json").read_text()
    return json.loads(text)


def validate_mapping(data: dict[str, Any], *, where: str = MAPPING_FILE) -> None:
    import jsonschema  # only when a mapping is written: this module is imported on DAG parse

    errors = sorted(jsonschema.Draft202012Validator(mapping_schema()).iter_errors(data), key=str)
    if errors:
        first = errors[0]
        field = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise MappingError(f"{where}: field {field}: {first.message} ({len(errors)} problem(s))")


def mapping_entry(trait: str, record: dict[str, Any], base_url: str | None = None) -> dict[str, Any]:
    """One trait's entry. ``base_url``: the output location on object storage, whose adapters sit at
    content-addressed folders (the record's ``adapter_path``) and are named by full URL too."""
    axis, direction = parse_trait(trait)
    path = f"{CHECKPOINTS_DIR}/{trait}" if base_url is None else str(record["adapter_path"])
    url = {} if base_url is None else {"adapter_url": f"{base_url.rstrip('/')}/{path}"}
    return {
        **url,
        "trait": trait,
        "axis": axis,
        "direction": direction,
        "adapter_path": path,
        "adapter_sha256": record["adapter_sha256"],
        "shard_sha256": record["shard_sha256"],
        "job_key": record["job_key"],
        "job_id": record.get("job_id"),
        "backend": record.get("backend", "together"),
        "base_model": record.get("base_model", ""),
        **{k: record[k] for k in ("base_model_source", "base_model_revision", "quantization") if k in record},
        "config_hash": record["config_hash"],
        "trained_at": record["trained_at"],
        "num_examples": int(record.get("num_examples") or 1),
        "eval": record.get("eval") if isinstance(record.get("eval"), dict) else None,
    }


def build_mapping(
    output_dir: str | Path,
    config: TrainingConfig,
    *,
    failed: dict[str, str] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The mapping for everything installed under ``output_dir`` plus this run's failures."""
    ledger = Ledger(output_dir)
    base_url = None
    present: set[str] = set()
    if not ledger.local:  # one listing for every trait; adapters are at content-addressed folders
        base_url = parse_location(ledger.store.location).public_url
        present = set(ledger.store.list(f"{CHECKPOINTS_DIR}/"))
    traits: dict[str, Any] = {}
    for trait, record in sorted(ledger.hashes().items()):
        if not TRAIT_RE.fullmatch(trait):
            continue
        if ledger.local:
            installed = (ledger.output_dir / CHECKPOINTS_DIR / trait / WEIGHTS_FILE).is_file()
        else:
            installed = f"{record.get('adapter_path')}/{WEIGHTS_FILE}" in present
        if not installed:
            continue  # recorded but removed by hand: never publish a path that does not exist
        traits[trait] = mapping_entry(trait, record, base_url)
    data = {
        "version": MAPPING_VERSION,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": run_id,
        "base_model": config.base_model,
        "backend": config.backend,
        "config_hash": config.config_hash(),
        "lora": config.lora_settings(),
        "traits": traits,
        "failed": dict(sorted((failed or {}).items())),
    }
    validate_mapping(data)
    return data


# What does not make the mapping "changed" for a consumer: when and by which run it was written, and
# this run's failures (a failed trait keeps its previous adapter, so the data did not change).
VOLATILE_FIELDS = ("generated_at", "run_id", "failed")


def mapping_sha256(data: dict[str, Any]) -> str:
    """A digest of the mapping's content (adapters, settings), stable across runs that change nothing."""
    return sha256_json({k: v for k, v in data.items() if k not in VOLATILE_FIELDS})


def write_mapping(
    output_dir: str | Path,
    config: TrainingConfig,
    *,
    failed: dict[str, str] | None = None,
    run_id: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``publish_mapping`` for a local folder, returning the file's path."""
    path, data, _ = publish_mapping(output_dir, config, failed=failed, run_id=run_id)
    return Path(path), data


def publish_mapping(
    output_dir: str | Path,
    config: TrainingConfig,
    *,
    failed: dict[str, str] | None = None,
    run_id: str | None = None,
) -> tuple[str, dict[str, Any], str | None]:
    """Replace the mapping by a compare-and-swap on the version it was read at; returns its URL, its
    content and the digest of the mapping it replaced (None: there was none, or it was unreadable).

    Stage 3 trusts this file: two publishers (the CLI beside a DAG run) must not interleave, and the
    "changed" decision must compare with exactly the mapping this write replaced."""
    data = build_mapping(output_dir, config, failed=failed, run_id=run_id)
    replaced: list[str | None] = [None]

    def decide(current: Blob | None) -> bytes:
        # an unreadable mapping is replaced like any other (stage 3 cannot use it either)
        replaced[0] = _digest_of(current.data) if current is not None else None
        return encode_json(data)

    ledger = Ledger(output_dir)
    swap_bytes(ledger.store, MAPPING_FILE, what="the mapping", change=decide)
    before = replaced[0]
    if ledger.local:
        ledger.write_snapshots()  # the seed-format ledger files, for tools that read them
    return ledger.store.url(MAPPING_FILE), data, before


def _digest_of(raw: bytes) -> str | None:
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    return mapping_sha256(data) if isinstance(data, dict) else None
