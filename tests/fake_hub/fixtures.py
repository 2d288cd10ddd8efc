"""Pytest fixtures for the fake Hub (import them into a conftest, or list this module in pytest_plugins)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_hub.server import FakeHub


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A started fake with a fresh port, token and repos per test; fails the test if the fake crashed."""
    with FakeHub() as fake:
        yield fake
    assert not fake.bugs, "the fake Hub crashed:\n" + "\n".join(fake.bugs)


@pytest.fixture
def hub_online(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """Let ``huggingface_hub`` use the network in this test, with the fake as its default endpoint.

    tests/conftest.py sets HF_HUB_OFFLINE=1 for the whole session (nothing may reach the real Hub), and
    huggingface_hub reads it, and HF_ENDPOINT, once at import into ``constants``: setting the
    environment now would change nothing. So the constants are set, as HF_ENDPOINT=<fake> would have
    set them, and a call that forgets ``endpoint=`` still lands on the fake, never on huggingface.co."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Telemetry off: else the client's first request of the process fetches /api/agent-harnesses (and
    # writes it under the real HF_HOME), so request counts would depend on which test ran first.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        fake_hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    return fake_hub
