"""Job statuses as an open set, the model's limits, the cost-gate verdict, and the cap on jobs in flight."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import ConfigError
from trait_lora.core.jobs.budget import decide_cost, estimated_price
from trait_lora.core.jobs.job_status import JobStatus
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.limits import limit_problems, require_within_limits

LIMITS = {
    "model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
    "lora_training": {
        "max_rank": 64,
        "min_batch_size": 8,
        "max_batch_size": 128,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    "max_num_epochs": 20,
    "max_num_evals": 100,
    "min_learning_rate": 1e-8,
    "max_learning_rate": 1.0,
    "min_max_seq_length": 512,
    "max_seq_length_sft": 8192,
}


@pytest.mark.parametrize(
    ("raw", "terminal", "failed", "ending", "adoptable", "known"),
    [
        ("running", False, False, False, True, True),
        ("COMPLETED", True, False, False, True, True),
        ("user_error", True, True, True, False, True),
        ("cancel_requested", False, False, True, False, True),
        ("evaluating", False, False, False, True, False),  # nobody listed it: adopt and poll
        ("creating", False, False, False, False, True),  # ours: a create whose answer is unknown
        ("", False, False, False, False, False),
    ],
)
def test_job_status_is_an_open_set(raw, terminal, failed, ending, adoptable, known):
    status = JobStatus.of(raw)
    assert (status.is_terminal, status.is_failed, status.is_ending) == (terminal, failed, ending)
    assert (status.is_adoptable, status.is_known) == (adoptable, known)


def test_limits_name_every_field_and_its_range():
    cfg = TrainingConfig(
        batch_size=256, lora_r=128, n_epochs=30, learning_rate=0.5, target_modules=("gate_proj",)
    )
    problems = "\n".join(limit_problems(cfg, {**LIMITS, "max_learning_rate": 0.1}, n_evals=200)[0])
    for expected in (
        "batch_size=256 is outside [8, 128]",
        "lora_r=128 is outside [1, 64]",
        "n_epochs=30 is outside [1, 20]",
        "learning_rate=0.5 is outside [1e-08, 0.1]",
        "target_modules ['gate_proj']",
        "n_evals=200 is outside [0, 100]",
    ):
        assert expected in problems
    assert limit_problems(TrainingConfig(), LIMITS) == ([], [])
    long = TrainingConfig(max_seq_length=16384)
    assert "max_seq_length=16384 is outside [512, 8192]" in limit_problems(long, LIMITS)[0][0]
    refused = r"joy_plus: .*no job was created: batch_size=256 is outside \[8, 128\]"
    with pytest.raises(ConfigError, match=refused):
        require_within_limits(TrainingConfig(batch_size=256), LIMITS, trait="joy_plus")


SPEC_REQUIRED_LIMITS = {  # all Together's OpenAPI spec promises in a model limits answer
    "model_name": LIMITS["model_name"],
    "max_num_epochs": 20,
    "max_num_evals": 100,
    "max_learning_rate": 1.0,
    "min_learning_rate": 1e-8,
    "supports_vision": False,
    "supports_tools": True,
    "supports_reasoning": False,
    "merge_output_lora": True,
}


def test_limits_the_answer_leaves_out_are_not_checked_and_said():
    problems, unchecked = limit_problems(TrainingConfig(batch_size=4096, lora_r=1024), SPEC_REQUIRED_LIMITS)
    assert problems == []  # not guessed: Together's server decides what it did not tell us
    assert unchecked == ["lora_training", "min_max_seq_length", "max_seq_length_sft"]
    with pytest.raises(ConfigError, match="n_epochs=30"):  # what is present is still checked
        require_within_limits(TrainingConfig(n_epochs=30), SPEC_REQUIRED_LIMITS, trait="t")


def test_an_estimate_without_estimation_available_is_a_price():
    assert estimated_price({"estimated_total_price": 0.42, "allowed_to_proceed": True}) == 0.42
    assert estimated_price({"estimation_available": False, "estimated_total_price": 0.42}) is None
    decision = decide_cost("joy_plus", {"estimated_total_price": 0.42}, job_budget=1.0, run_budget=None)
    assert (decision.price, decision.refusal, decision.retry_reason) == (0.42, None, None)


def test_cost_gate_verdicts():
    over = decide_cost("joy_plus", {"estimated_total_price": 2.0}, job_budget=1.0, run_budget=None)
    assert over.refusal and "above the per-job budget $1.00" in over.refusal
    unknown = decide_cost("joy_plus", {"estimation_available": False}, job_budget=1.0, run_budget=None)
    assert unknown.retry_reason and "no price estimate" in unknown.retry_reason
    free = decide_cost("joy_plus", {"estimation_available": False}, job_budget=None, run_budget=None)
    assert (free.price, free.refusal, free.retry_reason) == (None, None, None)
    broke = decide_cost(
        "joy_plus",
        {"estimated_total_price": 2.0, "allowed_to_proceed": False},
        job_budget=None,
        run_budget=None,
    )
    assert broke.refusal and "may not proceed" in broke.refusal


KEY = "ab" * 32


def test_the_cap_counts_jobs_in_flight_and_frees_ended_ones(tmp_path: Path):
    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_key=KEY, job_id="ft-1", status="running")
    ledger.update_job("joy_minus", job_key=KEY, job_id="ft-2", status="evaluating")  # unknown: in flight
    ledger.update_job("wisdom_plus", job_key=KEY, job_id="ft-3", status="completed")
    assert sorted(ledger.claim_job_slot("wisdom_minus", job_key=KEY, cap=2)) == ["joy_minus", "joy_plus"]
    assert ledger.job("wisdom_minus") is None  # nothing claimed at the cap
    ledger.update_job("joy_plus", status="cancelled")
    assert ledger.claim_job_slot("wisdom_minus", job_key=KEY, cap=2) == {}
    assert ledger.job("wisdom_minus")["status"] == "creating"
    # A retry of the same trait holds its own slot, it does not count against itself.
    assert ledger.claim_job_slot("wisdom_minus", job_key=KEY, cap=2) == {}


def test_a_stale_creating_record_holds_no_slot(tmp_path: Path):
    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_key=KEY, status="creating")
    assert list(ledger.claim_job_slot("joy_minus", job_key=KEY, cap=1)) == ["joy_plus"]
    assert ledger.claim_job_slot("joy_minus", job_key=KEY, cap=1, stale_after_s=-1) == {}


def _claim(args: tuple[str, str, int]) -> bool:
    out, trait, cap = args
    return not Ledger(out).claim_job_slot(trait, job_key=KEY, cap=cap)


def test_concurrent_claims_never_pass_the_cap(tmp_path: Path):
    traits = [f"t{i}_plus" for i in range(12)]
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        granted = pool.map(_claim, [(str(tmp_path), t, 3) for t in traits])
    assert sum(granted) == 3
    creating = [t for t, r in Ledger(tmp_path).jobs().items() if r["status"] == "creating"]
    assert len(creating) == 3


def test_a_refused_create_and_a_stale_refresh_free_or_keep_slots_correctly(tmp_path: Path):
    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_key=KEY, status="not_created")  # Together refused the create
    assert ledger.claim_job_slot("joy_minus", job_key=KEY, cap=1) == {}
    ledger.update_job("joy_plus", job_key=KEY, job_id="ft-new", status="running")
    # A refresh that read the trait's previous job must not mark the new one ended.
    assert ledger.record_job_end("joy_plus", job_id="ft-old", status="completed") is False
    assert ledger.job("joy_plus")["status"] == "running"
    assert ledger.record_job_end("joy_plus", job_id="ft-new", status="completed") is True
    assert ledger.job("joy_plus")["status"] == "completed"
