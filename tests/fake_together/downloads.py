"""Downloads: ``GET /v1/finetune/download``, optionally redirected to signed storage on another host."""

from __future__ import annotations

import hmac
import re
import secrets
from urllib.parse import urlsplit

from tests.fake_together.archives import (
    build_download,
)
from tests.fake_together.common import (
    ZSTD_CONTENT_TYPE,
)
from tests.fake_together.jobs import JobsMixin
from tests.fake_together.wire import (
    _BadRequest,
    _encoded,
    _error,
    _Reply,
    _Request,
)
from tests.support.adapters import LLAMA_8B_SHAPES


class DownloadsMixin(JobsMixin):
    """The download routes of ``FakeTogether`` (state lives on the fake)."""

    def _download(self, req: _Request) -> _Reply:
        ft_id = req.arg("ft_id")
        if not ft_id:
            raise _BadRequest("ft_id is required")
        checkpoint = req.arg("checkpoint")
        if checkpoint != "adapter":
            raise _BadRequest(f"this fake serves checkpoint=adapter only, got {checkpoint!r}")
        step = req.arg("checkpoint_step")
        if step is not None and not re.fullmatch(r"\d+", step):
            raise _BadRequest("checkpoint_step must be a non-negative integer")
        job = self._job(ft_id)
        if job["status"] != "completed":
            raise _BadRequest(
                f"fine-tune job {ft_id} is {job['status']}; only completed jobs can be downloaded"
            )
        kind, prefix = "good", ""
        for contains, rule_kind, rule_prefix in self._downloads:
            if contains in (job.get("suffix") or ""):
                kind, prefix = rule_kind, rule_prefix
        training_type = job.get("training_type") or {}
        r = int(training_type.get("lora_r", 4))
        alpha = int(training_type.get("lora_alpha", 16))
        modules = tuple(
            m.strip() for m in str(training_type.get("lora_trainable_modules", "")).split(",") if m.strip()
        )
        if not modules or not set(modules) <= set(LLAMA_8B_SHAPES):
            modules = ("q_proj", "v_proj")  # "all-linear" and MLP modules: the builder knows attention only
        name = str(job["model_output_name"]).split("/")[-1]
        headers = {
            "Content-Type": ZSTD_CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="{name}-adapter.tar.zst"',
        }
        self.download_accept_encodings.append(req.headers.get("Accept-Encoding") or "")
        accepts = [
            part.split(";")[0].strip().lower()
            for part in (req.headers.get("Accept-Encoding") or "").split(",")
        ]
        encode = self.download_encoding == "gzip" or (
            self.download_encoding == "negotiate" and "gzip" in accepts
        )
        if encode:
            headers["Content-Encoding"] = "gzip"
        factory = lambda: _encoded(build_download(kind, r, alpha, modules, prefix), encode)  # noqa: E731
        if self.download_redirect:
            token = secrets.token_hex(12)
            self._signed_downloads[token] = (factory, headers)
            port = urlsplit(self.base_url).port
            location = f"http://localhost:{port}/storage/downloads/{token}?sig={self._sign(token)}"
            return _Reply(302, b"", {"Location": location})
        return _Reply(
            200,
            headers=headers,
            action="truncate" if kind == "truncated" else "send",
            body_factory=factory,
        )

    def _storage_get(self, req: _Request) -> _Reply:
        """Signed storage for downloads: like S3, a second credential (our API key) is refused."""
        token = req.path.rsplit("/", 1)[-1]
        self.storage_downloads.append((str(req.headers.get("Host")), req.headers.get("Authorization")))
        if req.method != "GET":
            return _error(405, "storage serves GET only")
        if not hmac.compare_digest(req.arg("sig") or "", self._sign(token)):
            return _error(403, "download URL signature does not match")
        if req.headers.get("Authorization") is not None:
            return _error(400, "Only one auth mechanism allowed: presigned URL and an Authorization header")
        signed = self._signed_downloads.get(token)
        if signed is None:
            return _error(404, "no such storage object")
        factory, headers = signed
        return _Reply(200, headers=dict(headers), body_factory=factory)
