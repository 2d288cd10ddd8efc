"""The trainer pod's own way to object storage, when no volume is shared with the Airflow workers.

The pod reads its shard from and writes its adapter to the bucket itself, with credentials from its
environment (a Kubernetes Secret mapped to ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or the
pod's service account through web identity): never in its argv or the rendered spec. An S3-compatible
endpoint comes from ``AWS_ENDPOINT_URL_S3`` (boto3 reads it). The adapter goes to a staging prefix the
worker chose; the worker verifies it before anything is installed, as it does a Together download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from trait_lora.core.adapter.spec import TRAINED_FILES
from trait_lora.core.shards.catalog import SHARD_SUFFIX, opposite_trait
from trait_lora.core.storage.location import Location, parse_location
from trait_lora.core.storage.objects import S3Store
from trait_lora.core.storage.opener import register_opener
from trait_lora.core.storage.store import StoreError


def is_s3(text: str) -> bool:
    return str(text).startswith("s3://")


def s3_store(loc: Location) -> S3Store:
    """The store at an s3:// location, with the pod's own credentials (boto3's chain)."""
    import boto3

    return S3Store(boto3.client("s3"), loc.bucket, loc.prefix, location=loc.public_url)


def register_s3_opener() -> None:
    """Let the core open s3:// locations in the pod (an s3:// base model is read through it)."""
    register_opener("s3", s3_store)


def _store(url: str) -> tuple[S3Store, str]:
    """The store of the URL's bucket and the key of the URL in it."""
    loc = parse_location(url, what="s3 URL")
    return s3_store(Location("s3", bucket=loc.bucket)), loc.prefix


def fetch(url: str, dest: Path) -> Path:
    """Copy the object at ``url`` to ``dest``; FileNotFoundError naming it when it is missing."""
    store, key = _store(url)
    blob = store.read(key)
    if blob is None:
        raise FileNotFoundError(f"{url} does not exist (or the pod's credentials cannot see it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob.data)
    return dest


def fetch_opposite(shard_url: str, folder: Path) -> Path | None:
    """The opposite pole's shard, copied beside the pod's own (the held-out evaluation looks there);
    None when the bucket has none: it only costs the ``own_pole_margin`` figure."""
    base, _, name = shard_url.rpartition("/")
    other = f"{opposite_trait(name.removesuffix(SHARD_SUFFIX))}{SHARD_SUFFIX}"
    try:
        return fetch(f"{base}/{other}", folder / other)
    except (FileNotFoundError, ValueError):
        return None


def read_bytes(url: str) -> bytes | None:
    """The object at ``url``, or None when there is none."""
    store, key = _store(url)
    blob = store.read(key)
    return blob.data if blob is not None else None


def put_bytes(url: str, data: bytes) -> None:
    store, key = _store(url)
    store.put(key, data)


def publish_dir(local: Path, url: str) -> None:
    """Upload the trained adapter's files under the prefix ``url`` (this pod is their one writer)."""
    store, prefix = _store(url)
    for name in TRAINED_FILES:
        path = local / name
        if path.is_file():
            store.put(f"{prefix}/{name}", path.read_bytes())


CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A run's checkpoint kept in the bucket beside its adapter prefix (``<out>.checkpoint/``).

    A pod without a volume loses its scratch when it is preempted; the retry is a new pod that pulls
    the checkpoint back before training and so resumes instead of starting over.
    """

    url: str  # s3://bucket/prefix.checkpoint
    local: Path

    @classmethod
    def beside(cls, out_url: str, local: Path) -> RemoteCheckpoint:
        return cls(f"{out_url.rstrip('/')}.checkpoint", local)

    @classmethod
    def resumed(cls, out_url: str, local: Path, err: TextIO) -> RemoteCheckpoint:
        """The checkpoint beside ``out_url``, pulled down when an earlier pod left one (said on
        ``err``). One that cannot be read is a note: a checkpoint only saves time, so training starts
        over rather than fails."""
        remote = cls.beside(out_url, local)
        try:
            if remote.pull():
                print(f"found a checkpoint in {remote.url}", file=err, flush=True)
        except StoreError as exc:
            print(f"note: cannot read the checkpoint in {remote.url} ({exc}); starting over", file=err)
        return remote

    def discard(self, err: TextIO) -> None:
        """Remove it once the adapter is up (a pod lost before then still has something to resume);
        one that cannot be deleted only costs storage, said on ``err``."""
        try:
            self.remove()
        except StoreError as exc:
            print(f"note: cannot delete the checkpoint in {self.url}: {exc}", file=err)

    def pull(self) -> bool:
        """Copy the checkpoint down when the bucket has one; whether it did."""
        try:
            fetch(f"{self.url}/{CHECKPOINT_FILE}", self.local / CHECKPOINT_FILE)
        except FileNotFoundError:
            return False
        return True

    def upload(self, path: Path) -> None:
        store, prefix = _store(f"{self.url}/{path.name}")
        store.put(prefix, path.read_bytes())

    def remove(self) -> None:
        store, prefix = _store(f"{self.url}/{CHECKPOINT_FILE}")
        store.delete(prefix)
