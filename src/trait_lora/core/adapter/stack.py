"""Stack identical-shape safetensors tensors along a new leading axis, without torch or numpy.

Tensors of one name, dtype and shape in N files stack into one ``[N, *shape]`` tensor by concatenating
their raw bytes in row order, so the stacked file is streamed from the sources chunk by chunk and never
held in memory. The layout is the safetensors one: an 8-byte little-endian header length, the JSON
header (padded with spaces to 8 bytes, as the reference writer does), then the data section.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trait_lora.core.adapter.spec import TensorInfo

CHUNK = 1 << 20


@dataclass(frozen=True)
class StackSource:
    """One row: an open safetensors file, where its data section starts and its parsed header."""

    fd: int
    data_start: int
    tensors: dict[str, TensorInfo]
    where: str  # named in the error if the file shrinks while it is read


@dataclass(frozen=True)
class Stacked:
    """What was written: ``tensors`` maps each name to its stacked dtype and shape."""

    tensors: dict[str, dict[str, Any]]
    sha256: str
    num_bytes: int


def source_from_fd(fd: int, tensors: dict[str, TensorInfo], where: str) -> StackSource:
    (header_len,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    return StackSource(fd, 8 + header_len, tensors, where)


def write_stacked(target: Path, rows: Sequence[StackSource], metadata: dict[str, str]) -> Stacked:
    """Write ``target`` (its caller renames it into place); every row must have the same tensors."""
    first = rows[0].tensors
    header: dict[str, Any] = {}
    tensors: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, info in sorted(first.items()):
        length = (info.end - info.begin) * len(rows)
        tensors[name] = {"dtype": info.dtype, "shape": [len(rows), *info.shape]}
        header[name] = {**tensors[name], "data_offsets": [offset, offset + length]}
        offset += length
    header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    sha = hashlib.sha256()
    with open(target, "wb") as fh:

        def put(data: bytes) -> None:
            fh.write(data)
            sha.update(data)

        put(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(first):
            for row in rows:
                info = row.tensors[name]
                pos, end = row.data_start + info.begin, row.data_start + info.end
                while pos < end:
                    chunk = os.pread(row.fd, min(CHUNK, end - pos), pos)
                    if not chunk:
                        raise OSError(f"{row.where} shrank while it was read")
                    put(chunk)
                    pos += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
        size = fh.tell()
    os.chmod(target, 0o644)
    return Stacked(tensors, sha.hexdigest(), size)
