"""The cost gate: a launch over budget is refused before anything is paid for, with a reason a user reads."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from tests.provider.helpers import DAG_ID, conf_for, read_json
from tests.support.airflow import run_dag

TRAITS = ["joy_minus", "joy_plus", "wisdom_minus"]


def estimates(fake, conf) -> dict[str, float]:
    """The price the fake quotes per trait (its documented rule: ceil(bytes / 4) tokens per epoch)."""
    shards = Path(conf["shards_dir"])
    return {
        t: math.ceil((shards / f"{t}.jsonl").stat().st_size / 4) * fake.price_per_million_tokens / 1e6
        for t in TRAITS
    }


def test_per_job_budget_refuses_every_launch_before_any_create(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, TRAITS, max_job_price_usd=0.0001)
    assert min(estimates(fake, conf).values()) > 0.0001

    dr = run_dag(DAG_ID, conf)

    assert str(dr.state) == "failed"
    assert fake.creates == 0
    assert fake.count("POST", r"^/v1/fine-tunes$") == 0
    assert len(fake.estimates) == len(TRAITS)  # one estimate per trait, and no retry of a refusal
    mapping = read_json(tmp_path / "out" / "hypernetwork_data.json")
    assert mapping["traits"] == {}
    assert sorted(mapping["failed"]) == TRAITS
    for reason in mapping["failed"].values():
        assert "above the per-job budget" in reason
        assert "no job was created" in reason
        assert "max_job_price_usd" in reason


def test_per_run_budget_admits_only_what_fits(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, TRAITS)
    prices = estimates(fake, conf)
    # A budget that fits any two traits but never three, whatever order the launches run in.
    budget = round(
        (max(a + b for a, b in itertools.combinations(prices.values(), 2)) + sum(prices.values())) / 2, 6
    )
    assert max(a + b for a, b in itertools.combinations(prices.values(), 2)) < budget < sum(prices.values())

    dr = run_dag(DAG_ID, {**conf, "max_run_price_usd": budget})

    assert str(dr.state) == "failed"
    assert fake.creates == 2
    mapping = read_json(tmp_path / "out" / "hypernetwork_data.json")
    assert len(mapping["traits"]) == 2
    assert len(mapping["failed"]) == 1
    ((refused, reason),) = mapping["failed"].items()
    assert refused not in mapping["traits"]
    assert "per-run budget" in reason and "no job was created" in reason
    created_suffixes = {job["suffix"] for job in fake.jobs.values()}
    assert not any(s.startswith(refused.replace("_", "-")) for s in created_suffixes)
