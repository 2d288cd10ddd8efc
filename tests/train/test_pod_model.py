"""A trainer pod fetches the run's pinned base model itself: it has no Airflow, only the Hub token a
Secret gives it (HF_TOKEN), a mirror (HF_ENDPOINT) and its cache volume; the adapter records the repo id
and the pod trains on exactly the commit ``discover`` pinned, even after the branch moved."""

from __future__ import annotations

import json

from tests.train.helpers import last_json_line, train_here
from trait_lora.core.config import TrainingConfig
from trait_lora.models import resolve

REPO_ID = "acme/pod-llama"


def test_the_pod_trains_on_the_pinned_commit_from_its_cache(
    hub_online, tiny_model, shards_dir, tmp_path, monkeypatch
):
    hub = hub_online
    pinned_commit = hub.add_repo(REPO_ID, tiny_model, gated=True)
    pin = resolve(REPO_ID, token=hub.token, endpoint=hub.endpoint).to_dict()
    hub.commit(REPO_ID, {"config.json": b"{}"})  # main moves on: the pod must not follow it
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    config = TrainingConfig(backend="local", local_model=REPO_ID, batch_size=8)
    argv = [
        "--shard",
        shards_dir / "wisdom_plus.jsonl",
        "--out",
        tmp_path / "adapter",
        "--config-json",
        json.dumps(config.to_dict()),
        "--model-pin",
        json.dumps(pin),
        "--model-cache",
        tmp_path / "cache",
        "--max-steps",
        "1",
    ]
    done = train_here(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert last_json_line(done.stdout)["sha256"]
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == REPO_ID
    assert all(pinned_commit in path for path in hub.downloads() if "/resolve/" in path)
    fetched = len(hub.downloads())
    assert train_here(*argv).returncode == 0 and len(hub.downloads()) == fetched  # the volume's copy

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    done = train_here(*[a if a != tmp_path / "cache" else tmp_path / "empty-cache" for a in argv])
    assert done.returncode == 3 and "hf_wrong" not in done.stderr
    assert REPO_ID in done.stderr and "k8s_hf_secret" in done.stderr
