"""A loopback fake of Together AI's fine-tuning API, spoken to by the real ``together`` SDK in tests.

The fake exists so that the hook, operators and trigger are tested against the SDK's real HTTP code
(retries, redirects, multipart, streaming, pydantic parsing) instead of mocks of it, and so that the
failure modes that cost money (a lost create answer, a retried create, a hostile archive) can be
produced on demand.
"""

from __future__ import annotations

from tests.fake_together.server import DOWNLOAD_KINDS, OUTCOME_STATUSES, FakeTogether

__all__ = ["DOWNLOAD_KINDS", "OUTCOME_STATUSES", "FakeTogether"]
