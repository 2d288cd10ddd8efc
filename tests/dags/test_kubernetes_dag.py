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


def s3_plan(tmp_path, s3_server, bucket, local_model="meta-llama/Meta-Llama-3.1-8B-Instruct"):
    """A plan for joy_plus whose shard and output are in a bucket (the Kubernetes DAG without a PVC),
    its opposite pole beside it; 20% held out."""
    client = s3_server.client()
    for path in copy_shards(tmp_path / "shards", ["joy_plus", "joy_minus"]).iterdir():
        client.put_object(Bucket=bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    config = TrainingConfig(backend="local", local_model=local_model, eval_fraction=0.2)
    out = f"s3://aws_default@{bucket}/stage2"
    plan = plan_traits(f"s3://aws_default@{bucket}/shards", out, config, traits=["joy_plus"])[0].to_dict()
    return {**plan, "config": config.to_dict(), "output_dir": out}


def test_without_a_pvc_the_pod_reads_and_writes_the_bucket_with_credentials_by_reference(
    tmp_path, monkeypatch, s3_server, s3_bucket, s3_conn
):
    from tests.support.s3 import SECRET_KEY

    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_STORAGE_SECRET", "trait-lora-s3")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_SERVICE_ACCOUNT", "trait-lora-trainer")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_S3_ENDPOINT_URL", "https://s3.internal.example")
    plan = s3_plan(tmp_path, s3_server, s3_bucket)
    _, pod = rendered_pod(plan)
    container = pod.spec.containers[0]
    args = container.args
    assert args[args.index("--shard") + 1] == f"s3://{s3_bucket}/shards/joy_plus.jsonl"  # no conn id
    assert args[args.index("--out") + 1].startswith(f"s3://{s3_bucket}/stage2/.staging-train/joy_plus-")
    assert not [v for v in pod.spec.volumes if v.persistent_volume_claim]  # no PVC at all (xcom only)
    assert "trait-lora-data" not in [m.name for m in container.volume_mounts or []]
    assert pod.spec.service_account_name == "trait-lora-trainer"
    env = {e.name: e for e in container.env}
    for name, key in (
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    ):
        assert env[name].value is None
        assert (env[name].value_from.secret_key_ref.name, env[name].value_from.secret_key_ref.key) == (
            "trait-lora-s3",
            key,
        )
    assert env["AWS_ENDPOINT_URL_S3"].value == "https://s3.internal.example"
    assert SECRET_KEY not in json.dumps(pod.to_dict(), default=str)  # the worker's own key stays there

    # the PVC variant is unchanged by these settings, and a run mixing the two is refused
    _, local_pod = rendered_pod(make_plan(tmp_path / "pvc", monkeypatch))
    assert [v.name for v in local_pod.spec.volumes if v.persistent_volume_claim] == ["trait-lora-data"]
    mixed = {**plan, "output_dir": str(tmp_path / "pvc" / "out")}
    with pytest.raises(ValueError, match=r"both be on object storage .* or both on the PVC"):
        kubernetes.pod_spec(mixed)


def test_the_pods_argv_against_the_bucket_installs_a_content_addressed_adapter(
    tmp_path, monkeypatch, s3_server, s3_bucket, s3_conn
):
    """The pod's exact argv, with only AWS_* variables for credentials (as a Secret would give it)."""
    import os

    from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY
    from trait_lora.core.storage.records import as_store
    from trait_lora.train.tiny_model import build_tiny_model

    copy_shards(tmp_path / "model-shards", ["joy_plus"])
    model = build_tiny_model(tmp_path / "model-shards", tmp_path / "model")
    plan = s3_plan(tmp_path, s3_server, s3_bucket, local_model=str(model))
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_GPU_FLAG", "0")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_XCOM_FILE", str(xcom))
    spec = kubernetes.pod_spec(plan)
    pod_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    pod_env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL_S3=s3_server.endpoint,
    )
    done = subprocess.run(
        [sys.executable, "-m", "trait_lora.train", *spec["arguments"]],
        capture_output=True,
        text=True,
        timeout=600,
        env=pod_env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(xcom.read_text())
    assert result["adapter_dir"] == spec["adapter_dir"] and result["adapter_dir"].startswith("s3://")

    installed = install_pod_result(plan, result, "manual__test", {})
    store = as_store(plan["output_dir"])
    record = Ledger(store).hash_record("joy_plus")
    assert installed["adapter_sha256"] == record["adapter_sha256"]
    assert record["adapter_path"] == f"lora_checkpoints/joy_plus/{record['adapter_sha256']}"
    assert store.read(f"{record['adapter_path']}/adapter_model.safetensors") is not None
    metrics = store.read("metrics/joy_plus.json").json()
    assert metrics["steps"]
    # the pod fetched the opposite pole too: the same evaluation as on a volume or a worker
    assert metrics["eval"]["opposite_trait"] == "joy_minus"
    assert isinstance(metrics["eval"]["own_pole_margin"], float)
    assert not [k for k in store.list("") if ".staging-train" in k]  # staging removed once installed

    # a pod answer naming a place outside this run's staging folder is never read
    with pytest.raises(Exception, match="outside this run's staging folder"):
        install_pod_result(plan, {"adapter_dir": f"s3://{s3_bucket}/elsewhere"}, "manual__test", {})
