"""trait_lora_together with its shards and outputs in a bucket and no shared folder, through the CLI a
user runs: `trait-lora train --backend together --shards-dir s3://... --output-dir s3://...`.

The S3 API is moto in server mode on loopback, Together is the fake server, both spoken to over HTTP
by the real clients (boto3 through the Amazon provider's hook, the together SDK). What is checked is
what a user and stage 3 see: eight adapters at content-addressed keys that verify, the mapping in the
bucket naming each by URL, one job per trait, and a rerun that pays for nothing.
"""

import json
import os
import subprocess
from pathlib import Path

from tests.support.airflow import SAMPLE_SHARDS, train_together_argv
from trait_lora.core.adapter import AdapterSpec
from trait_lora.core.adapter.verify import verify_adapter_dir
from trait_lora.core.config import TrainingConfig

TRAITS = sorted(p.stem for p in SAMPLE_SHARDS.glob("*.jsonl"))


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


def test_eight_traits_train_from_and_to_a_bucket_then_rerun_for_free(
    fake_together, s3_server, s3_bucket, tmp_path
):
    client = s3_server.client()
    for path in sorted(SAMPLE_SHARDS.glob("*.jsonl")):
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

    first = train(tmp_path, shards, out, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (fake_together.creates, fake_together.uploads) == (8, 8)

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

    calls = len(fake_together.calls)
    second = train(tmp_path, shards, out, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(fake_together.calls) == calls  # nothing asked of Together, nothing paid for
    rows = json.loads(read("run_summary.json"))["traits"]
    assert {r["action"] for r in rows} == {"skipped"} and len(rows) == 8
    assert sorted(json.loads(read("hypernetwork_data.json"))["traits"]) == TRAITS
