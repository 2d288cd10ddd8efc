"""Adapter intake: verify a trained LoRA adapter and install it atomically under the output dir.

An adapter arrives from an untrusted place (a Together download, a local trainer's output), so it is
never trusted by name: archives are read member by member (never ``extractall``; Python's tar filters
have had bypasses), only the two PEFT files are kept and written to paths built here, the decompressed
size is capped while reading, and the safetensors file is checked structurally without torch, so a
wrong-rank, wrong-module or truncated adapter is refused before it can replace a good one.

Install is stage-verify-swap: the new adapter is built in a hidden staging dir beside its final place
and renamed in only after it verified; the old one is parked as ``.previous-<trait>-<random>`` for the
instant between the two renames, and a crash in that instant is repaired on the next call.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import math
import os
import re
import secrets
import shutil
import struct
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard

from trait_lora.core.atomic import fsync_dir
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import AdapterError
from trait_lora.core.keys import sha256_file
from trait_lora.core.shards import check_trait_name

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CONFIG_FILE, WEIGHTS_FILE = ADAPTER_FILES
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DEFAULT_MAX_BYTES = 2 * 1024**3  # decompressed cap: a zip bomb must not fill the disk
CHECKPOINTS_DIR = "lora_checkpoints"

MAX_MEMBERS = 1000  # a real adapter archive holds a handful; bounds tarfile's member list in memory
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
STALE_STAGING_SECONDS = 3600  # a staging dir this old belongs to a crashed install
CORRUPT = "archive is truncated or corrupt: re-download it"

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_MAGIC = b"ustar"
_ZSTD_FEED = 1024  # compressed bytes per decompress call: zstd expands at most ~32k:1, so <= 32 MiB out
_COPY_CHUNK = 1 << 20

DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

# <prefix>.<module>.lora_A[.<adapter name>].weight
_LORA_RE = re.compile(
    r"^(?P<prefix>.+)\.(?P<module>[^.]+)\.lora_(?P<kind>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$"
)


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter must be: the LoRA settings it was trained with, from the training config."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("r", "alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AdapterSpec.{name} must be a positive integer, got {value!r}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"AdapterSpec.target_modules must name modules, got {self.target_modules!r}")

    @classmethod
    def from_config(cls, cfg: TrainingConfig) -> AdapterSpec:
        return cls(r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=tuple(cfg.target_modules))


@dataclass(frozen=True)
class AdapterInfo:
    """What a verified adapter holds; ``sha256`` is of ``adapter_model.safetensors``."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]
    num_layers: int
    num_tensors: int
    num_parameters: int
    sha256: str
    base_model: str | None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header (offsets relative to the data section)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# --------------------------------------------------------------------------------------------------
# Verification


