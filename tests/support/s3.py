"""A real S3 API on loopback: moto in server mode, spoken to over HTTP by boto3 as AWS would be.

One server per test session (per xdist worker); each test gets its own bucket, so no state is shared.
moto honours ``If-None-Match: *`` and ``If-Match`` on PutObject (412 on a failed precondition), which
is what the store relies on; it never answers 409, and it does not lock between check and write, so
races in tests are made deterministic rather than left to timing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

ACCESS_KEY, SECRET_KEY, REGION = "trait-lora-test", "trait-lora-secret-not-real", "us-east-1"
_buckets = itertools.count()


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self, **overrides: Any) -> Any:
        import boto3

        kwargs = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
        }
        return boto3.client("s3", **{**kwargs, **overrides})

    def connection_json(self) -> str:
        """An Airflow AWS connection (as ``AIRFLOW_CONN_<ID>``) that points at this server."""
        import json

        return json.dumps(
            {
                "conn_type": "aws",
                "login": ACCESS_KEY,
                "password": SECRET_KEY,
                "extra": {"endpoint_url": self.endpoint, "region_name": REGION},
            }
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server."""
    name = f"trait-lora-{os.getpid()}-{next(_buckets)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_conn(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``aws_default`` pointing at the server, as a deployment sets a connection by env."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", s3_server.connection_json())
    from trait_lora.provider import storage

    storage._clients.clear()
    storage._probed.clear()
    return "aws_default"
