"""The few operations the pipeline needs of wherever its records live, and nothing more.

Every guarantee we give (one paid job per trait, a record with one writer at a time, adapters installed
whole) must hold on a local directory and on object storage alike. Object stores have no locks and no
rename, but they do have conditional writes: create-if-absent and replace-if-unchanged. Those two are
enough to build everything else (claims, the cap, the mapping's swap), so they are the whole interface,
with a local implementation (``local.LocalStore``) and an S3 one (``objects.S3Store``) behind it.

A version is opaque: whatever the store hands back with a read is what ``replace`` compares against
(an ETag on S3, the content's digest locally).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from trait_lora.core.errors import TraitLoraError


class StoreError(TraitLoraError):
    """The store cannot be used as configured; the message names the location and what to fix."""


class AlreadyExists(StoreError):
    """``create`` found the key taken: somebody else created it first."""


class VersionConflict(StoreError):
    """``replace`` found the key changed (or gone) since it was read: read again and decide again."""


@dataclass(frozen=True)
class Blob:
    """The bytes of one key and the version they were read at."""

    data: bytes
    version: str

    def json(self) -> Any:
        return json.loads(self.data.decode("utf-8"))


def check_key(key: str) -> str:
    """A key is a relative POSIX path of plain names: no ``..``, no empty or absolute part.

    Keys are built by our code from trait names and fixed folder names; refusing anything else keeps a
    key from ever reaching outside the store's root, on a disk or in a bucket.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid storage key {key!r}: use a relative path of plain names")
    return key


def encode_json(obj: Any) -> bytes:
    """Sorted, indented JSON with a trailing newline so records stay readable and diffable."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@runtime_checkable
class Store(Protocol):
    """Where one output (or shard) location keeps its objects. Keys are relative to the location."""

    location: str  # the location's URL, for messages and for the mapping's full adapter URLs

    def url(self, key: str) -> str:
        """The full URL of ``key`` (``/abs/path`` locally, ``s3://bucket/prefix/key`` on S3)."""
        ...

    def read(self, key: str) -> Blob | None:
        """The key's bytes and version; ``None`` when it does not exist."""
        ...

    def create(self, key: str, data: bytes) -> str:
        """Write ``key`` only if it does not exist (else ``AlreadyExists``); returns the new version."""
        ...

    def replace(self, key: str, data: bytes, version: str) -> str:
        """Write ``key`` only if it is still at ``version`` (else ``VersionConflict``)."""
        ...

    def put(self, key: str, data: bytes) -> str:
        """Write ``key`` whole, unconditionally: for objects with one writer by construction."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key under the folder ``prefix`` (``""``: all), sorted; never from a cache."""
        ...
