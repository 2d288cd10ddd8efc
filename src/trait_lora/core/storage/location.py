"""Where shards and outputs live, as a URL, and which of those a run's conf may name.

A location is a local path (or ``file://`` URL: the embedded default, unchanged for ``make demo``) or
``s3://[conn_id@]bucket/prefix``, the form Airflow's ``ObjectStoragePath`` takes, so a user writes the
same URL here as in any other Airflow task. A run's conf is user input: ``storage_roots`` (settings)
lists the only locations it may point into, checked when the run is created (a schema pattern) and
again, with symlinks resolved, before a task reads or writes anything.

The connection is part of a location: ``s3://conn@bucket/p`` is read and written as ``conn``'s identity,
at ``conn``'s endpoint. A conf may therefore name a connection only where the matching root names it;
a location that names none uses the deployment's ``default_conn`` (``[trait_lora] storage_conn_id``),
so naming that one explicitly is the same location.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trait_lora.core.errors import TraitLoraError

SUPPORTED = ("file", "s3")
# Tested nowhere here, so claimed nowhere: named in the error so a user knows it is a choice, not a typo.
NOT_YET = ("gs", "gcs", "abfs", "abfss", "az", "adl", "s3a", "s3n", "hdfs", "http", "https")
_URL_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<rest>.*)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class LocationError(TraitLoraError, ValueError):
    """A location that cannot be used, or one outside the allowed roots; the message says what to do."""


@dataclass(frozen=True)
class Location:
    """A parsed location. ``path`` for local ones; ``bucket``/``prefix``/``conn_id`` for S3."""

    scheme: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""
    conn_id: str | None = None

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def url(self) -> str:
        """The location as a user writes it (the connection kept, so a worker can open it)."""
        if self.is_local:
            return str(self.path)
        user = f"{self.conn_id}@" if self.conn_id else ""
        return f"s3://{user}{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def public_url(self) -> str:
        """The URL without the connection id: what goes into records other systems read."""
        if self.is_local:
            return str(self.path)
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def connection(self, default_conn: str | None) -> str | None:
        """The connection this location is opened with: its own, else the deployment's default."""
        return None if self.is_local else (self.conn_id or default_conn)

    def covers(self, other: Location) -> bool:
        """Whether ``other`` is this location or lies under it (by whole path segments), whatever
        connection either names."""
        if self.scheme != other.scheme:
            return False
        if self.is_local:
            assert self.path is not None and other.path is not None
            return other.path == self.path or self.path in other.path.parents
        if self.bucket != other.bucket:
            return False
        return not self.prefix or other.prefix == self.prefix or other.prefix.startswith(self.prefix + "/")

    def contains(self, other: Location, default_conn: str | None = None) -> bool:
        """Whether ``other`` lies under this location and is opened with the same connection."""
        return self.covers(other) and self.connection(default_conn) == other.connection(default_conn)


