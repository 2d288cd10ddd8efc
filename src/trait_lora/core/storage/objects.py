"""The store on S3 (or an S3-compatible server): conditional single PUTs, no listing cache.

``If-None-Match: *`` creates a key once; ``If-Match: <etag>`` replaces it only if unchanged (AWS since
2024; moto 5.1.5+; probe any other server with ``probe_conditional_writes``). Records are small, so
each write is one PUT and the condition covers the whole write (a multipart upload checks it only at
completion). The client is any boto3 S3 client: the provider builds it from an Airflow connection, the
trainer pod from its own credentials; this module imports no AWS library itself.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from trait_lora.core.storage.store import (
    AlreadyExists,
    Blob,
    Store,
    StoreError,
    VersionConflict,
    check_key,
)

CONFLICT_RETRIES = 5  # AWS may answer 409 ConditionalRequestConflict to racing conditional writes
MISSING = {"NoSuchKey", "404", "NotFound"}
PRECONDITION = {"PreconditionFailed", "412"}

# What a user can do about each refusal, by S3 error code.
ADVICE = {
    "NoSuchBucket": "the bucket does not exist: create it, or correct the bucket in the location",
    "AccessDenied": "the credentials may not use this bucket: grant s3:GetObject, s3:PutObject, "
    "s3:ListBucket and s3:DeleteObject on it",
    "InvalidAccessKeyId": "the access key is unknown: correct the Airflow connection's credentials",
    "SignatureDoesNotMatch": "the secret key is wrong: correct the Airflow connection's credentials",
    "ExpiredToken": "the session token expired: refresh the Airflow connection's credentials",
}


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (read by shape: no botocore import)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(code or status or "") or None
    return None


class S3Store:
    """A ``Store`` at ``s3://bucket/prefix``."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, location: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = location or f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, exc: BaseException, doing: str, key: str | None = None) -> StoreError:
        code = error_code(exc)
        where = self.url(key) if key else self.location
        if code is None:  # no answer at all: endpoint unreachable, no credentials, TLS...
            return StoreError(
                f"{where}: cannot {doing} ({type(exc).__name__}: {exc}); check the endpoint and "
                "credentials of the storage connection ([trait_lora] storage_conn_id or the "
                "connection named in the URL)"
            )
        advice = ADVICE.get(code, "see the S3 error code")
        return StoreError(f"{where}: cannot {doing}: S3 answered {code}; {advice}")

    def _put(self, key: str, data: bytes, **condition: str) -> str:
        for attempt in range(CONFLICT_RETRIES):
            try:
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, **condition
                )
            except Exception as exc:
                code = error_code(exc)
                if code in ("ConditionalRequestConflict", "409") and attempt + 1 < CONFLICT_RETRIES:
                    time.sleep(0.05 * (2**attempt))
                    continue
                if code in PRECONDITION or (condition.get("IfMatch") and code in MISSING):
                    if "IfNoneMatch" in condition:
                        raise AlreadyExists(f"{self.url(key)} already exists") from None
                    raise VersionConflict(f"{self.url(key)} changed since it was read") from None
                raise self._fail(exc, "write", key) from None
            return str(answer["ETag"])
        raise AssertionError("unreachable")

    def read(self, key: str) -> Blob | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return Blob(answer["Body"].read(), str(answer["ETag"]))
        except Exception as exc:
            if error_code(exc) in MISSING:
                return None
            raise self._fail(exc, "read", key) from None

    def create(self, key: str, data: bytes) -> str:
        return self._put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, version: str) -> str:
        return self._put(key, data, IfMatch=version)

    def put(self, key: str, data: bytes) -> str:
        return self._put(key, data)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if error_code(exc) not in MISSING:
                raise self._fail(exc, "delete", key) from None

    def list(self, prefix: str = "") -> list[str]:
        folder = prefix.strip("/")
        if folder:
            check_key(folder)
        full = "/".join(p for p in (self.prefix, folder) if p)
        full = f"{full}/" if full else ""
        keys: list[str] = []
        token: str | None = None
        try:
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self.client.list_objects_v2(**kwargs)
                strip = len(self.prefix) + 1 if self.prefix else 0
                keys += [item["Key"][strip:] for item in page.get("Contents", [])]
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")
        except Exception as exc:
            raise self._fail(exc, "list", folder or None) from None
        return sorted(keys)


def probe_conditional_writes(store: Store) -> None:
    """Fail unless ``store`` honours create-once and replace-if-unchanged, using a throwaway key.

    Some S3-compatible servers answer 200 (or 304) to a repeated ``If-None-Match: *``: on such a store
    two workers could both believe they own a job claim and both pay for a job, so we stop before any.
    """
    key = f"_probe/{uuid.uuid4().hex}"
    version = store.create(key, b"1")  # an unreachable or refusing store fails here, saying why
    try:
        try:
            store.create(key, b"2")
        except AlreadyExists:
            pass
        else:
            raise StoreError(
                f"{store.location} ignores conditional writes (a second create-if-absent of one key "
                "succeeded): trait-lora cannot keep one job per trait on it. Use AWS S3 or a server "
                "that honours If-None-Match and If-Match, or a local directory"
            )
        try:
            store.replace(key, b"3", "not-" + version)
        except VersionConflict:
            pass
        else:
            raise StoreError(
                f"{store.location} ignores If-Match (a replace at a wrong version succeeded): "
                "trait-lora cannot keep its records safe on it. Use AWS S3 or a server that honours "
                "conditional writes, or a local directory"
            )
    finally:
        store.delete(key)
