"""Whole-DAG runs (``dag.test()``, real SDK over HTTP to the fake): one paid job per trait, never two.

The hazard: ``POST /v1/fine-tunes`` carries no idempotency key, so a retried POST, a lost answer or a
worker killed after the POST can each start a second paid job. Every test counts the jobs the fake
actually created.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from tests.provider.helpers import DAG_ID, conf_for, plans_for, read_json
from tests.support.airflow import run_dag, task_states
from trait_lora.core.jobs.keys import job_tag
from trait_lora.core.jobs.ledger import Ledger

TRAITS = ["joy_minus", "joy_plus"]


def mapping(conf: dict[str, Any]) -> dict[str, Any]:
    return read_json(f"{conf['output_dir']}/hypernetwork_data.json")


def summary_actions(conf: dict[str, Any]) -> dict[str, str]:
    return {r["trait"]: r["action"] for r in read_json(f"{conf['output_dir']}/run_summary.json")["traits"]}


def jobs_per_tag(fake: Any, tag: str) -> int:
    return sum(1 for job in fake.jobs.values() if (job.get("suffix") or "").endswith(tag))


def whole_reads(calls: Iterable[tuple[str, str]], ids: Iterable[str]) -> Counter[str]:
    """How often each of ``ids`` was read whole (``GET /v1/fine-tunes/{id}``) in ``calls``."""
    wanted = set(ids)
    reads = (re.fullmatch(r"/v1/fine-tunes/([^/]+)", p) for m, p in calls if m == "GET")
    return Counter(r.group(1) for r in reads if r and r.group(1) in wanted)


def after_create(fake: Any, action: Callable[[], None]) -> None:
    """Run ``action`` inside the fake right after each job it creates (before the answer goes out).

    The fake has no hook for "after the create"; its route table is wrapped instead (test double only,
    the SDK is untouched).
    """
    for i, (method, pattern, handler) in enumerate(fake._routes):
        if method == "POST" and pattern.pattern == r"/v1/fine-tunes":

            def wrapped(req: Any, _handler: Callable[..., Any] = handler) -> Any:
                reply = _handler(req)
                action()
                return reply

            fake._routes[i] = (method, pattern, wrapped)
            return
    raise AssertionError("the fake has no POST /v1/fine-tunes route")


def test_rerun_is_free_and_force_retrain_buys_exactly_one_job_per_trait(airflow_db, together_conn, tmp_path):
    fake = together_conn
    # An account with a history, listed with the least the spec promises of an entry (no suffix, no
    # output name): the guard must tell those jobs apart without reading each one at every launch.
    fake.list_shows_names = False
    past = fake.add_past_jobs(200)
    conf = conf_for(tmp_path, TRAITS)
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert (fake.uploads, fake.creates) == (2, 2)
    first = {t: e["job_id"] for t, e in mapping(conf)["traits"].items()}
    assert fake.count("GET", r"^/v1/fine-tunes$") == len(TRAITS)  # one list per launch
    assert whole_reads(fake.calls, past) == Counter(past)  # the first launch read each once; the next none
    first_run_calls = len(fake.calls)

    # Nothing changed: no upload, no create, no API call at all.
    calls = len(fake.calls)
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert (fake.uploads, fake.creates, len(fake.calls)) == (2, 2, calls)
    assert summary_actions(conf) == {t: "skipped" for t in TRAITS}

    # Forced: exactly one new job per trait, the shard bytes reused (no re-upload). The first try of each
    # launch "dies" right after its create: the answer is lost and the reconciling list fails too, so
    # the task fails and Airflow retries it. The retry must adopt the job, not buy another.
    fake.drop_create_response(times=len(TRAITS))
    after_create(fake, lambda: fake.fail_next("GET", r"^/v1/fine-tunes$", 503, times=9, retry_after=0.01))
    file_posts = fake.count("POST", r"^/v1/files$")
    forced = run_dag(DAG_ID, {**conf, "force_retrain": True})
    assert str(forced.state) == "success"
    assert (fake.uploads, fake.creates) == (2, 4)
    # Reused from the ledger, not even offered again: Together's 409 for known bytes would hide a
    # re-upload from the byte count above, so count the upload requests themselves.
    assert fake.count("POST", r"^/v1/files$") == file_posts
    assert len(fake.jobs) == len(past) + 4
    # The second run's launches (retries and reconciling lists included) read no past job whole again,
    # nor the first run's jobs (remembered when they were created).
    assert not whole_reads(fake.calls[first_run_calls:], [*past, *first.values()])
    second = {t: e["job_id"] for t, e in mapping(conf)["traits"].items()}
    assert set(second) == set(TRAITS)
    for trait in TRAITS:
        assert second[trait] != first[trait]
        tag = fake.jobs[second[trait]]["suffix"].rsplit("-", 1)[1]
        assert jobs_per_tag(fake, tag) == 1
    states = task_states(forced)
    assert all(states[("trait.launch", i)] == "success" for i in range(len(TRAITS)))
    # The retries really happened: each launch's first try failed on the lost answer.
    assert fake.count("GET", r"^/v1/fine-tunes$") >= 2 * 9
    # The jobs the retries found are the ones this run created: trained, not resumed.
    assert summary_actions(conf) == {t: "trained" for t in TRAITS}


def test_random_api_failures_still_give_exactly_one_job_per_trait(airflow_db, together_conn, tmp_path):
    fake = together_conn
    traits = ["joy_minus", "joy_plus", "wisdom_plus"]
    conf = conf_for(tmp_path, traits)
    fake.fail_randomly(0.3, seed=7)
    fake.fail_next("POST", r"^/v1/fine-tunes$", 503)  # and the create itself, whatever the seed hits
    dr = run_dag(DAG_ID, conf)
    fake.fail_randomly(0)
    assert str(dr.state) == "success"
    injected = [e for e in fake.errors if e[3].startswith("injected fault")]
    assert any(m == "GET" and "/v1/files/" in p for m, p, _, _ in injected)  # the file wait too
    assert len(injected) >= 10  # the faults really hit the run
    assert any(m == "POST" and p == "/v1/fine-tunes" for m, p, _, _ in injected)
    assert fake.creates == len(traits)
    assert len(fake.jobs) == len(traits)
    assert sorted(mapping(conf)["traits"]) == traits


def test_a_lost_create_answer_is_reconciled_not_reposted(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, TRAITS)
    fake.drop_create_response(times=len(TRAITS))
    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "success"
    assert fake.creates == len(TRAITS)
    assert len(fake.jobs) == len(TRAITS)
    assert fake.count("POST", r"^/v1/fine-tunes$") == len(TRAITS)
    assert {e["job_id"] for e in mapping(conf)["traits"].values()} == set(fake.jobs)


def test_a_job_created_by_a_killed_worker_is_adopted(airflow_db, together_conn, tmp_path):
    """What a run finds after workers died around the create, or records went stale.

    joy_minus: our records are gone, but Together has the job (its suffix carries the key's tag).
    joy_plus: the ledger says "creating" with no job id, and Together has the job.
    wisdom_plus: the ledger says "creating", but the POST never reached Together: create it, once.
    wisdom_minus: the ledger names a job Together no longer has (deleted): create a new one, once.
    """
    fake = together_conn
    traits = ["joy_minus", "joy_plus", "wisdom_minus", "wisdom_plus"]
    conf = conf_for(tmp_path, traits)
    plans = plans_for(conf)
    seeded = {t: fake.add_job(suffix=plans[t].suffix, status="running") for t in ("joy_minus", "joy_plus")}
    ledger = Ledger(conf["output_dir"])
    for trait in ("joy_plus", "wisdom_plus"):
        ledger.update_job(trait, job_key=plans[trait].job_key, status="creating")
    ledger.update_job(
        "wisdom_minus", job_key=plans["wisdom_minus"].job_key, job_id="ft-deleted", status="running"
    )

    dr = run_dag(DAG_ID, conf)
    assert str(dr.state) == "success"
    assert fake.creates == 2  # wisdom_plus and wisdom_minus only
    published = mapping(conf)["traits"]
    assert {t: published[t]["job_id"] for t in seeded} == seeded
    for trait in ("wisdom_minus", "wisdom_plus"):
        assert jobs_per_tag(fake, job_tag(plans[trait].job_key)) == 1
        assert published[trait]["job_id"] in fake.jobs
    assert summary_actions(conf) == {
        "joy_minus": "resumed",
        "joy_plus": "resumed",
        "wisdom_minus": "trained",
        "wisdom_plus": "trained",
    }
    assert ledger.job("joy_plus")["job_id"] == seeded["joy_plus"]
