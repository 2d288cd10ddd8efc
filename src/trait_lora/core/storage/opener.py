"""Turning a location's text into its store, without the core knowing where credentials come from.

A local folder needs nothing; an ``s3://`` location needs a client built from an Airflow connection,
which only the provider layer may touch. The provider registers an opener per scheme when it is
imported (``trait_lora.provider.storage``); the core asks for a store by URL and never imports Airflow.
A trainer pod registers its own (credentials from its environment) the same way.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.location import Location, parse_location
from trait_lora.core.storage.store import Store, StoreError

Opener = Callable[[Location], Store]
_OPENERS: dict[str, Opener] = {}


def register_opener(scheme: str, opener: Opener) -> None:
    _OPENERS[scheme] = opener


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names object storage (``file://`` is a local folder written as a URL)."""
    raw = str(text)
    return "://" in raw and not raw.startswith("file://")


def open_location(location: str | os.PathLike[str] | Store, *, what: str = "location") -> Store:
    """The store at ``location``: a folder path (as given, relative paths included), a ``file://`` URL,
    or an object-storage URL through the opener registered for its scheme."""
    if not isinstance(location, (str, os.PathLike)):
        return location
    raw = str(location)
    if "://" not in raw:
        return LocalStore(raw)
    loc = parse_location(raw, what=what)
    if loc.is_local:
        assert loc.path is not None
        return LocalStore(loc.path)
    opener = _OPENERS.get(loc.scheme)
    if opener is None:
        raise StoreError(
            f"{what} {loc.public_url}: no {loc.scheme}:// opener in this process; import "
            "trait_lora.provider.storage (it opens s3:// with Airflow connections) or register one "
            "with trait_lora.core.storage.opener.register_opener"
        )
    return opener(loc)


def scratch_dir(location: str | os.PathLike[str], name: str) -> Path:
    """Where a step keeps files on their way in or out (downloads, split files): beside the records
    in a local output folder (a rename into place stays on one filesystem), in this worker's temp
    folder for an output on object storage."""
    if is_url(location):
        digest = hashlib.sha256(str(location).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "trait-lora-scratch" / digest / name.lstrip(".")
    else:
        folder = Path(str(location).removeprefix("file://")) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
