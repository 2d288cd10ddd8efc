"""A model folder on S3, pinned by a digest of its listing and copied once into the local cache.

The digest covers every object's key, ETag and size: any re-upload changes an ETag and so the digest,
which names the cache folder, so a changed model is copied anew and an unchanged one is reused. The
copy asks for each object at the ETag the run pinned (``If-Match``): an object replaced after
``discover`` fails the copy instead of mixing two versions of a model. The copy is written to a
temporary folder and renamed into place, so a folder in the cache is always whole.

S3 is reached through the store the project's opener gives for the URL (``core.storage.opener``):
an Airflow connection on a worker (``provider.storage``), the pod's own credentials in a pod.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from trait_lora.core.storage.objects import ADVICE, S3Store, error_code
from trait_lora.core.storage.opener import open_location
from trait_lora.core.storage.store import StoreError, check_key
from trait_lora.models.refs import (
    DIGEST_PREFIX,
    ModelDeliveryError,
    ModelKind,
    ModelRef,
    PinnedModel,
    S3Object,
)

log = logging.getLogger(__name__)
CHUNK = 8 << 20
CACHE_SUBDIR = "s3"
PRECONDITION = {"PreconditionFailed", "412"}


def _store(ref: ModelRef) -> S3Store:
    assert ref.kind is ModelKind.S3 and ref.location is not None
    try:
        store = open_location(ref.location.url, what="base_model")
    except StoreError as exc:
        raise ModelDeliveryError(f"base model {ref.public_text}: {exc}") from None
    if not isinstance(store, S3Store):
        raise ModelDeliveryError(f"base model {ref.public_text}: the s3:// opener gave no S3 store")
    return store


def _failed(exc: BaseException, ref: ModelRef, doing: str) -> ModelDeliveryError:
    code = error_code(exc)
    if code is None:
        return ModelDeliveryError(
            f"base model {ref.public_text}: cannot {doing} ({type(exc).__name__}); check the endpoint "
            "and credentials of its storage connection"
        )
    advice = ADVICE.get(code, "see the S3 error code")
    return ModelDeliveryError(f"base model {ref.public_text}: cannot {doing}: S3 answered {code}; {advice}")


def list_objects(ref: ModelRef) -> tuple[S3Object, ...]:
    """Every object under the model's prefix (folder markers left out), sorted by key."""
    store = _store(ref)
    prefix = f"{store.prefix}/" if store.prefix else ""
    found: list[S3Object] = []
    kwargs: dict[str, Any] = {"Bucket": store.bucket, "Prefix": prefix}
    try:
        while True:
            page = store.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(prefix) :]
                if key and not key.endswith("/"):
                    found.append(S3Object(key, str(item["ETag"]), int(item["Size"])))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    except Exception as exc:
        raise _failed(exc, ref, "list the model folder") from None
    for obj in found:
        try:
            check_key(obj.key)
        except StoreError:
            raise ModelDeliveryError(
                f"base model {ref.public_text}: object key {obj.key!r} cannot be a file name (empty, "
                "'.' or '..' parts); rename it"
            ) from None
    return tuple(sorted(found, key=lambda o: o.key))


def digest(objects: tuple[S3Object, ...]) -> str:
    listing = json.dumps([[o.key, o.etag, o.size] for o in objects], separators=(",", ":"))
    return DIGEST_PREFIX + hashlib.sha256(listing.encode()).hexdigest()


def resolve_s3(ref: ModelRef) -> PinnedModel:
    objects = list_objects(ref)
    if not any(o.key == "config.json" for o in objects):
        keys = ", ".join(o.key for o in objects[:8]) or "no objects"
        raise ModelDeliveryError(
            f"base model {ref.public_text} has no config.json at its top ({keys}): give the folder that "
            "holds the model's config.json, tokenizer and weights"
        )
    pinned = PinnedModel(ref, digest(objects), objects=objects)
    log.info("base model %s: %d objects, %s", ref.public_text, len(objects), pinned.pin)
    return pinned


def cache_folder(pinned: PinnedModel, cache_dir: Path) -> Path:
    assert pinned.pin is not None
    return cache_dir / CACHE_SUBDIR / pinned.pin.removeprefix(DIGEST_PREFIX)[:32]


def materialize_s3(pinned: PinnedModel, cache_dir: Path) -> Path:
    """The cached copy of the pinned folder; copied now (whole, then renamed into place) if missing."""
    ref = pinned.ref
    final = cache_folder(pinned, cache_dir)
    if final.is_dir():
        log.info("base model %s: cached at %s", pinned.label, final)
        return final
    objects = pinned.objects
    if not objects:  # a pin that travelled without its listing: list again, it must still match
        objects = list_objects(ref)
        if digest(objects) != pinned.pin:
            raise ModelDeliveryError(
                f"base model {ref.public_text} changed since the run pinned it ({pinned.pin}); start a "
                "new run to train on the new version"
            )
    store = _store(ref)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.partial"
    log.info("base model %s: copying %d objects into %s", pinned.label, len(objects), final)
    try:
        for obj in objects:
            _copy(store, ref, pinned, obj, temp / obj.key)
        try:
            os.rename(temp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent copy that finished first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def _copy(store: S3Store, ref: ModelRef, pinned: PinnedModel, obj: S3Object, dest: Path) -> None:
    key = f"{store.prefix}/{obj.key}" if store.prefix else obj.key
    try:
        answer = store.client.get_object(Bucket=store.bucket, Key=key, IfMatch=obj.etag)
    except Exception as exc:
        if error_code(exc) in PRECONDITION | {"NoSuchKey", "404"}:
            raise ModelDeliveryError(
                f"base model {ref.public_text}: {obj.key} changed or vanished since the run pinned the "
                f"model ({pinned.pin}); start a new run to train on the new version"
            ) from None
        raise _failed(exc, ref, f"read {obj.key}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with dest.open("wb") as out:
        body = answer["Body"]
        while chunk := body.read(CHUNK):
            out.write(chunk)
            written += len(chunk)
    if written != obj.size:
        raise ModelDeliveryError(
            f"base model {ref.public_text}: {obj.key} arrived with {written} of {obj.size} bytes; retry"
        )
