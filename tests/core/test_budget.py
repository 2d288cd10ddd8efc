import multiprocessing as mp

import pytest

from trait_lora.core.jobs.budget import BudgetError, release, reserve
from trait_lora.core.storage.layout import run_dir


def test_per_job_budget_refuses_before_reserving(tmp_path):
    with pytest.raises(
        BudgetError, match=r"joy_plus: Together estimates \$5.00, above the per-job budget \$4.00"
    ):
        reserve(tmp_path, "manual__1", "joy_plus", 5.0, job_budget=4.0)
    assert not (run_dir(tmp_path, "manual__1") / "budget.json").exists()


def test_run_budget_counts_other_traits_but_not_a_retry_of_the_same(tmp_path):
    reserve(tmp_path, "r1", "joy_plus", 3.0, run_budget=5.0)
    assert reserve(tmp_path, "r1", "joy_plus", 3.0, run_budget=5.0).run_total == 3.0  # retry
    with pytest.raises(BudgetError, match=r"\$3.00 already reserved by this run"):
        reserve(tmp_path, "r1", "joy_minus", 2.5, run_budget=5.0)
    release(tmp_path, "r1", "joy_plus")
    assert reserve(tmp_path, "r1", "joy_minus", 2.5, run_budget=5.0).run_total == 2.5
    # Another run has its own budget.
    assert reserve(tmp_path, "r2", "joy_plus", 4.0, run_budget=5.0).run_total == 4.0


def _try(args):
    out, trait = args
    try:
        reserve(out, "scheduled__2026-11-25T00:00:00+00:00", trait, 1.0, run_budget=3.0)
        return True
    except BudgetError:
        return False


def test_concurrent_reservations_never_pass_the_run_budget(tmp_path):
    traits = [f"t{i}_plus" for i in range(10)]
    with mp.get_context("spawn").Pool(5) as pool:
        granted = pool.map(_try, [(str(tmp_path), t) for t in traits])
    assert sum(granted) == 3


def test_the_per_run_budget_holds_on_object_storage_too(s3_server, s3_bucket):
    """Two workers on S3, no shared disk: the reservations are swaps of one record."""
    from trait_lora.core.storage.objects import S3Store

    store = S3Store(s3_server.client(), s3_bucket, "out")
    reserve(store, "r1", "joy_plus", 3.0, run_budget=5.0)
    with pytest.raises(BudgetError, match=r"\$3.00 already reserved by this run"):
        reserve(store, "r1", "joy_minus", 2.5, run_budget=5.0)
    release(store, "r1", "joy_plus")
    assert reserve(store, "r1", "joy_minus", 2.5, run_budget=5.0).run_total == 2.5
    assert store.list("runs/") == ["runs/r1/budget.json"]
