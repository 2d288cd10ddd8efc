"""Files: ``POST /v1/files`` (302 to signed storage), the unauthenticated PUT, preprocess, and the
asynchronous validation a file goes through."""

from __future__ import annotations

import email
import email.message
import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fake_together import shapes
from tests.fake_together.common import (
    FILE_PURPOSES,
    FILE_TYPES,
)
from tests.fake_together.state import FakeState
from tests.fake_together.wire import (
    _BadRequest,
    _error,
    _invalid,
    _json_reply,
    _Reply,
    _Request,
    _seconds,
    _validate_dataset,
)


class FilesMixin(FakeState):
    """The file routes of ``FakeTogether`` (state lives on the fake)."""

    # ----------------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------------

    def _file_view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in record.items() if k not in ("checksum", "content") and not k.startswith("_")}
        # the spec's flag beside the SDK's status: both shapes in one answer
        view["Processed"] = record.get("processing_status") in shapes.FILE_VERDICTS
        return view

    def _file(self, file_id: str) -> dict[str, Any]:
        record = self.files.get(file_id)
        if record is None:
            raise _BadRequest(f"file {file_id} not found", 404)
        return record

    def _files_create(self, req: _Request) -> _Reply:
        content_type = req.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
            raise _BadRequest(f"POST /v1/files needs multipart/form-data, got {content_type!r}")
        message = email.message_from_bytes(
            b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + req.body
        )
        if not message.is_multipart():
            raise _BadRequest("malformed multipart body")
        form: dict[str, str] = {}
        for part in message.get_payload():
            assert isinstance(part, email.message.Message)
            name = part.get_param("name", header="content-disposition")
            if part.get_param("filename", header="content-disposition") is not None:
                raise _BadRequest("file bytes must be PUT to the upload URL, not posted to /v1/files")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                form[name] = payload.decode()
        missing = [k for k in ("purpose", "file_name", "file_type", "checksum") if not form.get(k)]
        if missing:
            raise _BadRequest(f"missing form field(s): {', '.join(missing)}")
        if form["purpose"] not in FILE_PURPOSES:
            raise _BadRequest(f"purpose must be one of {FILE_PURPOSES}")
        if form["file_type"] not in FILE_TYPES:
            raise _BadRequest(f"file_type must be one of {FILE_TYPES}")
        if not form["file_name"].endswith("." + form["file_type"]):
            raise _BadRequest(
                f"file_name {form['file_name']!r} does not match file_type {form['file_type']!r}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", form["checksum"]):
            raise _BadRequest("checksum must be a lower-case sha256 hex digest")
        for record in self.files.values():
            if record["checksum"] == form["checksum"] and record["content"] is not None:
                headers = (
                    {"Retry-After": _seconds(self.conflict_retry_after)}
                    if self.conflict_retry_after is not None
                    else {}
                )
                return _json_reply(409, {"message": "File already exists", "file_id": record["id"]}, headers)
        file_id = f"file-{uuid.uuid4()}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": 0,
            "created_at": int(datetime.now(UTC).timestamp()),
            "filename": form["file_name"],
            "FileType": form["file_type"],
            "purpose": form["purpose"],
            "processing_status": "PENDING",
            "checksum": form["checksum"],
            "content": None,
        }
        location = f"{self.base_url}/storage/uploads/{file_id}?sig={self._sign(file_id)}"
        return _Reply(302, b"", {"Location": location, "X-Together-File-Id": file_id})

    def _storage_put(self, req: _Request) -> _Reply:
        """The presigned-URL side: no API key allowed (S3 refuses two auth mechanisms), exact sha256."""
        match = re.fullmatch(r"/storage/uploads/(?P<id>[^/]+)", req.path)
        if match is None:
            return _error(404, "no such storage object")
        if req.method != "PUT":
            return _error(405, "storage accepts PUT only")
        if req.headers.get("Authorization") is not None:
            return _error(400, "Only one auth mechanism allowed: presigned URL and an Authorization header")
        file_id = match["id"]
        if not hmac.compare_digest(req.arg("sig") or "", self._sign(file_id)):
            return _error(403, "upload URL signature does not match")
        record = self.files.get(file_id)
        if record is None:
            return _error(404, f"no pending upload for {file_id}")
        if req.headers.get("Content-Length") is None and "chunked" not in (
            req.headers.get("Transfer-Encoding") or ""
        ):
            return _error(411, "Content-Length required")
        digest = hashlib.sha256(req.body).hexdigest()
        if digest != record["checksum"]:
            return _error(400, f"body sha256 {digest} does not match announced checksum {record['checksum']}")
        record["content"] = req.body
        record["bytes"] = len(req.body)
        self._uploads += 1
        return _Reply(200, b"", {"ETag": f'"{digest[:32]}"'})

    def _files_preprocess(self, req: _Request, id: str) -> _Reply:
        record = self._file(id)
        if record["content"] is None:
            raise _BadRequest(f"file {id} has no uploaded bytes yet")
        report = _validate_dataset(record["content"], record["FileType"], record["purpose"])
        for contains, error in self._file_verdicts:
            if contains in record["filename"]:
                report = _invalid(error)
        record["_report"] = {"file_id": id, **report}
        record["_polls"] = 0
        record["processing_status"] = "PENDING"
        record.pop("validation_report", None)
        if self.file_polls <= 0:
            self._settle_file(record)
        return _json_reply(200, self._file_view(record))

    def _settle_file(self, record: dict[str, Any]) -> None:
        report = record["_report"]
        record["processing_status"] = "COMPLETED" if report["valid"] else "INVALID_FORMAT"
        record["validation_report"] = report

    def _advance_file(self, record: dict[str, Any]) -> None:
        """One retrieve's worth of validation progress (like jobs, files only move when read)."""
        if record.get("processing_status") not in ("PENDING", "QUEUED", "RUNNING") or "_report" not in record:
            return
        record["_polls"] += 1
        if record["_polls"] >= self.file_polls:
            self._settle_file(record)
        else:
            record["processing_status"] = "QUEUED" if record["_polls"] == 1 else "RUNNING"

    def _files_retrieve(self, req: _Request, id: str) -> _Reply:
        record = self._file(id)
        self._advance_file(record)
        return _json_reply(200, self._file_view(record))

    def _files_list(self, req: _Request) -> _Reply:
        return _json_reply(200, {"object": "list", "data": [self._file_view(f) for f in self.files.values()]})

    def _files_delete(self, req: _Request, id: str) -> _Reply:
        self._file(id)
        del self.files[id]
        return _json_reply(200, {"id": id, "deleted": True})

    def _files_content(self, req: _Request, id: str) -> _Reply:
        record = self._file(id)
        return _Reply(200, record["content"] or b"", {"Content-Type": "application/octet-stream"})
