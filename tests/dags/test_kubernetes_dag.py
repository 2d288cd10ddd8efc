"""The GPU pod per trait, checked without a cluster: the pod the operator builds (and the manifest
``trait-lora k8s-pod`` prints, against Kubernetes' schema and the API server's own rules), and its argv
run here. The pod's lifecycle against an API server is the e2e against tests/fake_kubernetes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.airflow import SAMPLE_SHARDS, copy_shards, get_dag
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import TraitNameError
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.jobs.plan import plan_traits
from trait_lora.provider import kubernetes
from trait_lora.provider.pod_operator import TrainingPodOperator
from trait_lora.provider.pod_tasks import install_pod_result


def make_plan(tmp_path, monkeypatch, local_model="meta-llama/Meta-Llama-3.1-8B-Instruct"):
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_MOUNT_PATH", str(tmp_path))
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    config = TrainingConfig(backend="local", local_model=local_model)
    plan = plan_traits(shards, tmp_path / "out", config)[0].to_dict()
    return {**plan, "config": config.to_dict(), "output_dir": str(tmp_path / "out")}


def rendered_pod(plan):
    spec = kubernetes.pod_spec(plan)
    op = TrainingPodOperator(task_id="train_pod", **kubernetes.operator_arguments(spec))
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
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts == {"trait-lora-data": str(tmp_path), "model-cache": "/models"}
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["trait-lora-data"].persistent_volume_claim.claim_name == "trait-lora-data"
    # no shared model cache configured: each pod gets a bounded emptyDir, and asks for the disk it needs
    assert volumes["model-cache"].empty_dir.size_limit == "40Gi"
    assert container.resources.requests["ephemeral-storage"] == "40Gi"
    env = {e.name: e for e in container.env}
    assert (env["HF_HOME"].value, env["HF_HUB_CACHE"].value) == ("/models", "/models/hub")
    hf = env["HF_TOKEN"]  # a Hub model: the token comes from the Secret, by reference
    assert hf.value is None and hf.value_from.secret_key_ref.name == "hf-token"
    assert container.command == ["python", "-m", "trait_lora.train"]
    assert container.args == spec["arguments"] and "--gpu" in container.args
    assert pod.metadata.labels["trait"] == "joy-plus"
    assert pod.metadata.annotations == {"trait-lora/trait": "joy_plus"}
    # the image's user (uid 1000), volumes writable through fsGroup, nothing a restricted namespace refuses
    security = pod.spec.security_context
    assert (security.run_as_user, security.run_as_group, security.fs_group) == (1000, 1000, 1000)
    assert security.run_as_non_root and security.seccomp_profile.type == "RuntimeDefault"
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.spec.active_deadline_seconds == 720 * 60  # a hung trainer does not hold the GPU forever
    assert [c.name for c in pod.spec.containers] == ["base"]  # no xcom sidecar (no alpine, no exec)


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


def test_kubernetes_dag_maps_one_pod_per_trait_bounded_and_kept_when_it_fails():
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    dag = get_dag("trait_lora_kubernetes")
    assert {
        "discover",
        "trait.pod_spec",
        "trait.train_pod",
        "trait.install",
        "publish_mapping",
        "check",
    } <= set(dag.task_ids)
    held = dag.get_task("trait.train_pod")
    assert held.max_active_tis_per_dagrun == 4  # [trait_lora] k8s_max_pods: never N GPU pods at once
    # what runs is the provider's operator, with its own lifecycle (not a wrapper's), in the same place
    pod = held.prepare_for_execution()
    assert isinstance(pod, KubernetesPodOperator)
    assert (pod.task_id, pod.task_group, pod.get_dag()) == (held.task_id, held.task_group, dag)
    assert pod.upstream_task_ids == {"trait.pod_spec"} and pod.downstream_task_ids == {"trait.install"}
    assert pod.max_active_tis_per_dagrun == 4 and pod.retries == held.retries == 1
    assert pod.deferrable and not pod.do_xcom_push and pod.get_logs
    assert pod.logging_interval == 120  # logs while it trains, not only at the end
    assert pod.on_finish_action.value == "delete_succeeded_pod"  # a failed pod stays for kubectl
    # waiting for a node: [trait_lora] k8s_schedule_timeout_minutes, not 30 minutes
    assert (pod.schedule_timeout_seconds, pod.startup_timeout_seconds) == (600, 900)
    assert pod.kubernetes_conn_id == "kubernetes_default"
    assert dag.get_task("trait.install").upstream_task_ids == {"trait.train_pod", "discover"}


def test_the_pods_exact_argv_run_here_produces_a_verified_adapter(tmp_path, monkeypatch):
    from trait_lora.train.tiny_model import build_tiny_model

    copy_shards(tmp_path / "model-shards", ["joy_plus"])
    model = build_tiny_model(tmp_path / "model-shards", tmp_path / "model")
    plan = make_plan(tmp_path, monkeypatch, local_model=str(model))
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_GPU_FLAG", "0")  # no GPU here; the rest is the pod's argv
    spec = kubernetes.pod_spec(plan)
    with pytest.raises(Exception, match=r"left no result\.json"):  # the pod has not run yet
        install_pod_result(plan, "manual__test", {})
    done = subprocess.run(
        [sys.executable, "-m", "trait_lora.train", *spec["arguments"]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # the result record the trainer printed is also beside its adapter, where install reads it
    result = json.loads((Path(spec["adapter_dir"]) / "result.json").read_text())
    assert result == json.loads(done.stdout.strip().splitlines()[-1])
    assert result["adapter_dir"] == spec["adapter_dir"]
    installed = install_pod_result(plan, "manual__test", {})
    assert installed["adapter_sha256"] == Ledger(tmp_path / "out").hash_record("joy_plus")["adapter_sha256"]
    assert (tmp_path / "out" / "lora_checkpoints" / "joy_plus" / "adapter_config.json").is_file()


def test_a_group_pods_argv_trains_each_trait_where_its_own_pod_would_and_fails_one_alone(
    tmp_path, monkeypatch
):
    """traits_per_process on a PVC: the group pod's argv (run here, in this process) leaves joy_plus's
    adapter and record where its own pod would, so its pod_spec skips and install verifies it; jo_minus
    has nothing to learn and fails in pod_spec with the trainer's reason, starting no pod (the bucket
    variant runs on the fake cluster in test_kubernetes_e2e.py)."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from tests.train.helpers import train_here
    from trait_lora.provider.pod_tasks import pod_spec
    from trait_lora.train.group_records import record_path
    from trait_lora.train.tiny_model import build_tiny_model

    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_MOUNT_PATH", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_GPU_FLAG", "0")
    shards = copy_shards(tmp_path / "shards", ["joy_plus"])
    turns = [{"role": "user", "content": "why " * 9000}, {"role": "assistant", "content": "because"}]
    (shards / "jo_minus.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    config = TrainingConfig(backend="local", local_model=str(build_tiny_model(shards, tmp_path / "model")))
    plans = {
        p.trait: {**p.to_dict(), "config": config.to_dict(), "output_dir": str(tmp_path / "out")}
        for p in plan_traits(shards, tmp_path / "out", config)
    }
    spec = kubernetes.group_pod_spec(list(plans.values()), "manual__g")
    assert spec["annotations"] == {kubernetes.GROUP_ANNOTATION: "jo_minus,joy_plus"}
    done = train_here(*spec["arguments"])
    assert done.returncode == 0, done.stderr[-2000:]

    with pytest.raises(AirflowSkipException, match="trained by its group's pod"):
        pod_spec(plans["joy_plus"], {"run_id": "manual__g"})
    installed = install_pod_result(plans["joy_plus"], "manual__g", {})
    assert installed["adapter_sha256"] == Ledger(tmp_path / "out").hash_record("joy_plus")["adapter_sha256"]
    assert not record_path(kubernetes.locations(plans["joy_plus"])[1]).exists()  # used up with its adapter
    with pytest.raises(AirflowFailException, match="has a token to learn from within 8192 tokens"):
        pod_spec(plans["jo_minus"], {"run_id": "manual__g"})
    # another run's record is not this run's: the trait gets a pod of its own
    assert pod_spec(plans["jo_minus"], {"run_id": "manual__h"})["arguments"][:1] == ["--shard"]


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
    assert not [v for v in pod.spec.volumes if v.persistent_volume_claim]  # no PVC at all
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
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_GPU_FLAG", "0")
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
    store = as_store(plan["output_dir"])
    staging = spec["adapter_dir"].split("/stage2/", 1)[1]
    result = store.read(f"{staging}/result.json").json()  # uploaded with the adapter
    assert result["adapter_dir"] == spec["adapter_dir"] and result["adapter_dir"].startswith("s3://")

    installed = install_pod_result(plan, "manual__test", {})
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

    # installed once: a second install finds no result.json and says the pod did not finish
    with pytest.raises(Exception, match=r"left no result\.json"):
        install_pod_result(plan, "manual__test", {})


# A trait name as long as names may be (a 64-character axis): its label would be 65+ characters, which
# the API server refuses (422) though the schema alone accepts it.
LONGEST = "openness_to_experience_and_intellectual_curiosity_in_everyday_li" + "_minus"


def reviewed_manifest(capsys, *argv):
    """What ``trait-lora k8s-pod --json`` prints, checked as the API server would: Kubernetes 1.37's
    schema in strict mode (no unknown field), then the rules it checks in code (names, labels,
    quantities, GPUs requested as limited)."""
    import kubernetes_validate

    from tests.fake_kubernetes.validation import pod_errors
    from trait_lora.cli import main

    capsys.readouterr()  # what the fixtures printed
    assert main(["k8s-pod", LONGEST, "--json", *argv]) == 0
    manifest = json.loads(capsys.readouterr().out)
    kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    assert pod_errors(manifest) == []
    return manifest


@pytest.mark.parametrize("storage", ["pvc", "s3"])
def test_the_reviewed_manifest_of_the_longest_trait_is_one_a_cluster_accepts(
    storage, tmp_path, monkeypatch, capsys, request
):
    assert len(LONGEST) == 70
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / f"{LONGEST}.jsonl").write_bytes((SAMPLE_SHARDS / "joy_minus.jsonl").read_bytes())
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_MOUNT_PATH", str(tmp_path))
    where = ["--shards-dir", str(shards), "--output-dir", str(tmp_path / "out")]
    if storage == "s3":
        s3_server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        request.getfixturevalue("s3_conn")
        s3_server.client().put_object(
            Bucket=bucket, Key=f"shards/{LONGEST}.jsonl", Body=(shards / f"{LONGEST}.jsonl").read_bytes()
        )
        where = ["--shards-dir", f"s3://aws_default@{bucket}/shards", "--output-dir", f"s3://{bucket}/out"]
    manifest = reviewed_manifest(capsys, *where, "--model", "/models/llama-3.1-8b")
    meta, spec = manifest["metadata"], manifest["spec"]
    assert len(meta["name"]) <= 63 and meta["name"].startswith("trait-lora-openness-to-experience")
    assert all(len(v) <= 63 for v in meta["labels"].values())
    assert meta["labels"]["trait"] == kubernetes.trait_label(LONGEST)  # its head and a hash
    assert meta["annotations"] == {"trait-lora/trait": LONGEST}  # the full name, for people and tools
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
    ]
    assert claims == ([] if storage == "s3" else ["trait-lora-data"])
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert "HF_TOKEN" not in env  # a model path in the pod: no Hub token Secret to create
    assert [c["name"] for c in spec["containers"]] == ["base"]