def _plain_parts(text: str, what: str, original: str) -> list[str]:
    parts = [p for p in text.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise LocationError(f"{what} {original!r} contains '.' or '..': write the location without them")
    return parts


def parse_location(text: str, *, what: str = "location") -> Location:
    """Parse a local path, ``file://`` URL or ``s3://`` URL; anything else names what is supported."""
    raw = str(text).strip()
    if not raw:
        raise LocationError(f"{what} is empty: give a local folder or an s3://bucket/prefix URL")
    match = _URL_RE.match(raw)
    if match is None:  # a plain local path
        _plain_parts(raw, what, raw)
        return Location("file", path=Path(os.path.abspath(os.path.expanduser(raw))))
    scheme, rest = match["scheme"], match["rest"]
    if scheme == "file":
        if not rest.startswith("/"):
            raise LocationError(f"{what} {raw!r}: a file:// URL needs an absolute path (file:///srv/...)")
        _plain_parts(rest, what, raw)
        return Location("file", path=Path(os.path.abspath(rest)))
    if scheme != "s3":
        hint = " (not supported yet)" if scheme in NOT_YET else ""
        raise LocationError(
            f"{what} {raw!r}: scheme {scheme}://{hint} is not one trait-lora stores to; use a local "
            "folder, file:///path or s3://[conn_id@]bucket/prefix"
        )
    authority, _, path = rest.partition("/")
    conn_id, at, bucket = authority.rpartition("@")
    if not _BUCKET_RE.match(bucket):
        raise LocationError(f"{what} {raw!r}: {bucket!r} is not an S3 bucket name")
    prefix = "/".join(_plain_parts(path, what, raw))
    return Location("s3", bucket=bucket, prefix=prefix, conn_id=conn_id if at else None)


def resolved(location: Location) -> Location:
    """A local location with every symlink resolved (what the kernel will really open)."""
    if not location.is_local:
        return location
    assert location.path is not None
    return Location("file", path=Path(os.path.realpath(location.path)))


def confine(
    text: str,
    roots: Iterable[str],
    *,
    what: str,
    setting: str,
    default_conn: str | None = None,
    conn_setting: str = "storage_conn_id",
) -> Location:
    """The location ``text`` if it lies inside one of ``roots`` (symlinks resolved) with the root's
    connection, else LocationError.

    ``setting`` names what a deployment changes to allow more (the error says so); ``default_conn``
    is the connection of a location that names none (``conn_setting``)."""
    location = parse_location(text, what=what)
    allowed = [parse_location(r, what=f"{setting} entry") for r in roots if str(r).strip()]
    real = resolved(location)
    for root in allowed:
        if root.contains(location, default_conn) and resolved(root).contains(real, default_conn):
            return location
    borrowed = [r for r in allowed if r.covers(location)]
    if borrowed and not location.is_local:
        used = location.connection(default_conn)
        permitted = sorted({str(r.connection(default_conn)) for r in borrowed})
        raise LocationError(
            f"{what} {text!r} names Airflow connection {used!r}, which this deployment does not allow for "
            f"that location: [trait_lora] {setting} allows it only with connection(s) "
            f"{', '.join(repr(c) for c in permitted)} (a location naming no connection uses [trait_lora] "
            f"{conn_setting} = {default_conn!r}). Write the location without a connection, or ask an "
            f"administrator to add it with that connection to [trait_lora] {setting}. Nothing was read or "
            "written"
        )
    shown = ", ".join(r.url for r in allowed) or "(none)"
    raise LocationError(
        f"{what} {text!r} is outside the locations this deployment allows ({shown}); pick a location "
        f"inside one of them, or ask an administrator to add it to [trait_lora] {setting}. Nothing was "
        "read or written"
    )


def _escape(text: str) -> str:
    """Escape for both Python's ``re`` and the browser's ECMAScript regexes (``re.escape`` writes
    ``\\-``, which a unicode-mode ECMAScript pattern refuses)."""
    return "".join("\\" + c if c in r".^$*+?()[]{}|\\" else c for c in text)


def root_pattern(roots: Iterable[str], default_conn: str | None = None) -> str:
    """A JSON-schema ``pattern`` accepting exactly the locations inside ``roots`` (by text: no '.' or
    '..' segment, the root or a path below it, the root's connection). The run is refused when created
    if it does not match; symlinks are checked again by ``confine`` before any read or write."""
    options = []
    for text in roots:
        if not str(text).strip():
            continue
        root = parse_location(text, what="storage root")
        if root.is_local:
            body = _escape(str(root.path).rstrip("/"))
            options.append(f"(?:file://)?{body}")
        else:
            conn = root.connection(default_conn)
            if conn is None:  # no default known: only the connection-less form is the root's
                user = ""
            elif conn == default_conn:  # named or not, the same connection
                user = f"(?:{_escape(conn)}@)?"
            else:
                user = f"{_escape(conn)}@"
            tail = "/" + _escape(root.prefix) if root.prefix else ""
            options.append(f"s3://{user}{_escape(root.bucket)}{tail}")
    if not options:
        return "^(?!)"  # nothing allowed
    no_dots = r"(?!.*/\.{1,2}(?:/|$))"
    return f"^{no_dots}(?:{'|'.join(options)})(?:/[^/].*)?/?$"
