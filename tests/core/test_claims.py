"""Job claims on both stores: two launches of one key create one job, whatever the interleaving.

The three gaps the ledger's cap used to have: (1) two launches of the same key at once (a zombie
beside its own retry, or the CLI beside the DAG) could both create; (2) a changed key forgot a job
still running; (3) a create that may have been posted stopped counting after 30 minutes. Each is shown
closed here, on a local folder and on S3 over HTTP. Interleavings are forced, not left to timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from trait_lora.core.jobs.claims import ClaimHeld, ClaimLost, Holder
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.storage.local import LocalStore
from trait_lora.core.storage.objects import S3Store
from trait_lora.core.storage.store import Store

KEY = "k" * 64
DAG_TRY1 = Holder("trait_lora_together/run_1/launch/0", 1)
DAG_TRY2 = Holder("trait_lora_together/run_1/launch/0", 2)
CLI = Holder("trait_lora_together/manual_cli/launch/0", 1)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    return S3Store(request.getfixturevalue("s3_server").client(), request.getfixturevalue("s3_bucket"), "out")


class Together:
    """What the launch protocol needs of Together: a list searchable by suffix, and the POST."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def find(self, key: str) -> dict[str, Any] | None:
        return next((j for j in self.jobs if j["key"] == key), None)

    def post(self, key: str) -> dict[str, Any]:
        job = {"id": f"ft-{len(self.jobs) + 1}", "key": key}
        self.jobs.append(job)
        return job


def launch(ledger: Ledger, together: Together, holder: Holder, *, before_post=None) -> str:
    """The launch operator's protocol (provider/operators/launch.py), step by step."""
    found = together.find(KEY)
    if found is None:
        claim = ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=holder).claim
        assert claim is not None
        if claim.took_over:
            found = together.find(KEY)
        if found is None:
            if before_post:
                before_post()
            ledger.mark_posted("joy_plus", claim)
            found = together.post(KEY)
        ledger.update_job("joy_plus", claim=claim, job_key=KEY, job_id=found["id"], status="pending")
    return found["id"]


def test_the_cli_beside_the_dag_makes_one_job(store):
    """Both searched Together and found nothing; the DAG claims first; the CLI is told to wait, and
    once the DAG's job exists, the CLI adopts it."""
    ledger, together = Ledger(store), Together()
    assert together.find(KEY) is None  # both searched before either claimed
    claim = ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY1).claim
    with pytest.raises(ClaimHeld, match=r"another task .*run_1/launch/0.* is creating this job"):
        ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=CLI)
    ledger.mark_posted("joy_plus", claim)
    job = together.post(KEY)
    ledger.update_job("joy_plus", claim=claim, job_key=KEY, job_id=job["id"], status="pending")
    assert launch(ledger, together, CLI) == job["id"]  # the CLI's retry adopts
    assert len(together.jobs) == 1


def test_a_zombie_beside_its_own_retry_makes_one_job_either_way(store):
    ledger, together = Ledger(store), Together()
    zombie = ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY1).claim
    # the retry takes its own task instance's claim over at once, with a higher epoch
    retry_id = launch(ledger, together, DAG_TRY2)
    assert ledger.job("joy_plus")["claim"]["epoch"] == zombie.epoch + 1
    # the zombie wakes up: its claim is gone, it posts nothing and writes nothing
    with pytest.raises(ClaimLost, match="taken over"):
        ledger.mark_posted("joy_plus", zombie)
    with pytest.raises(ClaimLost):
        ledger.update_job("joy_plus", claim=zombie, job_id="ft-zombie", status="pending")
    assert [j["id"] for j in together.jobs] == [retry_id]
    assert ledger.job("joy_plus")["job_id"] == retry_id


def test_a_zombie_that_posted_before_the_takeover_is_found_not_posted_again(store):
    ledger, together = Ledger(store), Together()
    zombie = ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY1).claim
    ledger.mark_posted("joy_plus", zombie)
    posted = together.post(KEY)  # ...and the worker died before it could record the id
    # the retry searched before the zombie posted (nothing), then took over: it must search again
    claim = ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY2).claim
    assert claim.took_over
    assert together.find(KEY) == posted
    assert len(together.jobs) == 1


def test_another_holders_stale_claim_is_taken_over_and_searched_first(store):
    ledger = Ledger(store)
    ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=CLI)
    with pytest.raises(ClaimHeld):
        ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY1)
    taken = ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY1, stale_after_s=-1).claim
    assert taken is not None and taken.took_over and taken.epoch == 2


def test_the_losing_writer_of_a_forced_interleaving_re_reads_and_is_told_to_wait(store):
    """Both launches read the record as absent; the DAG's claim lands between the CLI's read and its
    write: the CLI's create-if-absent fails, it reads again, and sees the DAG's fresh claim."""
    ledger = Ledger(store)
    real_create = store.create
    fired = []

    def create_after_the_dag(key: str, data: bytes) -> str:
        if key.endswith("jobs/joy_plus.json") and not fired:
            fired.append(key)
            ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=DAG_TRY1)
        return real_create(key, data)

    store.create = create_after_the_dag  # type: ignore[method-assign]
    with pytest.raises(ClaimHeld):
        ledger.claim_create("joy_plus", job_key=KEY, cap=4, holder=CLI)
    assert fired and ledger.job("joy_plus")["claim"]["holder"] == DAG_TRY1.id


def test_a_job_whose_key_changed_while_it_ran_keeps_its_slot_until_it_ends(store):
    ledger = Ledger(store)
    ledger.update_job("joy_plus", job_key="old" * 21 + "x", job_id="ft-old", status="running")
    ledger.update_job("joy_plus", job_key=KEY, status="not_created")  # a forced retrain: a new key
    assert "job_id" not in ledger.job("joy_plus")
    assert set(ledger.claim_job_slot("calm_minus", job_key=KEY, cap=1)) == {"joy_plus@ft-old"}
    ledger.record_job_end("joy_plus", job_id="ft-old", status="completed")
    assert ledger.claim_job_slot("calm_minus", job_key=KEY, cap=1) == {}


def test_a_create_that_may_have_been_posted_never_goes_stale_by_age(store):
    ledger = Ledger(store)
    claim = ledger.claim_create("joy_plus", job_key=KEY, cap=1, holder=DAG_TRY1).claim
    ledger.mark_posted("joy_plus", claim)  # the answer was lost: a job may exist
    held = ledger.claim_job_slot("calm_minus", job_key=KEY, cap=1, stale_after_s=-1)
    assert set(held) == {"joy_plus"} and held["joy_plus"]["posted"] is True
    # an unposted create of a dead worker does go stale
    ledger.update_job("joy_plus", claim=claim, posted=False)
    assert ledger.claim_job_slot("calm_minus", job_key=KEY, cap=1, stale_after_s=-1) == {}


def test_the_cap_counts_claims_made_on_the_other_store_client_too(store):
    """Two ledgers on one location (two workers): the cap holds across them."""
    first, second = Ledger(store), Ledger(store)
    assert first.claim_job_slot("joy_plus", job_key=KEY, cap=1, holder=DAG_TRY1) == {}
    assert set(second.claim_job_slot("calm_minus", job_key=KEY, cap=1, holder=CLI)) == {"joy_plus"}