def test_two_long_traits_sharing_a_head_get_different_labels_and_names():
    twin = LONGEST.replace("_minus", "_plus")
    assert kubernetes.trait_label(LONGEST) != kubernetes.trait_label(twin)
    assert kubernetes.pod_name(LONGEST) != kubernetes.pod_name(twin)
    assert kubernetes.trait_label("joy_plus") == "joy-plus"  # short names stay readable


def test_tolerations_take_every_field_of_a_pod_spec_and_refuse_others(tmp_path, monkeypatch):
    from trait_lora.settings import SettingError

    monkeypatch.setenv(
        "AIRFLOW__TRAIT_LORA__K8S_TOLERATIONS",
        json.dumps(
            [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "sku",
                    "operator": "Equal",
                    "value": "gpu",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ]
        ),
    )
    _, pod = rendered_pod(make_plan(tmp_path, monkeypatch))
    gpu, sku = pod.spec.tolerations
    assert (sku.key, sku.value, sku.effect, sku.toleration_seconds) == ("sku", "gpu", "NoExecute", 300)
    assert gpu.toleration_seconds is None
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_TOLERATIONS", '[{"key": "a", "tolerationSecond": 5}]')
    with pytest.raises(
        SettingError, match=r"k8s_tolerations .* only the fields key, operator, value, effect"
    ):
        rendered_pod(make_plan(tmp_path / "again", monkeypatch))


