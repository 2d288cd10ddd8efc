"""What a ``base_model`` names, and the exact version of it a run trains on.

A run's adapters are only comparable (and only usable by stage 3) if every trait trained on the same
weights, so the reference a user writes is parsed once into a ``ModelRef`` and pinned once per run
into a ``PinnedModel`` (a Hub commit id, or a digest of an S3 folder's listing); every trait then
loads exactly that pin. Both are plain JSON on the wire (``to_dict``/``from_dict``), and neither ever
holds a token: the token is a parameter of the calls that need it, never a field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from trait_lora.core.errors import TraitLoraError
from trait_lora.core.storage.location import Location, LocationError, parse_location

DEFAULT_HF_CONN_ID = "huggingface_default"
FORMS = (
    "a local model folder, a Hugging Face repo id (org/name, or org/name@revision), or an "
    "s3://[conn_id@]bucket/prefix folder"
)
# The Hub's own rule (huggingface_hub.utils.validate_repo_id): [namespace/]name of letters, digits,
# '-', '_', '.'; no '--' or '..'; at most 96 characters each.
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[\w])?"
_HUB_RE = re.compile(rf"^(?P<repo>{_NAME}(?:/{_NAME})?)(?:@(?P<revision>[^\s@]+))?$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
DIGEST_PREFIX = "sha256:"


class ModelDeliveryError(TraitLoraError):
    """The base model cannot be named, pinned or fetched; the message says which model and what to do."""


class ModelKind(StrEnum):
    LOCAL = "local"
    HUB = "hub"
    S3 = "s3"


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``base_model``. ``text`` is the reference as a user writes it (connection id kept)."""

    kind: ModelKind
    text: str
    path: Path | None = None  # LOCAL: absolute
    repo_id: str = ""  # HUB
    revision: str | None = None  # HUB: what followed '@' (None: the repo's default branch)
    location: Location | None = None  # S3

    @property
    def public_text(self) -> str:
        """The reference without an S3 connection id: what records other systems read carry."""
        if self.kind is ModelKind.S3:
            assert self.location is not None
            return self.location.public_url
        return self.text


@dataclass(frozen=True)
class S3Object:
    """One object of an S3 model folder: its key below the folder, ETag and size."""

    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class PinnedModel:
    """A ``ModelRef`` fixed to one version: what every trait of a run trains on.

    ``pin`` is the Hub commit id (40 hex) for a repo, ``sha256:<hex>`` (a digest of the folder's
    keys, ETags and sizes) for S3, None for a local folder (nothing to pin it by). ``objects`` is the
    S3 listing the digest covers, so the copy takes exactly those versions; ``skip`` are the Hub file
    patterns not downloaded (other weight formats the trainer never reads)."""

    ref: ModelRef
    pin: str | None = None
    objects: tuple[S3Object, ...] = ()
    skip: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """``org/name@<commit>``, ``s3://bucket/prefix@sha256:..``, or the folder: for logs and errors."""
        base = self.ref.repo_id if self.ref.kind is ModelKind.HUB else self.ref.public_text
        return f"{base}@{self.pin}" if self.pin else base

    def record(self) -> dict[str, str | None]:
        """What a ledger record, an MLflow run and a mapping entry say about the base model."""
        base = self.ref.repo_id if self.ref.kind is ModelKind.HUB else self.ref.public_text
        return {"base_model": base, "base_model_source": self.ref.kind.value, "base_model_revision": self.pin}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (XCom, a pod's argument): the reference as written, the pin, and what it covers."""
        return {
            "base_model": self.ref.text,
            "pin": self.pin,
            "objects": [[o.key, o.etag, o.size] for o in self.objects],
            "skip": list(self.skip),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PinnedModel:
        ref = parse_model_ref(str(data["base_model"]))
        pin = data.get("pin")
        objects = tuple(S3Object(str(k), str(e), int(s)) for k, e, s in data.get("objects") or ())
        pinned = cls(ref, str(pin) if pin else None, objects, tuple(str(p) for p in data.get("skip") or ()))
        check_pin(pinned)
        return pinned


def check_pin(pinned: PinnedModel) -> None:
    """A pin of the right form for its kind (a record from elsewhere is input like any other)."""
    kind, pin = pinned.ref.kind, pinned.pin
    if kind is ModelKind.HUB and not (pin and COMMIT_RE.match(pin)):
        raise ModelDeliveryError(f"{pinned.ref.text}: pin {pin!r} is not a 40-hex commit id")
    if kind is ModelKind.S3 and not (pin and re.fullmatch(DIGEST_PREFIX + "[0-9a-f]{64}", pin)):
        raise ModelDeliveryError(f"{pinned.ref.public_text}: pin {pin!r} is not a sha256: digest")


def parse_model_ref(text: str, *, what: str = "base_model") -> ModelRef:
    """Parse a ``base_model``: an existing folder or path-like text is local, ``s3://`` is S3, and
    ``org/name[@revision]`` is a Hub repo (a folder of that name that exists here wins, as in
    transformers' ``from_pretrained``)."""
    raw = str(text).strip()
    if not raw:
        raise ModelDeliveryError(f"{what} is empty: give {FORMS}")
    if raw.startswith(("s3://", "file://")):
        try:
            location = parse_location(raw, what=what)
        except LocationError as exc:
            raise ModelDeliveryError(f"{exc}; {what} may be {FORMS}") from None
        if location.is_local:
            return ModelRef(ModelKind.LOCAL, str(location.path), path=location.path)
        return ModelRef(ModelKind.S3, location.url, location=location)
    if "://" in raw:
        raise ModelDeliveryError(f"{what} {raw!r}: that URL scheme is not supported; give {FORMS}")
    expanded = Path(os.path.expanduser(raw))
    if raw.startswith(("/", "~", "./", "../")) or raw in (".", "..") or expanded.is_dir():
        path = Path(os.path.abspath(expanded))
        return ModelRef(ModelKind.LOCAL, str(path), path=path)
    match = _HUB_RE.match(raw)
    if match is None or "--" in match["repo"] or ".." in match["repo"]:
        raise ModelDeliveryError(
            f"{what} {raw!r} is not an existing folder here and not a Hugging Face repo id; give {FORMS}"
        )
    return ModelRef(ModelKind.HUB, raw, repo_id=match["repo"], revision=match["revision"])