def verify_adapter_dir(directory: Path, spec: AdapterSpec) -> AdapterInfo:
    """Check that ``directory`` holds a PEFT LoRA adapter matching ``spec``; raise AdapterError if not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"{directory}: no adapter directory here; install or re-download the adapter")
    for name in ADAPTER_FILES:
        _require_regular_file(directory, name)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    config = _check_config(config_path, spec)
    tensors = read_safetensors_header(weights_path)
    modules, num_layers = _check_lora_tensors(weights_path, tensors, spec)
    base = config.get("base_model_name_or_path")
    return AdapterInfo(
        r=spec.r,
        alpha=spec.alpha,
        target_modules=modules,
        num_layers=num_layers,
        num_tensors=len(tensors),
        num_parameters=sum(t.numel for t in tensors.values()),
        sha256=sha256_file(weights_path),
        base_model=base if isinstance(base, str) else None,
    )


def _require_regular_file(directory: Path, name: str) -> None:
    path = directory / name
    if path.is_symlink():
        raise AdapterError(f"{path} is a symlink; put the real file in the adapter directory")
    if path.is_file():
        return
    if path.exists():
        raise AdapterError(f"{path} is not a regular file; the adapter needs a real {name}")
    hint = ""
    if name == WEIGHTS_FILE:
        pickles = sorted(p.name for p in directory.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            hint = (
                f" (found pickled weights {', '.join(pickles)}, which are never loaded: "
                "save the adapter with safe_serialization=True)"
            )
    raise AdapterError(f"{directory} has no {name}{hint}; a PEFT adapter needs {' and '.join(ADAPTER_FILES)}")


def _check_config(path: Path, spec: AdapterSpec) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is {size} bytes, far too big for an adapter config; it is not one")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc}); re-download or re-train the adapter") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} must hold a JSON object (a PEFT adapter config)")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise AdapterError(f"{path}: peft_type is {peft_type!r}, expected 'LORA'; this is not a LoRA adapter")

    def mismatch(field: str, got: Any, want: Any, setting: str) -> AdapterError:
        return AdapterError(
            f"{path}: {field} is {got!r} but the training config has {setting}={want!r}; "
            "this adapter was trained with other settings: retrain it or fix the training config"
        )

    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r != spec.r:
        raise mismatch("r", r, spec.r, "lora_r")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha != spec.alpha:
        raise mismatch("lora_alpha", alpha, spec.alpha, "lora_alpha")
    raw = config.get("target_modules")
    if isinstance(raw, str):
        modules = [m.strip() for m in raw.split(",") if m.strip()]
    elif isinstance(raw, list) and all(isinstance(m, str) for m in raw):
        modules = list(raw)
    else:
        raise AdapterError(f"{path}: target_modules is {raw!r}, expected a list of module names")
    if set(modules) != set(spec.target_modules):
        raise mismatch("target_modules", sorted(modules), sorted(spec.target_modules), "target_modules")
    for field in ("rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise AdapterError(
                f"{path}: {field} {config[field]!r} gives some modules another rank/alpha than "
                f"r={spec.r}/lora_alpha={spec.alpha}; retrain without per-module overrides"
            )
    return config


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header without loading tensors (torch is not a core dependency).

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the data section. Every tensor
    must have a known dtype and ``data_offsets`` that tile the data section exactly, so a truncated or
    padded download is caught here rather than at load time on a GPU box.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            raise AdapterError(f"{path} is {size} bytes, too short for safetensors; re-download it")
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise AdapterError(
                f"{path}: safetensors header length {header_len} is impossible for a file of {size} "
                "bytes; the file is truncated or corrupt: re-download it"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{path}: safetensors header is not valid JSON ({exc}); re-download it") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path}: safetensors header must be a JSON object; re-download it")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise AdapterError(f"{path}: safetensors __metadata__ must map strings to strings")
    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(path, name, entry, data_len)
    if not tensors:
        raise AdapterError(f"{path} holds no tensors; re-download or re-train the adapter")
    cursor = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != cursor:
            raise AdapterError(
                f"{path}: tensor {name} data_offsets start at {info.begin}, expected {cursor} "
                "(tensor data overlaps or has gaps); the file is corrupt: re-download it"
            )
        cursor = info.end
    if cursor != data_len:
        raise AdapterError(
            f"{path} is {size} bytes but its header accounts for {8 + header_len + cursor} "
            "(trailing bytes after the tensor data); the file is corrupt: re-download it"
        )
    return tensors


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(path: Path, name: str, entry: Any, data_len: int) -> TensorInfo:
    where = f"{path}: tensor {name}"
    if not isinstance(entry, dict):
        raise AdapterError(f"{where}: header entry is not an object; the file is corrupt: re-download it")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise AdapterError(
            f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)}); re-save the adapter"
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise AdapterError(f"{where}: shape {shape!r} is not a list of sizes; the file is corrupt")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise AdapterError(f"{where}: data_offsets {offsets!r} is not [begin, end]; the file is corrupt")
    begin, end = offsets
    if begin > end:
        raise AdapterError(f"{where}: data_offsets [{begin}, {end}] run backwards; the file is corrupt")
    if end > data_len:
        raise AdapterError(
            f"{where}: data_offsets [{begin}, {end}] run past the end of the file (data section is "
            f"{data_len} bytes); the file is truncated or corrupt: re-download it"
        )
    want = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != want:
        raise AdapterError(
            f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {shape} of "
            f"{dtype} needs {want}; the file is corrupt: re-download it"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _layer_key(prefix: str) -> str:
    """``base_model.model.model.layers.7.self_attn`` -> ``base_model.model.model.layers.7``.

    Attention and MLP modules of one block sit under different parents, so layers are compared by
    the path up to the last numeric component, not by the full prefix.
    """
    parts = prefix.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return prefix


def _check_lora_tensors(
    path: Path, tensors: dict[str, TensorInfo], spec: AdapterSpec
) -> tuple[tuple[str, ...], int]:
    """Every tensor a LoRA A/B weight of a spec module with rank r, complete pairs, same layers."""
    wanted = set(spec.target_modules)
    pairs: dict[tuple[str, str], dict[str, str]] = {}
    for name, info in tensors.items():
        match = _LORA_RE.fullmatch(name)
        if not match:
            raise AdapterError(
                f"{path}: tensor {name} is not a LoRA weight (expected <prefix>.<module>.lora_A.weight "
                "or .lora_B.weight); retrain saving only the LoRA weights (no modules_to_save, bias or DoRA)"
            )
        module, kind = match["module"], match["kind"]
        if module not in wanted:
            raise AdapterError(
                f"{path}: tensor {name} adapts module {module}, which is not in target_modules "
                f"{sorted(wanted)}; this adapter was trained for other modules: retrain it"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise AdapterError(
                f"{path}: tensor {name} has dtype {info.dtype}, expected one of {sorted(FLOAT_DTYPES)}"
            )
        r = spec.r
        if kind == "A":
            ok = len(info.shape) == 2 and info.shape[0] == r and info.shape[1] > 0
            want = f"[{r}, in_features]"
        else:
            ok = len(info.shape) == 2 and info.shape[1] == r and info.shape[0] > 0
            want = f"[out_features, {r}]"
        if not ok:
            raise AdapterError(
                f"{path}: tensor {name} has shape {list(info.shape)}, expected {want} for r={r}; "
                "the adapter was trained with another rank: retrain it or fix lora_r"
            )
        slot = pairs.setdefault((match["prefix"], module), {})
        if kind in slot:
            raise AdapterError(
                f"{path}: tensors {slot[kind]} and {name} are both lora_{kind} of "
                f"{match['prefix']}.{module}; the file holds more than one adapter: re-save one only"
            )
        slot[kind] = name
    layers: dict[str, set[str]] = {}
    for (prefix, module), slot in sorted(pairs.items()):
        for kind, other in (("A", "B"), ("B", "A")):
            if kind in slot and other not in slot:
                raise AdapterError(
                    f"{path}: tensor {slot[kind]} has no matching lora_{other} for {prefix}.{module} "
                    "(incomplete A/B pair); the file is corrupt or partial: re-download it"
                )
        layers.setdefault(module, set()).add(_layer_key(prefix))
    missing = sorted(wanted - set(layers))
    if missing:
        raise AdapterError(
            f"{path}: no LoRA tensors for target module(s) {', '.join(missing)}; the adapter was "
            "trained for other modules: retrain it"
        )
    reference = max(sorted(layers), key=lambda m: len(layers[m]))
    for module in sorted(layers):
        lacking = sorted(layers[reference] - layers[module], key=_natural)
        if lacking:
            shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            raise AdapterError(
                f"{path}: module {module} has LoRA weights in {len(layers[module])} layers but "
                f"{reference} in {len(layers[reference])}; {module} is missing {shown}. "
                "The file is partial or corrupt: re-download or retrain it"
            )
    return tuple(sorted(layers)), len(layers[reference])


def _natural(text: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------------------
# Archive extraction


def extract_adapter_archive(archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Stream the two adapter files out of a zstd/gzip/plain tar into ``dest`` (nothing else).

    The format is sniffed from magic bytes. Any member that could write outside ``dest`` or smuggle
    code (links, devices, absolute or ``..`` names, pickles), a duplicate adapter file, more than
    ``max_bytes`` decompressed, or a damaged stream rejects the whole archive; files this call wrote
    are then removed again, so a failed extract leaves ``dest`` as it was.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():  # a fifo or device would block or never end
        raise AdapterError(f"{archive} is not a regular file; pass the downloaded archive or a directory")
    created_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with open(archive, "rb") as raw:
            stream = _decoded_stream(archive, raw, max_bytes)
            _extract_members(archive, stream, dest, max_bytes, written)
            while stream.read(_COPY_CHUNK):  # the rest must decode cleanly too (catches truncation)
                pass
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if created_dest:
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


class _DecodedStream(io.RawIOBase):
    """A read-only file over decompressed bytes that counts them and stops at ``max_bytes``.

    Decoder failures become AdapterError here, inside ``read``, so tarfile passes them through.
    """

    def __init__(self, archive: Path, next_chunk: Callable[[], bytes], max_bytes: int) -> None:
        self._archive = archive
        self._next = next_chunk
        self._max = max_bytes
        self._buf = b""
        self._pos = 0
        self.total = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(_COPY_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        while self._pos >= len(self._buf) and not self._done:
            self._buf, self._pos = self._pull(), 0
            if not self._buf:
                self._done = True
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _pull(self) -> bytes:
        try:
            chunk = self._next()
        except AdapterError:
            raise
        except (zstandard.ZstdError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise AdapterError(f"{self._archive}: {CORRUPT} ({exc})") from None
        self.total += len(chunk)
        if self.total > self._max:
            raise AdapterError(
                f"{self._archive}: decompresses to more than {self._max} bytes, the cap for an adapter; "
                "it is not an adapter archive (or raise max_bytes if the adapter really is that big)"
            )
        return chunk


def _decoded_stream(archive: Path, raw: IO[bytes], max_bytes: int) -> _DecodedStream:
    head = raw.read(512)
    raw.seek(0)
    if not head:
        raise AdapterError(f"{archive} is empty (0 bytes); the download failed: re-download it")
    if head.startswith(_ZSTD_MAGIC):
        return _DecodedStream(archive, _zstd_chunks(archive, raw), max_bytes)
    if head.startswith(_GZIP_MAGIC):
        gz = gzip.GzipFile(fileobj=raw, mode="rb")
        return _DecodedStream(archive, lambda: gz.read(_COPY_CHUNK), max_bytes)
    if head[257:262] == _TAR_MAGIC:
        return _DecodedStream(archive, lambda: raw.read(_COPY_CHUNK), max_bytes)
    raise AdapterError(
        f"{archive} is not a .tar.zst, .tar.gz or tar archive (it starts with {head[:8].hex()}); "
        "re-download it"
    )


def _zstd_chunks(archive: Path, raw: IO[bytes]) -> Callable[[], bytes]:
    """Decompress frame by frame, feeding small input pieces so one call's output stays bounded.

    ``stream_reader`` would silently end at a truncated frame; ``decompressobj`` exposes ``eof``, so
    a download cut short is reported instead of half-read.
    """
    dctx = zstandard.ZstdDecompressor()
    state: dict[str, Any] = {"obj": dctx.decompressobj(), "fed": False, "pending": b""}

    def next_chunk() -> bytes:
        while True:
            obj = state["obj"]
            if obj.eof:  # a frame ended: anything after it must be another whole frame
                state["pending"] += obj.unused_data
                state["obj"], state["fed"] = dctx.decompressobj(), False
                continue
            data, state["pending"] = state["pending"][:_ZSTD_FEED], state["pending"][_ZSTD_FEED:]
            if not data:
                data = raw.read(_ZSTD_FEED)
            if not data:
                if state["fed"]:
                    raise AdapterError(f"{archive}: {CORRUPT} (the zstd stream ends mid-frame)")
                return b""
            state["fed"] = True
            out = obj.decompress(data)
            if out:
                return out

    return next_chunk


def _bad_name(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    return None


def _extract_members(
    archive: Path, stream: _DecodedStream, dest: Path, max_bytes: int, written: list[Path]
) -> None:
    found: dict[str, str] = {}
    seen: list[str] = []

    def reject(member: tarfile.TarInfo, why: str) -> AdapterError:
        return AdapterError(
            f"{archive}: member {member.name!r} {why}; refusing the whole archive "
            "(an adapter archive holds only adapter_config.json and adapter_model.safetensors): "
            "re-download it from a trusted source"
        )

    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise AdapterError(
                        f"{archive} has more than {MAX_MEMBERS} members; an adapter archive holds a "
                        "handful: re-download it"
                    )
                tar.members = []  # stream mode needs no history; keep memory flat
                seen.append(member.name)
                why = _bad_name(member.name)
                if why:
                    raise reject(member, why)
                if member.issym() or member.islnk():
                    raise reject(member, f"is a link to {member.linkname!r}")
                if member.isdev():
                    raise reject(member, "is a device or fifo")
                if member.isdir():
                    continue
                if not member.isfile() or member.issparse():
                    raise reject(member, f"has unsupported tar type {member.type!r}")
                if member.name.lower().endswith(PICKLE_SUFFIXES):
                    raise reject(
                        member, "is pickled (may run code when loaded); only safetensors is accepted"
                    )
                if member.size > max_bytes:
                    raise reject(member, f"declares {member.size} bytes, over the {max_bytes}-byte cap")
                base = PurePosixPath(member.name).name
                if base not in ADAPTER_FILES:
                    continue  # README and the like: skipped, never written
                if base in found:
                    raise reject(member, f"duplicates {found[base]!r}; which one is the adapter is unclear")
                found[base] = member.name
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    raise reject(member, "has no data")
                target = dest / base
                _write_new(target, source, written, f"{archive}: member {member.name!r}")
    except tarfile.TarError as exc:
        raise AdapterError(f"{archive}: {CORRUPT} ({exc})") from None
    missing = [name for name in ADAPTER_FILES if name not in found]
    if missing:
        listed = ", ".join(repr(n) for n in seen[:10]) or "nothing"
        raise AdapterError(
            f"{archive} holds no {' or '.join(missing)} (members: {listed}); "
            "it is not a PEFT adapter archive: re-download it with checkpoint='adapter'"
        )


def _write_new(target: Path, source: IO[bytes], written: list[Path], what: str) -> None:
    """Create ``target`` (never an existing file or a symlink) and copy ``source`` into it, fsynced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise AdapterError(f"{what}: {target} already exists; extract into an empty directory") from None
    written.append(target)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


