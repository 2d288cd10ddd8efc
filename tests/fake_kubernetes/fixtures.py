"""Pytest fixtures for the fake Kubernetes API (registered in ``tests/conftest.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.fake_kubernetes.server import FakeKubernetes


@pytest.fixture
def fake_kubernetes() -> Iterator[FakeKubernetes]:
    """A started fake with one 8-CPU node (``node-1``, no GPU) and fresh state per test.

    Teardown kills every container process still running and fails the test if the fake crashed on a
    request, was given a pod it cannot model (``FakeKubernetes.bugs``) or holds an object the 1.37
    schema refuses (``FakeKubernetes.self_check``).
    """
    with FakeKubernetes() as fake:
        yield fake
        problems = fake.self_check()
    assert not fake.bugs, "the fake Kubernetes API failed:\n" + "\n".join(fake.bugs)
    assert not problems, "the fake answered objects a 1.37 API server could not:\n" + "\n".join(problems)


@pytest.fixture
def kubernetes_conn(fake_kubernetes: FakeKubernetes, monkeypatch: pytest.MonkeyPatch) -> FakeKubernetes:
    """``kubernetes_default`` pointing at the fake, set by environment as a deployment would set it.

    ``KUBECONFIG`` is removed: the pod operator hands the file it names to its trigger as
    ``config_dict``, and the async hook refuses a connection that also has ``kube_config``.
    """
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(fake_kubernetes.airflow_connection()))
    return fake_kubernetes
