"""trait_lora_together with its shards and outputs in a bucket and no shared folder, through the CLI a
user runs: `trait-lora train --backend together --shards-dir s3://... --output-dir s3://...`.

The S3 API is moto in server mode on loopback, Together is the fake server, both spoken to over HTTP
by the real clients (boto3 through the Amazon provider's hook, the together SDK). What is checked is
what a user and stage 3 see: an adapter per trait at a content-addressed key that verifies, the mapping
in the bucket naming each by URL, one job per trait, and a rerun that pays for nothing. Four traits (both
poles of two axes) show all of it; all eight sample shards cost twice the time and showed nothing more.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import tracking
from tests.support.airflow import SAMPLE_SHARDS, train_together_argv
from trait_lora.core.adapter import AdapterSpec
from trait_lora.core.adapter.verify import verify_adapter_dir
from trait_lora.core.config import TrainingConfig

TRAITS = ["intellect_minus", "intellect_plus", "joy_minus", "joy_plus"]


def train(tmp_path: Path, shards: str, out: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    keep = ("AIRFLOW__TRAIT_LORA__",)  # the suite's fast poll settings; nothing of its Airflow home
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") or k.startswith(keep)}
    env.pop("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", None)  # the CLI's own locations are its roots
    env.update(extra_env)
    env["TMPDIR"] = str(tmp_path / "worker-tmp")  # this "worker's" scratch: nothing shared with the test
    (tmp_path / "worker-tmp").mkdir(exist_ok=True)
    return subprocess.run(
        train_together_argv(tmp_path, shards, out),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )


def test_traits_train_from_and_to_a_bucket_then_rerun_for_free(fake_together, s3_server, s3_bucket, tmp_path):
    client = s3_server.client()
    for path in (SAMPLE_SHARDS / f"{trait}.jsonl" for trait in TRAITS):
        client.put_object(Bucket=s3_bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    env = {
        "AIRFLOW_CONN_TEAM_S3": s3_server.connection_json(),
        "AIRFLOW_CONN_TOGETHER_DEFAULT": json.dumps(
            {"conn_type": "together", "host": fake_together.base_url, "password": fake_together.api_key}
        ),
        "AIRFLOW__TRAIT_LORA__STORAGE_CONN_ID": "team_s3",
    }
    # the connection named in one URL, taken from the setting in the other
    shards, out = f"s3://team_s3@{s3_bucket}/shards", f"s3://{s3_bucket}/stage2"

    # with OpenLineage (file transport) and MLflow (sqlite) on, as a deployment turns them on
    first = train(tmp_path, shards, out, {**env, **tracking.tracking_env(tmp_path)})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (fake_together.creates, fake_together.uploads) == (len(TRAITS), len(TRAITS))

    def read(key: str) -> bytes:
        return client.get_object(Bucket=s3_bucket, Key=f"stage2/{key}")["Body"].read()

    mapping = json.loads(read("hypernetwork_data.json"))
    assert sorted(mapping["traits"]) == TRAITS and mapping["failed"] == {}
    spec = AdapterSpec.from_config(TrainingConfig())
    for trait, entry in mapping["traits"].items():
        folder = entry["adapter_path"]
        assert folder == f"lora_checkpoints/{trait}/{entry['adapter_sha256']}"
        assert entry["adapter_url"] == f"s3://{s3_bucket}/stage2/{folder}"
        assert entry["job_id"] in fake_together.jobs
        local = tmp_path / "check" / trait
        local.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (local / name).write_bytes(read(f"{folder}/{name}"))
        assert verify_adapter_dir(local, spec).sha256 == entry["adapter_sha256"]
        assert f"adapter:  {entry['adapter_url']}" in first.stdout
    summary = json.loads(read("run_summary.json"))
    assert {r["action"] for r in summary["traits"]} == {"trained"}
    # nothing of the outputs landed on this machine's disk: only the bucket has them
    assert not (tmp_path / "stage2").exists() and not list(tmp_path.glob("**/hypernetwork_data.json"))

    check_lineage_and_runs(tmp_path, s3_bucket, mapping, fake_together)

    calls = len(fake_together.calls)
    second = train(tmp_path, shards, out, {**env, **tracking.tracking_env(tmp_path)})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(fake_together.calls) == calls  # nothing asked of Together, nothing paid for
    assert second.stdout.rstrip().endswith(f"({len(TRAITS)} skipped, mapping unchanged)"), second.stdout
    assert "No tasks to run" not in second.stdout + second.stderr  # dag.test()'s warning: not a failure
    rows = json.loads(read("run_summary.json"))["traits"]
    assert {r["action"] for r in rows} == {"skipped"} and len(rows) == len(TRAITS)
    assert sorted(json.loads(read("hypernetwork_data.json"))["traits"]) == TRAITS
    # skipped traits log nothing: no new MLflow run, parent or child
    runs = tracking.mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "trait_lora_together")
    assert len(runs) == 1 + len(TRAITS)


def check_lineage_and_runs(work: Path, bucket: str, mapping: dict, fake_together) -> None:
    """A lineage reader joins each shard in the bucket, through Together's file and job, to its adapter
    and the adapters to the mapping; the download's facet carries the job, its price and the sha256.
    MLflow has one parent run and one child per trait with the job id and the loss curve."""
    events = tracking.lineage_events(work / "lineage.jsonl")
    graph = tracking.edges(events)
    mapping_id = (f"s3://{bucket}", "stage2/hypernetwork_data.json")
    downloads = {tracking.facet(e).get("trait"): e for e in tracking.completed(events, "download")}
    for trait, entry in mapping["traits"].items():
        shard = (f"s3://{bucket}", f"shards/{trait}.jsonl")
        adapter = (f"s3://{bucket}", f"stage2/{entry['adapter_path']}")
        assert tracking.reaches(graph, shard, adapter), f"{trait}: no lineage from {shard} to {adapter}"
        assert mapping_id in graph[adapter], f"{trait}: the adapter does not feed the mapping"
        fields = tracking.facet(downloads[trait])
        assert fields["job_id"] == entry["job_id"] and fields["adapter_sha256"] == entry["adapter_sha256"]
        price = fake_together.jobs[entry["job_id"]]["total_price"] / 1e9
        assert price > 0 and fields["total_price_usd"] == pytest.approx(price, abs=1e-6)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    runs = tracking.mlflow_runs(uri, "trait_lora_together")
    parents = [r for r in runs if r.data.tags.get("trait_lora.role") == "dag_run"]
    children = {r.data.tags["trait"]: r for r in runs if r.data.tags.get("trait")}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["traits_trained"] == len(mapping["traits"])
    assert sorted(children) == sorted(mapping["traits"])
    for trait, run in children.items():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert (tags["backend"], tags["job_id"]) == ("together", mapping["traits"][trait]["job_id"])
        assert tags["adapter_sha256"] == mapping["traits"][trait]["adapter_sha256"]
        assert (run.data.params["lora_r"], run.data.params["target_modules"]) == ("4", "q_proj,v_proj")
        assert tracking.loss_history(uri, run.info.run_id), f"{trait}: no train_loss curve in MLflow"
