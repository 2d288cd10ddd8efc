"""trait_lora_local end to end through the CLI a user runs (`trait-lora train --backend local`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.airflow import REPO, copy_shards

CLI = Path(sys.executable).with_name("trait-lora")


def train(*args: str, tmp_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(extra_env or {})
    return subprocess.run(
        [
            str(CLI),
            "train",
            "--backend",
            "local",
            "--tiny-model",
            "--airflow-home",
            str(tmp_path / "af"),
            "--dags-folder",
            str(REPO / "dags"),
            "--shards-dir",
            str(tmp_path / "shards"),
            "--output-dir",
            str(tmp_path / "out"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_local_dag_trains_publishes_fails_only_the_bad_shard_then_skips(tmp_path):
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    (shards / "broken_minus.jsonl").write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n')

    first = train(tmp_path=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    out = tmp_path / "out"
    mapping = json.loads((out / "hypernetwork_data.json").read_text())
    assert list(mapping["traits"]) == ["joy_plus"]
    assert mapping["backend"] == "local" and mapping["traits"]["joy_plus"]["job_id"] is None
    assert "broken_minus.jsonl:1:" in mapping["failed"]["broken_minus"]
    assert (out / "lora_checkpoints" / "joy_plus" / "adapter_model.safetensors").is_file()
    table = {row[0]: row[1] for row in (line.split() for line in first.stdout.splitlines()) if len(row) > 1}
    assert (table["joy_plus"], table["broken_minus"]) == ("trained", "failed")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["loss_plot"] and Path(summary["loss_plot"]).read_bytes()[:4] == b"\x89PNG"

    second = train("joy_plus", tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = json.loads((out / "run_summary.json").read_text())["traits"]
    assert [(r["trait"], r["action"]) for r in rows] == [("joy_plus", "skipped")]


def test_the_local_dag_trains_from_and_to_a_bucket(
    airflow_db, s3_server, s3_bucket, s3_conn, tmp_path, monkeypatch
):
    """trait_lora_local with both locations on S3: the shard copied to this worker, the adapter
    trained in scratch and installed at its content-addressed key, the mapping in the bucket."""
    from tests.support.airflow import run_dag
    from trait_lora.core.storage.records import as_store
    from trait_lora.train.tiny_model import build_tiny_model

    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    model = build_tiny_model(shards, tmp_path / "model")
    client = s3_server.client()
    client.put_object(
        Bucket=s3_bucket, Key="shards/joy_plus.jsonl", Body=(shards / "joy_plus.jsonl").read_bytes()
    )
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__STORAGE_ROOTS", json.dumps([f"s3://{s3_bucket}", str(tmp_path)]))
    out = f"s3://{s3_bucket}/stage2"
    conf = {"shards_dir": f"s3://{s3_bucket}/shards", "output_dir": out, "base_model": str(model)}
    dr = run_dag("trait_lora_local", conf)
    assert str(dr.state) == "success"
    store = as_store(out)
    mapping = store.read("hypernetwork_data.json").json()
    entry = mapping["traits"]["joy_plus"]
    assert entry["backend"] == "local" and entry["adapter_url"] == f"{out}/{entry['adapter_path']}"
    assert store.read(f"{entry['adapter_path']}/adapter_model.safetensors") is not None
    assert store.read("metrics/joy_plus.json").json()["steps"]
    assert not [k for k in store.list("") if ".staging-train" in k]
