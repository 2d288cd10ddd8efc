"""Stage-3 intake: verify every adapter a mapping names and stack them into one ready-to-train dataset.

Stage 3 trains a hypernetwork on all adapters at once, so it needs them as one tensor per LoRA weight
with a leading trait axis, in an order it can rely on. Everything is checked before a byte is written
(the sha256 the mapping published, the LoRA settings, identical tensors across traits, both poles of
every axis): a dataset mixing a corrupt or foreign adapter into the others would train silently wrong.

The safetensors file is written without torch or numpy (the core stays light): identical-shape tensors
stack by concatenating their raw bytes in trait order, streamed from file descriptors opened while
verifying, so an adapter swapped in by a concurrent install cannot slip in unverified. The dataset is
built in a hidden directory beside its final place and renamed in, so a reader sees the previous
dataset or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trait_lora.core.adapter.spec import STALE_STAGING_SECONDS, WEIGHTS_FILE, AdapterSpec, TensorInfo
from trait_lora.core.adapter.stack import CHUNK, StackSource, source_from_fd, write_stacked
from trait_lora.core.adapter.verify import read_safetensors_header, verify_adapter_dir
from trait_lora.core.errors import AdapterError, IntakeError, MappingError
from trait_lora.core.handoff.mapping import mapping_sha256, validate_mapping
from trait_lora.core.storage.atomic import fsync_dir

DATASET_DIR = "hypernetwork_dataset"
STACK_FILE = "adapters.safetensors"
INDEX_FILE = "index.json"
INDEX_VERSION = 1
METRICS_DIR = "metrics"
FIX = "retrain it with force_retrain or restore the file"


@dataclass(frozen=True)
class IntakeResult:
    """What an intake wrote; ``to_dict`` is the small JSON a task returns."""

    mapping_path: Path
    dataset_dir: Path
    adapters_path: Path
    index_path: Path
    mapping_sha256: str
    traits: tuple[str, ...]
    num_tensors: int
    num_bytes: int

    def to_dict(self) -> dict[str, Any]:
        out = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return {**out, "traits": list(self.traits), "num_traits": len(self.traits)}


@dataclass(frozen=True)
class _Source:
    """One verified adapter, held open: what is streamed is what was checked."""

    trait: str
    weights: Path
    row: StackSource
    base_model: str | None

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self.row.tensors


def build_intake(mapping_path: str | os.PathLike[str]) -> IntakeResult:
    """Verify every adapter ``mapping_path`` names and write ``hypernetwork_dataset/`` beside it.

    Raises IntakeError (the message starts with the bad trait or axis and says what to do) and leaves
    an earlier dataset untouched when anything is wrong.
    """
    path = Path(mapping_path).resolve()
    mapping = _read_mapping(path)
    traits = sorted(mapping["traits"])  # the fixed row order stage 3 relies on
    if not traits:
        raise IntakeError(f"{path}: the mapping names no adapters; train some traits first")
    _check_pairs(path, mapping, traits)
    lora = mapping["lora"]
    spec = AdapterSpec(r=lora["r"], alpha=lora["alpha"], target_modules=tuple(lora["target_modules"]))
    sources: list[_Source] = []
    try:
        problems: dict[str, str] = {}
        for trait in traits:
            try:
                sources.append(_open_verified(path, mapping, trait, spec))
            except IntakeError as exc:
                problems[trait] = str(exc)
        problems.update(_check_identical(sources))
        if problems:
            bad = [t for t in traits if t in problems]
            raise IntakeError("\n".join(problems[t] for t in bad), bad)
        digest = mapping_sha256(mapping)
        return _write_dataset(path, mapping, digest, sources)
    finally:
        for source in sources:
            os.close(source.row.fd)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntakeError(f"{path}: no mapping here; run a training DAG to publish it") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntakeError(f"{path}: not valid JSON ({exc}); re-run a training DAG to rewrite it") from None
    try:
        validate_mapping(data, where=str(path))
    except MappingError as exc:
        raise IntakeError(f"{exc}; re-run a training DAG to rewrite the mapping") from None
    for trait, entry in data["traits"].items():
        if entry["trait"] != trait:
            raise IntakeError(
                f"{trait} ({path}): its entry says trait {entry['trait']!r}; rewrite the mapping"
            )
    return data


def _check_pairs(path: Path, mapping: dict[str, Any], traits: list[str]) -> None:
    """Stage 3 learns an axis from its two poles: one pole alone is not a usable example."""
    present = set(traits)
    problems, bad = [], []
    for trait in traits:
        axis, direction = mapping["traits"][trait]["axis"], mapping["traits"][trait]["direction"]
        other = f"{axis}_{'minus' if direction == 1 else 'plus'}"
        if other not in present:
            why = mapping["failed"].get(other)
            detail = f"it failed in the last run: {why}" if why else "it was never trained"
            problems.append(
                f"{axis} ({path}): axis {axis} has {trait} but not {other} ({detail}); every axis needs "
                f"both poles: train {other} (shard {other}.jsonl) or remove {trait}"
            )
            bad.append(other)
    if problems:
        raise IntakeError("\n".join(problems), bad)


def _open_verified(path: Path, mapping: dict[str, Any], trait: str, spec: AdapterSpec) -> _Source:
    entry = mapping["traits"][trait]
    directory = path.parent / entry["adapter_path"]
    weights = directory / WEIGHTS_FILE
    if entry["base_model"] and entry["base_model"] != mapping["base_model"]:
        raise IntakeError(
            f"{trait} ({path}): trained on {entry['base_model']!r} but the mapping's base model is "
            f"{mapping['base_model']!r}; retrain it with force_retrain"
        )
    try:
        fd = os.open(weights, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise IntakeError(f"{trait} ({weights}): cannot open the adapter ({exc.strerror}); {FIX}") from None
    try:
        want = entry["adapter_sha256"]
        try:
            info = verify_adapter_dir(directory, spec)
            problem = None
        except AdapterError as exc:
            info, problem = None, f"{trait} ({directory}): {exc}"
        if info is None or info.sha256 != want:
            got = _sha256_fd(fd)  # hashed once more only to tell a changed file from a wrong one
            if got != want:
                raise IntakeError(
                    f"{trait} ({weights}): sha256 {got[:12]}... is not the {want[:12]}... the mapping "
                    f"published (the file changed or is corrupt); {FIX}"
                )
            raise IntakeError(problem or f"{trait} ({weights}): replaced during the intake; run it again")
        row = source_from_fd(fd, read_safetensors_header(weights), str(weights))
        if not _same_file(fd, weights):  # installs rename, never rewrite: same inode, same bytes
            raise IntakeError(f"{trait} ({weights}): replaced during the intake; run it again")
    except BaseException:
        os.close(fd)
        raise
    return _Source(trait, weights, row, info.base_model)


def _sha256_fd(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _same_file(fd: int, path: Path) -> bool:
    a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _signature(source: _Source) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    return tuple((name, t.dtype, t.shape) for name, t in sorted(source.tensors.items()))


def _check_identical(sources: list[_Source]) -> dict[str, str]:
    """Name each adapter that differs from the majority (so one odd adapter is the one named)."""
    if not sources:
        return {}
    problems: dict[str, str] = {}
    signatures = {s.trait: _signature(s) for s in sources}
    reference, count = Counter(signatures.values()).most_common(1)[0]
    ref_tensors = {name: (dtype, shape) for name, dtype, shape in reference}
    for source in sources:
        if signatures[source.trait] == reference:
            continue
        missing = sorted(set(ref_tensors) - set(source.tensors))
        extra = sorted(set(source.tensors) - set(ref_tensors))
        if missing or extra:
            what = f"lacks tensor {missing[0]}" if missing else f"has extra tensor {extra[0]}"
        else:
            name = next(n for n, d, s in signatures[source.trait] if (d, s) != ref_tensors[n])
            got, (dtype, shape) = source.tensors[name], ref_tensors[name]
            what = f"tensor {name} is {got.dtype}{list(got.shape)}, not {dtype}{list(shape)}"
        problems[source.trait] = (
            f"{source.trait} ({source.weights}): {what} (unlike {count} of {len(sources)} adapters); "
            f"stacking needs identical tensors in every adapter: {FIX}"
        )
    bases = Counter(s.base_model for s in sources)
    base, count = bases.most_common(1)[0]
    for source in sources:
        if source.base_model != base and source.trait not in problems:
            problems[source.trait] = (
                f"{source.trait} ({source.weights.parent}): adapter_config.json names base model "
                f"{source.base_model!r}, but {count} of {len(sources)} adapters name {base!r}; {FIX}"
            )
    return problems


def _training_figures(path: Path, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The training losses recorded beside the mapping (``metrics/<trait>.json``) for this adapter's job;
    None when there are none or they belong to another job."""
    try:
        data = json.loads((path.parent / METRICS_DIR / f"{entry['trait']}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("job_id") != entry["job_id"]:
        return None
    losses = [s["loss"] for s in data.get("steps") or [] if isinstance(s, dict) and s.get("loss") is not None]
    return {"final_loss": losses[-1] if losses else None, "steps": len(losses)}


def _write_dataset(path: Path, mapping: dict[str, Any], digest: str, sources: list[_Source]) -> IntakeResult:
    root, final = path.parent, path.parent / DATASET_DIR
    _recover(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIR}.", suffix=".tmp", dir=root))
    try:
        os.chmod(staging, 0o755)
        traits = [s.trait for s in sources]
        metadata = {"format": "pt", "mapping_sha256": digest, "traits": ",".join(traits)}
        stacked = write_stacked(staging / STACK_FILE, [s.row for s in sources], metadata)
        index = {
            "version": INDEX_VERSION,
            "mapping_file": path.name,
            "mapping_version": mapping["version"],
            "mapping_sha256": digest,
            "base_model": mapping["base_model"],
            "adapter_base_model": sources[0].base_model,
            "lora": mapping["lora"],
            "stack_file": STACK_FILE,
            "stack_sha256": stacked.sha256,
            "num_traits": len(traits),
            "tensors": stacked.tensors,
            "traits": [
                {
                    "row": row,
                    "trait": trait,
                    "axis": mapping["traits"][trait]["axis"],
                    "direction": mapping["traits"][trait]["direction"],
                    "adapter_sha256": mapping["traits"][trait]["adapter_sha256"],
                    # Held-out figures when the mapping carries them (null without a split); training losses
                    # apart, so a reader never mistakes one for the other.
                    "eval": mapping["traits"][trait].get("eval"),
                    "training": _training_figures(path, mapping["traits"][trait]),
                }
                for row, trait in enumerate(traits)
            ],
        }
        with open(staging / INDEX_FILE, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(staging)
        _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return IntakeResult(
        path,
        final,
        final / STACK_FILE,
        final / INDEX_FILE,
        digest,
        tuple(traits),
        len(stacked.tensors),
        stacked.num_bytes,
    )


def _swap_in(staging: Path, final: Path) -> None:
    """Park the old dataset, rename the new one in, drop the old: a crash between is repaired by _recover."""
    parked = None
    if final.exists():
        parked = final.with_name(f".{DATASET_DIR}.previous-{os.urandom(4).hex()}")
        os.replace(final, parked)
    try:
        os.replace(staging, final)
    except BaseException:
        if parked is not None:
            os.replace(parked, final)
        raise
    fsync_dir(final.parent)
    if parked is not None:
        shutil.rmtree(parked, ignore_errors=True)


def _recover(root: Path) -> None:
    """Put back a dataset parked by a crashed swap; drop staging dirs a crashed intake left behind."""
    final = root / DATASET_DIR
    parked = sorted(root.glob(f".{DATASET_DIR}.previous-*"), key=lambda p: p.stat().st_mtime)
    if parked and not final.exists():
        os.replace(parked.pop(), final)
    for stale in parked:
        shutil.rmtree(stale, ignore_errors=True)
    for staging in root.glob(f".{DATASET_DIR}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - staging.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(staging, ignore_errors=True)