@pytest.mark.parametrize(
    ("model", "hub"),
    [("meta-llama/Meta-Llama-3.1-8B-Instruct", True), ("/models/llama", False), ("s3://models/llama", False)],
)
def test_the_hub_token_secret_and_endpoint_only_for_a_hub_model(tmp_path, monkeypatch, model, hub):
    monkeypatch.setenv(
        "AIRFLOW_CONN_HUGGINGFACE_DEFAULT",
        json.dumps(
            {"conn_type": "generic", "host": "https://hf-mirror.internal", "password": "hf_secret_token"}
        ),
    )
    _, pod = rendered_pod(make_plan(tmp_path, monkeypatch, local_model=model))
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert ("HF_TOKEN" in env) is hub
    assert (env["HF_ENDPOINT"].value if "HF_ENDPOINT" in env else None) == (
        "https://hf-mirror.internal" if hub else None
    )
    assert "hf_secret_token" not in json.dumps(pod.to_dict(), default=str)  # the token stays in Airflow


def test_a_shared_model_cache_is_the_named_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__K8S_MODEL_CACHE", "trait-lora-models")
    _, pod = rendered_pod(make_plan(tmp_path, monkeypatch))
    cache = next(v for v in pod.spec.volumes if v.name == "model-cache")
    assert cache.persistent_volume_claim.claim_name == "trait-lora-models" and cache.empty_dir is None
    assert "ephemeral-storage" not in pod.spec.containers[0].resources.requests


