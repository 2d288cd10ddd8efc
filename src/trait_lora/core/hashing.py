"""Content digests every layer agrees on: of a JSON value (a config, a mapping) and of a file's bytes.

Here, below everything, because the config hash, the job key, the held-out split and the adapter
checks all need the same digest, and none of them may import the others for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_json(obj: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys, no whitespace): equal content, equal digest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """Streaming sha256 of a file's bytes (constant memory, any size)."""
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(Path(path), "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()