# --------------------------------------------------------------------------------------------------
# Install


def adapter_dir(output_dir: Path, trait: str) -> Path:
    """Where the adapter for ``trait`` lives: ``<output_dir>/lora_checkpoints/<trait>``."""
    check_trait_name(trait)
    return Path(output_dir) / CHECKPOINTS_DIR / trait


def install_adapter(
    source: Path, output_dir: Path, trait: str, spec: AdapterSpec, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Path, AdapterInfo]:
    """Verify the adapter at ``source`` (directory or archive) and swap it in as ``trait``'s adapter.

    On any failure the staging dir is removed and an earlier install of ``trait`` stays untouched.
    """
    final = adapter_dir(output_dir, trait)
    source = Path(source)
    if not source.exists():
        raise AdapterError(f"adapter source {source} does not exist; download or train the adapter first")
    if not source.is_dir() and not source.is_file():
        raise AdapterError(f"adapter source {source} is neither a directory nor a regular file")
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with _swap_lock(root):
        _recover(root, trait)
    _remove_stale_staging(root, trait)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{trait}-", dir=root))
    try:
        os.chmod(staging, 0o755)
        if source.is_dir():
            _copy_adapter_dir(source, staging, max_bytes)
        else:
            extract_adapter_archive(source, staging, max_bytes)
        try:
            info = verify_adapter_dir(staging, spec)
        except AdapterError as exc:  # name the source the user gave, not a staging dir about to vanish
            detail = str(exc).replace(f"{staging}{os.sep}", "").replace(str(staging), "adapter")
            raise AdapterError(f"adapter from {source}: {detail}") from None
        fsync_dir(staging)
        with _swap_lock(root):
            _recover(root, trait)
            _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, info


