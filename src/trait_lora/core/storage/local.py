"""The store on a local (or POSIX-shared) directory: the layout users already have, unchanged.

Create-if-absent is a hard link of a fully written temp file (``link`` fails if the name exists, and
the name never points at half a file); replace-if-unchanged compares and renames under one ``flock``
per directory tree. The version is the content's digest, so a reader needs no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from trait_lora.core.storage.atomic import atomic_write_bytes, fsync_dir
from trait_lora.core.storage.ledger_io import exclusive_lock
from trait_lora.core.storage.store import AlreadyExists, Blob, VersionConflict, check_key

STORE_LOCK = ".store.lock"


def digest_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class LocalStore:
    """A ``Store`` rooted at a directory (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def url(self, key: str) -> str:
        return str(self.path(key))

    def read(self, key: str) -> Blob | None:
        try:
            data = self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Blob(data, digest_version(data))

    def create(self, key: str, data: bytes) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise AlreadyExists(f"{target} already exists") from None
            fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return digest_version(data)

    def replace(self, key: str, data: bytes, version: str) -> str:
        target = self.path(key)
        with exclusive_lock(self.root / STORE_LOCK):
            current = self.read(key)
            if current is None or current.version != version:
                raise VersionConflict(f"{target} changed since it was read")
            atomic_write_bytes(target, data)
        return digest_version(data)

    def put(self, key: str, data: bytes) -> str:
        atomic_write_bytes(self.path(key), data)
        return digest_version(data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # staging and temp folders
            for name in filenames:
                if not name.startswith("."):  # temp files, the lock
                    keys.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(keys)
