"""trait_lora_local with its base model named by Hub repo id (and loaded in 4 bits), served by the fake
Hub to the real ``huggingface_hub`` client through the Airflow connection ``huggingface_default``
(token, mirror).

What a user notices: the run downloads the model once into ``[trait_lora] model_cache_dir`` and trains
on the commit it pinned, recorded with the adapter in ``hypernetwork_data.json``; a forced rerun
downloads nothing; a wrong token fails the run in ``discover``, naming the connection, before anything
trains, and the token appears in no log or output.
"""

from __future__ import annotations

import json

from tests.support.airflow import copy_shards, run_dag, task_states

REPO_ID = "acme/tiny-chat-llama"


def test_a_hub_model_is_pinned_downloaded_once_and_recorded(
    airflow_db, hub_online, tmp_path, monkeypatch, capsys
):
    from trait_lora.train.tiny_model import build_tiny_model

    hub = hub_online
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    commit = hub.add_repo(REPO_ID, build_tiny_model(shards, tmp_path / "built"), gated=True)
    monkeypatch.setenv(
        "AIRFLOW_CONN_HUGGINGFACE_DEFAULT",
        json.dumps({"conn_type": "generic", "host": hub.endpoint, "password": hub.token}),
    )
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__MODEL_CACHE_DIR", str(tmp_path / "models"))
    out = tmp_path / "out"
    # QLoRA on this CPU too (bitsandbytes 0.50): the mapping says which base, at which precision
    conf = {
        "shards_dir": str(shards),
        "output_dir": str(out),
        "base_model": f"{REPO_ID}@main",
        "quantization": "4bit",
    }

    first = run_dag("trait_lora_local", conf)
    assert str(first.state) == "success", task_states(first)
    entry = json.loads((out / "hypernetwork_data.json").read_text())["traits"]["joy_plus"]
    assert (entry["base_model"], entry["base_model_source"]) == (REPO_ID, "hub")
    assert entry["base_model_revision"] == commit  # the branch as pinned in discover
    assert entry["quantization"] == "4bit"
    metrics = json.loads((out / "metrics" / "joy_plus.json").read_text())
    assert (metrics["quantization"], metrics["precision"]) == ("4bit", "fp32")
    adapter_config = json.loads((out / "lora_checkpoints" / "joy_plus" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == REPO_ID  # the id, not this worker's cache path
    downloaded = len(hub.downloads())
    assert downloaded >= 3 and any((tmp_path / "models").rglob("config.json"))

    again = run_dag("trait_lora_local", {**conf, "force_retrain": True})
    assert str(again.state) == "success"
    assert len(hub.downloads()) == downloaded, "a forced rerun must train from the cache"
    logged = capsys.readouterr().out  # both runs' task logs, as dag.test() prints them
    assert "trait_lora_local" in logged and hub.token not in logged
    assert hub.token not in (out / "hypernetwork_data.json").read_text()


def test_a_wrong_token_fails_the_run_in_discover_naming_the_connection(
    airflow_db, hub_online, tmp_path, monkeypatch, capsys
):
    hub = hub_online
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    hub.add_repo(REPO_ID, {"config.json": b'{"model_type": "llama"}'}, gated=True)
    monkeypatch.setenv(
        "AIRFLOW_CONN_HUGGINGFACE_DEFAULT",
        json.dumps({"conn_type": "generic", "host": hub.endpoint, "password": "hf_not_a_real_token"}),
    )
    out = tmp_path / "out"
    dr = run_dag(
        "trait_lora_local", {"shards_dir": str(shards), "output_dir": str(out), "base_model": REPO_ID}
    )
    states = task_states(dr)
    assert states[("discover", -1)] == "failed" and str(dr.state) == "failed"
    assert not (out / "lora_checkpoints").exists()
    logged = capsys.readouterr().out  # the task log, as dag.test() prints it
    assert f"base model {REPO_ID}:" in logged and "Airflow connection 'huggingface_default'" in logged
    assert "hf_not_a_real_token" not in logged