def test_a_missing_secret_as_the_kubelet_reports_it_ends_the_wait_naming_it():
    """The trigger's check, on the status a kubelet writes for a missing Secret (the provider itself
    only fails fast on image pull errors); its run against an API server is the e2e's."""
    from kubernetes.client import models as k8s

    from trait_lora.provider.pod_operator import TrainingPodTrigger, config_error

    def pod(waiting):
        state = k8s.V1ContainerState(waiting=waiting)
        container = k8s.V1ContainerStatus(
            name="base", image="trainer", image_id="", ready=False, restart_count=0, state=state
        )
        status = k8s.V1PodStatus(phase="Pending", container_statuses=[container])
        return k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="trait-lora-joy-plus-x", namespace="ml"), status=status
        )

    missing = k8s.V1ContainerStateWaiting(
        reason="CreateContainerConfigError", message='secret "hf-token" not found'
    )
    message = config_error(pod(missing))
    assert message is not None and 'secret "hf-token" not found' in message
    assert "ml/trait-lora-joy-plus-x" in message and "k8s_hf_secret" in message  # which pod, what to change
    assert config_error(pod(k8s.V1ContainerStateWaiting(reason="ContainerCreating"))) is None  # pulling: wait

    from datetime import UTC, datetime

    trigger = TrainingPodTrigger(
        pod_name="p", pod_namespace="ml", trigger_start_time=datetime.now(UTC), base_container_name="base"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "trait_lora.provider.pod_operator.TrainingPodTrigger"  # what the triggerer loads
    assert type(TrainingPodTrigger(**kwargs)) is TrainingPodTrigger


def test_the_trigger_ends_the_wait_for_a_pod_whose_secret_is_missing_within_seconds(
    tmp_path, monkeypatch, kubernetes_conn
):
    """The pod as the operator builds it, created on the fake API server (a GPU node to run on, the
    PVC, no ``hf-token`` Secret): the trigger's event names the Secret long before the startup
    timeout (15 minutes), as the provider's own check does for an image that cannot be pulled."""
    import asyncio
    import time
    from datetime import UTC, datetime

    from trait_lora.provider.pod_operator import TrainingPodTrigger

    fake = kubernetes_conn
    fake.add_namespace("airflow")
    fake.add_pvc("trait-lora-data", tmp_path, namespace="airflow")
    fake.add_node(
        "gpu-1",
        cpu="16",
        memory="128Gi",
        gpus=1,
        labels={"nvidia.com/gpu.present": "true"},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    )
    spec = kubernetes.pod_spec(make_plan(tmp_path, monkeypatch))  # a Hub model: HF_TOKEN from hf-token
    op = TrainingPodOperator(
        task_id="train_pod",
        name=spec["name"],
        arguments=spec["arguments"],
        labels=spec["labels"],
        image="registry.local/trainer:7",
        namespace="airflow",
    )
    pod = op.pod_manager.create_pod(op.build_pod_request_obj(dry_run=True))
    trigger = TrainingPodTrigger(
        pod_name=pod.metadata.name,
        pod_namespace="airflow",
        trigger_start_time=datetime.now(UTC),
        base_container_name="base",
        kubernetes_conn_id="kubernetes_default",
        startup_timeout=900,
        startup_check_interval=0.2,
        schedule_timeout=600,
    )

    async def first_event():
        async for event in trigger.run():
            return event.payload

    started = time.monotonic()
    event = asyncio.run(asyncio.wait_for(first_event(), timeout=60))
    assert time.monotonic() - started < 30
    assert event["status"] == "timeout"  # the provider's "could not start": it fails the try, no re-defer
    assert 'secret "hf-token" not found' in event["message"] and "k8s_hf_secret" in event["message"]


def test_the_pod_task_the_scheduler_sees_is_the_one_that_runs():
    """The DAG holds a small operator at parse time; what the scheduler reads of it (pool, bounds,
    retries, trigger rule, label template...) is what the pod operator built from it carries."""
    from airflow.sdk.bases.operator import BaseOperator

    dag = get_dag("trait_lora_kubernetes")
    for task_id in ("trait.train_pod", "group.train_pod"):
        held = dag.get_task(task_id)
        pod = held.prepare_for_execution()
        differ = {
            field
            for field in BaseOperator.get_serialized_fields()
            if getattr(held, field, None) != getattr(pod, field, None)
        }
        # the class's name and template fields, and the DAG's params a running task gets anyway
        assert differ <= {"task_type", "template_fields", "template_fields_renderers", "params"}, differ
        assert set(held.template_fields) <= set(pod.template_fields)
        assert pod.get_dag() is dag and dag.get_task(task_id) is held  # the DAG is left as it was


def test_a_training_pod_refuses_what_its_operator_sets_and_keeps_the_start_date_it_was_given():
    """Refused when the DAG file is parsed, not by every run when the pod operator is built."""
    from datetime import UTC, datetime

    from trait_lora.provider.training_pod import TrainingPod

    pod_args = {"name": "trait-lora-joy-plus", "arguments": ["--shard", "x"], "labels": {"trait": "joy-plus"}}
    with pytest.raises(TypeError, match="do_xcom_push, get_logs"):
        TrainingPod(task_id="train_pod", do_xcom_push=True, get_logs=False, **pod_args)
    start = datetime(2026, 2, 1, tzinfo=UTC)
    pod = TrainingPod(task_id="train_pod", start_date=start, **pod_args).prepare_for_execution()
    assert isinstance(pod, TrainingPodOperator) and pod.start_date == start


def test_a_re_deferral_after_a_never_started_container_still_follows_the_logs(monkeypatch):
    """trigger_reentry turns log reading off for a container that never started; when the provider
    then defers again (the pod still pending after an "error" event), the new trigger follows the
    pod's logs as configured, and the operator is left as it was."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    seen = []

    def reentry_that_defers_again(self, context, event):
        seen.append(("reentry", self.get_logs))
        self.invoke_defer_method(context=context)

    def defer(self, *args, **kwargs):
        seen.append(("defer", self.get_logs))

    monkeypatch.setattr(KubernetesPodOperator, "trigger_reentry", reentry_that_defers_again)
    monkeypatch.setattr(KubernetesPodOperator, "invoke_defer_method", defer)
    op = TrainingPodOperator(task_id="train_pod", name="trait-lora-joy-plus", arguments=[], labels={})
    monkeypatch.setattr(op, "_container_started", lambda event: False)
    op.trigger_reentry({}, {"status": "error", "name": "p", "namespace": "airflow", "message": "x"})
    assert seen == [("reentry", False), ("defer", True)] and op.get_logs is True