def verify_installed(output_dir: Path, trait: str, spec: AdapterSpec) -> AdapterInfo | None:
    """The installed adapter's info; None when ``trait`` has none; AdapterError when it is bad."""
    final = adapter_dir(output_dir, trait)
    root = final.parent
    if not root.is_dir():
        return None
    with _swap_lock(root):
        _recover(root, trait)
        if not final.exists() and not final.is_symlink():
            return None
        if final.is_symlink() or not final.is_dir():
            raise AdapterError(
                f"{final} is not a directory; remove it and install the adapter for {trait} again"
            )
        return verify_adapter_dir(final, spec)


def _copy_adapter_dir(source: Path, staging: Path, max_bytes: int) -> None:
    written: list[Path] = []
    total = 0
    for name in ADAPTER_FILES:
        _require_regular_file(source, name)
        path = source / name
        total += path.stat().st_size
        if total > max_bytes:
            raise AdapterError(
                f"{source}: adapter files exceed the {max_bytes}-byte cap; is this an adapter?"
            )
        with open(path, "rb") as fh:
            _write_new(staging / name, fh, written, str(path))


def _swap_in(staging: Path, final: Path) -> None:
    """Park the old adapter, rename staging into place, then drop the old one.

    A crash between the two renames leaves only ``.previous-<trait>-*``; ``_recover`` puts it back.
    """
    root = final.parent
    previous: Path | None = None
    if final.exists() or final.is_symlink():
        previous = root / f".previous-{final.name}-{secrets.token_hex(6)}"
        os.rename(final, previous)
    try:
        os.rename(staging, final)
    except BaseException:
        if previous is not None:
            os.rename(previous, final)
        raise
    fsync_dir(root)
    if previous is not None:
        _remove(previous)


