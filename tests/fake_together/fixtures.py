"""Pytest fixtures for the fake Together server (registered by the lead via ``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_together.server import FakeTogether


@pytest.fixture
def fake_together() -> Iterator[FakeTogether]:
    """A started fake with a fresh port, key and state per test, so no test sees another's jobs.

    Teardown fails the test if the fake itself crashed on a request (see ``FakeTogether.bugs``): such a
    request was answered 500, which a client under test might have swallowed.
    """
    with FakeTogether() as fake:
        yield fake
    assert not fake.bugs, "the fake Together server crashed:\n" + "\n".join(fake.bugs)


@pytest.fixture
def together_env(fake_together: FakeTogether, monkeypatch: pytest.MonkeyPatch) -> FakeTogether:
    """Point code that builds its own client from the environment (``Together()``) at the fake."""
    monkeypatch.setenv("TOGETHER_API_KEY", fake_together.api_key)
    monkeypatch.setenv("TOGETHER_BASE_URL", fake_together.base_url)
    return fake_together


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: Airflow's triggerer runs on asyncio, and trio is not a dependency."""
    return "asyncio"
