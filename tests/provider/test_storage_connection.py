"""s3:// locations open through Airflow connections, as ObjectStoragePath's URLs do, and a bad store
stops before any money moves: unknown connection, missing bucket, or conditional writes ignored."""

from __future__ import annotations

import pytest

from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.objects import S3Store
from trait_lora.core.storage.store import StoreError
from trait_lora.provider import storage


def test_an_s3_url_uses_the_connection_it_names_or_the_configured_one(s3_server, s3_bucket, monkeypatch):
    storage._clients.clear()
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_S3", s3_server.connection_json())
    named = storage.checked_store(f"s3://team_s3@{s3_bucket}/trait-lora")
    assert isinstance(named, S3Store) and named.location == f"s3://team_s3@{s3_bucket}/trait-lora"
    named.put("hello.json", b"{}")
    # the same bucket through [trait_lora] storage_conn_id
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_CONN_ID", "team_s3")
    configured = storage.open_store(f"s3://{s3_bucket}/trait-lora")
    assert configured.read("hello.json").data == b"{}"
    assert configured.url("hello.json") == f"s3://{s3_bucket}/trait-lora/hello.json"


def test_a_folder_opens_as_a_local_store(tmp_path):
    store = storage.open_store(str(tmp_path / "out"))
    assert isinstance(store, LocalStore) and store.root == tmp_path / "out"


def test_a_missing_bucket_fails_the_check_naming_it_and_what_to_do(s3_conn):
    with pytest.raises(StoreError, match=r"s3://no-such-bucket-x/p.*NoSuchBucket; the bucket does not exist"):
        storage.checked_store("s3://no-such-bucket-x/p")


def test_an_unknown_connection_is_named(monkeypatch):
    storage._clients.clear()
    monkeypatch.delenv("AIRFLOW_CONN_NOBODY_KNOWS", raising=False)
    with pytest.raises(StoreError, match=r"connection 'nobody_knows'.*Admin > Connections"):
        storage.open_store("s3://nobody_knows@some-bucket/p")


def test_the_credentials_never_appear_in_a_store_error(s3_server, monkeypatch):
    from tests.support.s3 import SECRET_KEY

    storage._clients.clear()
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_S3", s3_server.connection_json())
    with pytest.raises(StoreError) as failed:
        storage.checked_store("s3://team_s3@no-such-bucket-y/p")
    assert SECRET_KEY not in str(failed.value)
