"""Per-run failure records on a folder and on S3: concurrent mapped tasks each keep their own entry."""

from __future__ import annotations

import threading

import pytest

from trait_lora.core.handoff import runs
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.objects import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path)
    return S3Store(request.getfixturevalue("s3_server").client(), request.getfixturevalue("s3_bucket"), "o")


def test_failures_of_concurrent_tasks_are_all_kept_and_a_retry_clears_its_own(store):
    traits = [f"t{i}_plus" for i in range(8)]
    if isinstance(store, S3Store):
        # moto checks If-Match and writes without a lock between them (AWS does not): real races there
        # are won by timing, so on S3 the writers take turns; the swap itself is tested in test_store
        for t in traits:
            runs.record_failure(store, "manual__1", t, "upload", f"bad {t}")
    else:
        threads = [
            threading.Thread(target=runs.record_failure, args=(store, "manual__1", t, "upload", f"bad {t}"))
            for t in traits
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    failures = runs.read_failures(store, "manual__1")
    assert sorted(failures) == traits and failures["t3_plus"]["reason"] == "bad t3_plus"
    runs.clear_failure(store, "manual__1", "t3_plus")
    assert "t3_plus" not in runs.read_failures(store, "manual__1")
    assert runs.read_failures(store, "other_run") == {}
