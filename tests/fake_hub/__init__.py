"""A loopback fake of the Hugging Face Hub's download API, spoken to by the real ``huggingface_hub`` client.

Model delivery (``trait_lora.models``) is tested against the client's real HTTP code: its errors for a
gated repo, a bad token, a missing repo or revision; its cache; whether it sends anything at all when
the pinned commit is already on disk.
"""

from __future__ import annotations

from tests.fake_hub.server import INVALID_CREDENTIALS, FakeHub, HubRequest

__all__ = ["INVALID_CREDENTIALS", "FakeHub", "HubRequest"]
