"""Opening a location's store with Airflow's connections, and the roots a run's conf may point into.

``s3://conn_id@bucket/prefix`` takes its credentials and endpoint from that Airflow connection (as
``ObjectStoragePath`` does), ``s3://bucket/prefix`` from ``[trait_lora] storage_conn_id``. The client is
the Amazon provider's own (``S3Hook``), so everything an AWS connection can say (keys, a role, a
profile, ``endpoint_url`` for an S3-compatible server) works; boto3 is imported only when an s3://
location is opened, never at DAG parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trait_lora import settings
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.location import Location, confine, parse_location
from trait_lora.core.storage.objects import S3Store, probe_conditional_writes
from trait_lora.core.storage.opener import register_opener
from trait_lora.core.storage.store import Store, StoreError

DEFAULT_CONN_ID = "aws_default"
_clients: dict[str, Any] = {}
_probed: set[str] = set()


def s3_client(conn_id: str) -> Any:
    """One boto3 S3 client per connection and process (clients are thread-safe and costly to build).

    The Amazon provider quietly falls back to the machine's default credentials when a connection does
    not exist; we allow that only for ``aws_default`` (an instance role or a pod's service account),
    so a misspelt connection id is an error instead of a write with someone else's identity."""
    if conn_id not in _clients:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk import BaseHook

        try:
            if conn_id != DEFAULT_CONN_ID:
                BaseHook.get_connection(conn_id)
            _clients[conn_id] = S3Hook(aws_conn_id=conn_id).get_conn()
        except Exception as exc:  # a missing connection, a bad extra: say which connection
            raise StoreError(
                f"cannot build an S3 client from Airflow connection {conn_id!r} "
                f"({type(exc).__name__}); create or fix that connection (Admin > Connections), or "
                "name another in the URL (s3://conn_id@bucket/prefix)"
            ) from None
    return _clients[conn_id]


def open_store(location: Location | str, *, what: str = "location") -> Store:
    """The store of a location: a ``LocalStore`` for a folder, an ``S3Store`` for an s3:// URL."""
    loc = parse_location(location, what=what) if isinstance(location, str) else location
    if loc.is_local:
        assert loc.path is not None
        return LocalStore(loc.path)
    conn_id = loc.conn_id or default_conn_id()
    return S3Store(s3_client(conn_id), loc.bucket, loc.prefix, location=loc.url)


def default_conn_id(*, use_airflow: bool = True) -> str:
    """The connection of an s3:// location that names none (``[trait_lora] storage_conn_id``)."""
    return settings.get_str("storage_conn_id", use_airflow=use_airflow)


def confine_conf(text: str, roots: list[str], *, what: str) -> Location:
    """A location from a run's conf (or an Asset event), if it lies inside ``roots`` with the root's
    connection; else a LocationError naming ``storage_roots`` / ``storage_conn_id``."""
    return confine(text, roots, what=what, setting="storage_roots", default_conn=default_conn_id())


def _open_s3(loc: Location) -> Store:
    return open_store(loc)


register_opener("s3", _open_s3)  # the core opens s3:// locations through this (core.storage.opener)


def checked_store(location: Location | str, *, what: str = "output_dir") -> Store:
    """``open_store``, after proving the store reachable and honouring conditional writes (once per
    location and process): a bad store must stop a run before any upload or paid job."""
    store = open_store(location, what=what)
    if store.location not in _probed:
        probe_conditional_writes(store)
        _probed.add(store.location)
    return store


def _with(roots: list[str], extra: list[str]) -> list[str]:
    return roots + [r for r in extra if r not in roots]


def storage_roots(project_dir: Path, *, use_airflow: bool = True) -> list[str]:
    """The deployment's own shards_dir and output_dir, and ``[trait_lora] storage_roots``.

    The deployment's own folders are always allowed: they are the form's defaults, and a default the
    form refuses would stop the DAG from loading at all."""
    shards, output = settings.default_dirs(project_dir, use_airflow=use_airflow)
    # resolved as the form's defaults are (params.default_dirs), so the defaults always lie inside
    own = [str(d if "://" in str(d) else Path(d).resolve()) for d in (shards, output)]
    return _with(own, [str(r) for r in settings.get("storage_roots", use_airflow=use_airflow)])


def run_roots(dag: Any) -> list[str]:
    """The roots a running task checks its conf against, as the DAG file computed them at parse.

    From the settings and the DAG file's project folder (dags/..), not from the DAG's params: those
    may already carry the run's conf (``dag.test`` folds it in), and the conf is what is checked."""
    fileloc = getattr(dag, "fileloc", None)
    if not fileloc:
        return [str(r) for r in settings.get("storage_roots")]
    return storage_roots(Path(fileloc).resolve().parent.parent)
