"""Reading adapter archives member by member (never ``extractall``)."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard

from trait_lora.core.adapter.spec import (
    _COPY_CHUNK,
    _GZIP_MAGIC,
    _TAR_MAGIC,
    _ZSTD_FEED,
    _ZSTD_MAGIC,
    ADAPTER_FILES,
    CONFIG_FILE,
    CORRUPT,
    DEFAULT_MAX_BYTES,
    MAX_MEMBERS,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
)
from trait_lora.core.errors import AdapterError


def extract_adapter_archive(archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Write the top-level adapter's two PEFT files from a zstd/gzip/plain tar into ``dest``, nothing else.

    Real adapter archives carry more than the two files (a README, tokenizer files, a pickled
    ``training_args.bin``, ``checkpoint-N/`` folders with adapters of their own). Two passes over the
    file on disk: the first checks every member and picks the shallowest directory holding both
    ``adapter_config.json`` and ``adapter_model.safetensors``; the second writes exactly those two.
    Any member that could write outside ``dest`` (links, devices, absolute or ``..`` names), weights
    that exist only as pickles, two equally shallow adapters, more than ``max_bytes`` decompressed, or
    a damaged stream rejects the whole archive; a failed extract leaves ``dest`` as it was.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():  # a fifo or device would block or never end
        raise AdapterError(f"{archive} is not a regular file; pass the downloaded archive or a directory")
    chosen = _choose_members(archive, max_bytes)
    created_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        _write_members(archive, chosen, dest, max_bytes, written)
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if created_dest:
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


def _members(archive: Path, max_bytes: int) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every member of the archive in order, decoded as a stream; the whole stream must decode."""
    with open(archive, "rb") as raw:
        stream = _decoded_stream(archive, raw, max_bytes)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for count, member in enumerate(tar, start=1):
                    if count > MAX_MEMBERS:
                        raise AdapterError(
                            f"{archive} has more than {MAX_MEMBERS} members; an adapter archive holds "
                            "a handful: re-download it"
                        )
                    tar.members = []  # stream mode needs no history; keep memory flat
                    yield tar, member
        except tarfile.TarError as exc:
            raise AdapterError(f"{archive}: {CORRUPT} ({exc})") from None
        while stream.read(_COPY_CHUNK):  # the rest must decode cleanly too (catches truncation)
            pass


def _reject(archive: Path, member: tarfile.TarInfo, why: str) -> AdapterError:
    return AdapterError(
        f"{archive}: member {member.name!r} {why}; refusing the whole archive "
        "(only regular files are accepted, and the adapter itself must be adapter_config.json + "
        "adapter_model.safetensors): re-download it from a trusted source"
    )


def _choose_members(archive: Path, max_bytes: int) -> dict[str, str]:
    """Pass one: check every member; return {adapter file name: member name} of the shallowest adapter."""
    by_dir: dict[str, dict[str, str]] = {}
    pickled: list[str] = []
    seen: list[str] = []
    for _tar, member in _members(archive, max_bytes):
        seen.append(member.name)
        why = _bad_name(member.name)
        if why:
            raise _reject(archive, member, why)
        if member.issym() or member.islnk():
            raise _reject(archive, member, f"is a link to {member.linkname!r}")
        if member.isdev():
            raise _reject(archive, member, "is a device or fifo")
        if member.isdir():
            continue
        if not member.isfile() or member.issparse():
            raise _reject(archive, member, f"has unsupported tar type {member.type!r}")
        if member.size > max_bytes:
            raise _reject(archive, member, f"declares {member.size} bytes, over the {max_bytes}-byte cap")
        path = PurePosixPath(member.name)
        folder = _folder(member.name)
        if path.name in ADAPTER_FILES:
            files = by_dir.setdefault(folder, {})
            if path.name in files:
                raise _reject(
                    archive, member, f"duplicates {files[path.name]!r}; which one is the adapter is unclear"
                )
            files[path.name] = member.name
        elif path.name.startswith("adapter_model") and path.name.lower().endswith(PICKLE_SUFFIXES):
            pickled.append(member.name)
    # The adapter is anchored on the shallowest adapter_config.json: a checkpoint folder deeper down
    # is never installed in its place, even when the top level lacks safetensors weights.
    configs = sorted(
        (folder for folder, files in by_dir.items() if CONFIG_FILE in files),
        key=lambda folder: (_depth(folder), folder),
    )
    if configs:
        tied = [folder for folder in configs if _depth(folder) == _depth(configs[0])]
        if len(tied) > 1:
            raise AdapterError(
                f"{archive} holds {len(tied)} adapters at the same depth ({', '.join(map(repr, tied))}); "
                "which one is the trained adapter is unclear: re-download it with checkpoint='adapter'"
            )
        top = configs[0]
        if WEIGHTS_FILE in by_dir[top]:
            return by_dir[top]
        beside = [name for name in pickled if _folder(name) == top]
        if beside:
            raise AdapterError(
                f"{archive}: member {beside[0]!r} is pickled (may run code when loaded) and the archive "
                "has no adapter_model.safetensors beside it; only safetensors weights are accepted: "
                "retrain or re-download the adapter as safetensors"
            )
    listed = ", ".join(repr(n) for n in seen[:10]) or "nothing"
    if configs:
        where = repr(configs[0] + "/") if configs[0] else "the archive root"
        raise AdapterError(
            f"{archive} holds no {WEIGHTS_FILE} beside its top-level {CONFIG_FILE} (in {where}; "
            f"members: {listed}); it is not a complete PEFT adapter: re-download it with checkpoint='adapter'"
        )
    found = {name for files in by_dir.values() for name in files}
    missing = [name for name in ADAPTER_FILES if name not in found] or [CONFIG_FILE]
    what = " or ".join(missing)
    raise AdapterError(
        f"{archive} holds no {what} (members: {listed}); "
        "it is not a PEFT adapter archive: re-download it with checkpoint='adapter'"
    )


def _write_members(
    archive: Path, chosen: dict[str, str], dest: Path, max_bytes: int, written: list[Path]
) -> None:
    """Pass two: write exactly the chosen members, under names built here."""
    wanted = {member_name: base for base, member_name in chosen.items()}
    for tar, member in _members(archive, max_bytes):
        if not member.isfile() or member.name not in wanted:
            continue
        base = wanted.pop(member.name)
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            raise _reject(archive, member, "has no data")
        write_new(dest / base, source, written, f"{archive}: member {member.name!r}")
    if wanted:  # the file changed between the passes
        raise AdapterError(f"{archive} changed while it was read ({sorted(wanted)} vanished); re-download it")


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


def write_new(target: Path, source: IO[bytes], written: list[Path], what: str) -> None:
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


def _folder(name: str) -> str:
    return "/".join(part for part in PurePosixPath(name).parent.parts if part not in ("", "."))


def _depth(folder: str) -> int:
    return len([part for part in folder.split("/") if part])
