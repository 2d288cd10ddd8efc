"""A job Together ends in error / user_error / cancelled fails its trait only, with Together's own words."""

from __future__ import annotations

from tests.provider.helpers import DAG_ID, conf_for, read_json, suffix_part
from tests.support.airflow import run_dag, task_states

OUTCOMES = {
    "joy_minus": ("error", "Bad data at line 7"),
    "joy_plus": ("user_error", "Sequence length exceeds the model's context at example 12"),
    "wisdom_minus": ("cancelled", "Job cancelled by an administrator"),
}
GOOD = ["wisdom_plus"]


def test_failed_jobs_fail_only_their_trait_and_are_published_with_togethers_message(
    airflow_db, together_conn, tmp_path
):
    fake = together_conn
    traits = sorted([*OUTCOMES, *GOOD])
    conf = conf_for(tmp_path, traits)
    for trait, (status, message) in OUTCOMES.items():
        fake.set_outcome(suffix_part(trait), status, message)

    dr = run_dag(DAG_ID, conf)

    assert str(dr.state) == "failed"  # a user sees a red run...
    out = tmp_path / "out"
    mapping = read_json(out / "hypernetwork_data.json")
    assert sorted(mapping["traits"]) == GOOD  # ...but the good trait is published
    assert (out / mapping["traits"]["wisdom_plus"]["adapter_path"] / "adapter_model.safetensors").is_file()
    assert sorted(mapping["failed"]) == sorted(OUTCOMES)
    for trait, (status, message) in OUTCOMES.items():
        assert message in mapping["failed"][trait]
        assert status in mapping["failed"][trait]
        assert not (out / "lora_checkpoints" / trait).exists()

    summary = read_json(out / "run_summary.json")
    actions = {r["trait"]: r["action"] for r in summary["traits"]}
    assert actions == {**dict.fromkeys(OUTCOMES, "failed"), "wisdom_plus": "trained"}
    assert summary["counts"] == {"failed": 3, "trained": 1}
    for trait, (_, message) in OUTCOMES.items():
        assert message in summary["failed"][trait]

    # A failed job is final: no retry, no second job, and publish_mapping still ran.
    assert fake.creates == len(traits)
    states = task_states(dr)
    assert states[("publish_mapping", -1)] == "success"
    assert states[("check", -1)] == "failed"
    index = {t: i for i, t in enumerate(traits)}
    for trait in OUTCOMES:
        assert states[("trait.wait", index[trait])] == "failed"
        assert states[("trait.download", index[trait])] == "upstream_failed"
    # Together's own status is what the ledger remembers, so the next run retrains these traits.
    jobs = read_json(out / "lora_job_ids.json")
    assert {t: jobs[t]["status"] for t in OUTCOMES} == {t: s for t, (s, _) in OUTCOMES.items()}