def _previous_dirs(root: Path, trait: str) -> list[Path]:
    pattern = re.compile(rf"\.previous-{re.escape(trait)}-[^-/]+")
    return [p for p in root.iterdir() if pattern.fullmatch(p.name)]


def _recover(root: Path, trait: str) -> None:
    """Repair a crash mid-swap: restore a parked adapter if ``<trait>`` is gone, else drop leftovers."""
    previous = _previous_dirs(root, trait)
    if not previous:
        return
    final = root / trait
    if not final.exists() and not final.is_symlink():
        candidates = [p for p in previous if p.is_dir() and not p.is_symlink()]
        if candidates:
            newest = max(candidates, key=lambda p: p.lstat().st_mtime)
            os.rename(newest, final)
            fsync_dir(root)
            previous.remove(newest)
    for path in previous:
        _remove(path)


def _remove_stale_staging(root: Path, trait: str) -> None:
    cutoff = time.time() - STALE_STAGING_SECONDS
    for path in root.glob(f".staging-{trait}-*"):
        with contextlib.suppress(OSError):
            if path.lstat().st_mtime < cutoff:
                _remove(path)


def _remove(path: Path) -> None:
    """Delete a file, link or tree without following links out of it."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _swap_lock(root: Path) -> Iterator[None]:
    """Serialise swaps and crash recovery across processes on this host.

    The lock is an flock on the ``lora_checkpoints`` directory itself, so no lock file is left
    behind for listings of that directory to trip over; swaps are two renames, so sharing one lock
    between traits costs nothing noticeable.
    """
    fd = os.open(root, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some network filesystems cannot lock a directory
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = [
    "ADAPTER_FILES",
    "DEFAULT_MAX_BYTES",
    "PICKLE_SUFFIXES",
    "AdapterInfo",
    "AdapterSpec",
    "TensorInfo",
    "adapter_dir",
    "extract_adapter_archive",
    "install_adapter",
    "read_safetensors_header",
    "verify_adapter_dir",
    "verify_installed",
]
