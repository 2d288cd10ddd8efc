"""The GPU pod per trait, checked without a cluster: the rendered pod spec, and its argv run here."""

import json
import subprocess
import sys

import pytest

from tests.support.airflow import copy_shards, get_dag
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import TraitNameError
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.plan import plan_traits
from trait_lora.provider import kubernetes
from trait_lora.provider.pipeline import install_pod_result


def make_plan(tmp_path, monkeypatch, local_model="meta-llama/Meta-Llama-3.1-8B-Instruct"):
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_MOUNT_PATH", str(tmp_path))
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    config = TrainingConfig(backend="local", local_model=local_model)
    plan = plan_traits(shards, tmp_path / "out", config)[0].to_dict()
    return {**plan, "config": config.to_dict(), "output_dir": str(tmp_path / "out")}


def rendered_pod(plan):
    spec = kubernetes.pod_spec(plan)
    op = kubernetes.TrainingPodOperator(
        task_id="train_pod", name=spec["name"], arguments=spec["arguments"], labels=spec["labels"]
    )
    op.render_template_fields({"var": {"value": {"trait_lora_trainer_image": "registry.local/trainer:7"}}})
    return spec, op.build_pod_request_obj(dry_run=True)


def test_rendered_pod_asks_for_a_gpu_mounts_the_pvc_and_reads_the_hf_token_from_a_secret(
    tmp_path, monkeypatch
):
    plan = make_plan(tmp_path, monkeypatch)
    spec, pod = rendered_pod(plan)
    container = pod.spec.containers[0]
    assert container.image == "registry.local/trainer:7"  # the Airflow Variable wins over the default
    assert pod.metadata.namespace == "airflow"
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert [(m.name, m.mount_path) for m in container.volume_mounts if m.name == "trait-lora-data"] == [
        ("trait-lora-data", str(tmp_path))
    ]
    claim = next(v for v in pod.spec.volumes if v.name == "trait-lora-data").persistent_volume_claim
    assert claim.claim_name == "trait-lora-data"
    hf = next(e for e in container.env if e.name == "HF_TOKEN")
    assert hf.value is None and hf.value_from.secret_key_ref.name == "hf-token"
    assert container.command == ["python", "-m", "trait_lora.train"]
    assert container.args == spec["arguments"] and "--gpu" in container.args
    assert pod.metadata.labels["trait"] == "joy-plus"


@pytest.mark.parametrize(
    "name", ["joy_plus; rm -rf /", "$(curl evil)_plus", "../../etc_plus", "joy_plus\n--gpu"]
)
def test_a_hostile_trait_name_never_reaches_the_pod(tmp_path, monkeypatch, name):
    plan = make_plan(tmp_path, monkeypatch)
    with pytest.raises(TraitNameError):
        kubernetes.pod_spec({**plan, "trait": name})


def test_paths_off_the_pvc_are_refused(tmp_path, monkeypatch):
    plan = make_plan(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="not under the pod's data mount"):
        kubernetes.pod_spec({**plan, "shard_path": "/etc/passwd"})


def test_kubernetes_dag_maps_one_pod_per_trait():
    dag = get_dag("trait_lora_kubernetes")
    assert {
        "discover",
        "trait.pod_spec",
        "trait.train_pod",
        "trait.install",
        "publish_mapping",
        "check",
    } <= set(dag.task_ids)


def test_the_pods_exact_argv_run_here_produces_a_verified_adapter(tmp_path, monkeypatch):
    from trait_lora.train.tiny_model import build_tiny_model

    copy_shards(tmp_path / "model-shards", ["joy_plus"])
    model = build_tiny_model(tmp_path / "model-shards", tmp_path / "model")
    plan = make_plan(tmp_path, monkeypatch, local_model=str(model))
    xcom = tmp_path / "xcom" / "return.json"
    # No GPU here; everything else is the pod's argv.
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_GPU_FLAG", "0")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_XCOM_FILE", str(xcom))
    spec = kubernetes.pod_spec(plan)
    done = subprocess.run(
        [sys.executable, "-m", "trait_lora.train", *spec["arguments"]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(xcom.read_text())
    assert result["adapter_dir"] == spec["adapter_dir"]
    installed = install_pod_result(plan, result, "manual__test", {})
    assert installed["adapter_sha256"] == Ledger(tmp_path / "out").hash_record("joy_plus")["adapter_sha256"]
    assert (tmp_path / "out" / "lora_checkpoints" / "joy_plus" / "adapter_config.json").is_file()
