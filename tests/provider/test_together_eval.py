"""Held-out evaluation on Together, through the real SDK against the fake: the split is uploaded as
``training_file`` + ``validation_file``, the job evaluates it ``n_evals`` times, and the adapter's last
held-out loss lands in metrics, the summary and the mapping."""

from __future__ import annotations

import json

from tests.provider.helpers import DAG_ID, conf_for, read_json
from tests.support.airflow import run_dag
from trait_lora.core.shards.split import split_examples
from trait_lora.core.shards.validation import iter_examples
from trait_lora.provider.operators.launch import N_EVALS

TRAITS = ["joy_minus", "joy_plus"]


def _lines(content: bytes) -> set[str]:
    return {json.dumps(json.loads(line), sort_keys=True) for line in content.splitlines() if line.strip()}


def test_the_held_out_split_goes_to_together_as_its_validation_file(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, TRAITS, eval_fraction=0.2)
    assert str(run_dag(DAG_ID, conf).state) == "success"
    out = tmp_path / "out"
    mapping = read_json(out / "hypernetwork_data.json")
    summary = {r["trait"]: r for r in read_json(out / "run_summary.json")["traits"]}
    for trait in TRAITS:
        records = list(iter_examples(tmp_path / "shards" / f"{trait}.jsonl"))
        split = split_examples(records, 0.2)
        held = {json.dumps(records[i], sort_keys=True) for i in split.held_out}
        job = fake.jobs[mapping["traits"][trait]["job_id"]]
        assert job["n_evals"] == N_EVALS
        train_file, val_file = fake.files[job["training_file"]], fake.files[job["validation_file"]]
        # Exactly the held-out examples are in the validation file, and none of them is trained on.
        assert _lines(val_file["content"]) == held
        assert _lines(train_file["content"]).isdisjoint(held)
        assert len(_lines(train_file["content"])) == len(split.train)
        metrics = read_json(out / "metrics" / f"{trait}.json")
        figures = metrics["eval"]
        assert figures["n_held_out"] == len(split.held_out)
        assert figures["base_loss"] is None  # Together evaluates the adapter only
        # Up to n_evals evaluations (fewer when the job has fewer steps), the last at the final step.
        assert 1 <= len(figures["eval_steps"]) <= N_EVALS
        assert figures["eval_steps"][-1]["step"] == metrics["steps"][-1]["step"]
        assert figures["adapter_loss"] == figures["eval_steps"][-1]["eval_loss"]
        assert mapping["traits"][trait]["eval"] == figures == summary[trait]["eval"]
        # The loss curve and the held-out figures come from one metrics request per job.
        assert fake.count("GET", rf"^/v1/fine-tunes/{job['id']}/metrics$") == 1

    # Nothing changed: the split files are recognised in the ledger, nothing is uploaded or offered.
    posts = fake.count("POST", r"^/v1/files$")
    creates = fake.creates
    assert str(run_dag(DAG_ID, conf).state) == "success"
    assert (fake.count("POST", r"^/v1/files$"), fake.creates) == (posts, creates)
    # A forced retrain reuses both uploaded files (the same bytes), creating one job per trait.
    assert str(run_dag(DAG_ID, {**conf, "force_retrain": True}).state) == "success"
    assert fake.count("POST", r"^/v1/files$") == posts and fake.creates == creates + len(TRAITS)
    assert not list((out / ".uploads").glob("*.jsonl"))  # the split files do not linger


def test_without_a_split_nothing_changes(airflow_db, together_conn, tmp_path):
    fake = together_conn
    conf = conf_for(tmp_path, ["joy_plus"])  # Together's default eval_fraction is 0
    assert str(run_dag(DAG_ID, conf).state) == "success"
    (job,) = fake.jobs.values()
    assert not job["validation_file"] and not job["n_evals"]
    assert fake.count("POST", r"^/v1/files$") == 1
    assert read_json(tmp_path / "out" / "metrics" / "joy_plus.json")["eval"] is None


def test_held_out_loss_under_another_known_name_and_a_named_gap_for_an_unknown_one(
    airflow_db, together_conn, tmp_path
):
    """The spec does not name the held-out metric: other known spellings are read; an unknown one is
    reported with the keys Together sent (a silent null would read as "no evaluation asked for")."""
    from trait_lora.core.handoff.summary import eval_cell

    fake = together_conn
    fake.eval_metric_key = "validation/loss"
    conf = conf_for(tmp_path, ["joy_plus"], eval_fraction=0.2)
    assert str(run_dag(DAG_ID, conf).state) == "success"
    figures = read_json(tmp_path / "out" / "metrics" / "joy_plus.json")["eval"]
    assert isinstance(figures["adapter_loss"], float) and figures["eval_steps"]
    assert eval_cell(figures) == f"held-out {figures['adapter_loss']:.3f}"

    fake.eval_metric_key = "eval/perplexity_of_holdout"
    assert str(run_dag(DAG_ID, {**conf, "force_retrain": True}).state) == "success"
    summary = {r["trait"]: r for r in read_json(tmp_path / "out" / "run_summary.json")["traits"]}
    figures = summary["joy_plus"]["eval"]
    assert figures["adapter_loss"] is None
    assert "eval/perplexity_of_holdout" in figures["metric_keys"] and "train/loss" in figures["metric_keys"]
    assert "none with a held-out loss this version knows" in figures["missing"]
    assert eval_cell(figures).startswith("no held-out loss in Together's metrics")
