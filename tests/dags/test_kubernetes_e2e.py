"""trait_lora_kubernetes end to end against the fake Kubernetes API (tests/fake_kubernetes): the
provider's real KubernetesPodOperator, deferrable, run by ``dag.test()``; pods the API server
validates, the scheduler places on a GPU node and the process kubelet runs.

Real training: four traits on a PVC (mounted at the folder it maps to, so no path is rewritten) and
four in a bucket (moto; the pod's AWS credentials from a Secret), the trainer image's Python kept warm
(``tests/support/warm_python.py``), the tiny offline Llama as ``base_model``. The faults a user meets
on a cluster run on a stub image (``tests/support/k8s_cluster.py``): each asserts what the user reads
(the run summary, the mapping's ``failed``, the dashboard) and what the cluster saw (pods per trait,
never two of one trait at once).

``dag.test()`` runs one task at a time, so pods never overlap here whatever ``k8s_max_pods`` says: the
bound is the scheduler's (``max_active_tis_per_dagrun``, deferred tries included), asserted on the
parsed DAG in test_kubernetes_dag.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_kubernetes import FakeKubernetes
from tests.support.airflow import REPO, copy_shards, run_dag, task_states
from tests.support.k8s_cluster import (
    NAMESPACE,
    STUB_IMAGE,
    failures_of,
    figures,
    gpu_cluster,
    label,
    most_running_per_trait,
    pod_args,
    pod_clock,
    pod_status,
    real_image,
    settings_env,
    stub_cluster,
    stub_conf,
    stub_image,
    summary_rows,
    use,
)

PVC_TRAITS = ["intellect_minus", "intellect_plus", "neuroticism_minus", "neuroticism_plus"]
S3_TRAITS = ["joy_minus", "joy_plus", "wisdom_minus", "wisdom_plus"]


@pytest.fixture(scope="module", autouse=True)
def warm_trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real trainer image's interpreter (torch, transformers, peft imported once): the folder of
    its ``python``, to put on the image's PATH. Started with the module and not waited for: it
    imports while the fault tests run (a container's ``python`` waits for it). One thread per
    trainer: the tiny model trains in ~0.5 s on one, in seconds when two processes share two cores."""
    from tests.support.warm_python import write_shim

    folder = tmp_path_factory.mktemp("warm-trainer")
    sock = str(folder / "sock")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.support.warm_python", sock],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield write_shim(folder / "bin", sock).parent
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server, its monitors and any trainer left
        server.wait()


@pytest.fixture(scope="module")
def tiny_model(warm_trainer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline Llama, built by the warm interpreter (no torch import in this process)."""
    work = tmp_path_factory.mktemp("tiny-model")
    shards = copy_shards(work / "shards", PVC_TRAITS + S3_TRAITS)
    code = (
        "import sys; from pathlib import Path; from trait_lora.train.tiny_model import build_tiny_model; "
        "build_tiny_model(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    done = subprocess.run(
        [str(warm_trainer / "python"), "-c", code, str(shards), str(work / "model")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1"},
    )
    log = (warm_trainer.parent / "server.log").read_text()[-3000:]
    assert done.returncode == 0, done.stderr[-3000:] + log
    return work / "model"


# ---------------------------------------------------------------------------------------------------
# Faults: a stub image (behaves like the trainer as the DAG sees it) on the PVC
# ---------------------------------------------------------------------------------------------------

TRAIN = {"steps": 3, "step_seconds": 0.1}  # long enough for a fault to hit it at "step 1"
BAD_SHARD = "error: shards/joy_minus.jsonl is not a valid shard; fix these lines and retry:"
NO_MODEL = "error: base model /models/llama-3.1-8b not found: pass a local path the pod sees"


@pytest.fixture(scope="module")
def faults(airflow_db, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One run where each trait meets its own fault: joy_plus is OOMKilled on both tries, joy_minus
    exits 2 (bad shard), wisdom_plus exits 3 (no model), wisdom_minus is evicted once and
    intellect_plus deleted once while training (both then train on their replacement)."""
    data = tmp_path_factory.mktemp("faults") / "data"
    with FakeKubernetes() as fake, pytest.MonkeyPatch.context() as patch:
        patch.delenv("KUBECONFIG", raising=False)
        patch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(fake.airflow_connection()))
        use(patch, settings_env(data, trainer_image=STUB_IMAGE, k8s_micro_batch="4"))
        gpu_cluster(fake, data)
        plan = {
            "joy_plus": TRAIN,
            "joy_minus": {"exit": 2, "error": BAD_SHARD},
            "wisdom_plus": {"exit": 3, "error": NO_MODEL},
            "wisdom_minus": TRAIN,
            "intellect_plus": TRAIN,
        }
        stub_image(fake, data.parent / "image", plan)
        fake.inject("oom_kill", selector="trait=joy-plus", on_log="step 1", times=2)
        fake.inject("evict", selector="trait=wisdom-minus", on_log="step 1")
        fake.inject("delete", selector="trait=intellect-plus", on_log="step 1")
        run = run_dag("trait_lora_kubernetes", stub_conf(data, sorted(plan)))
        yield {"fake": fake, "data": data, "run": run}
        problems = fake.self_check()
    assert not fake.bugs and not problems, fake.bugs + problems


def test_an_oom_killed_pod_is_named_and_its_retry_runs_with_half_the_micro_batch(faults):
    fake, data, run = faults["fake"], faults["data"], faults["run"]
    pods = fake.pods("trait=joy-plus", NAMESPACE)  # failed pods are kept for kubectl describe
    assert [p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] for p in pods] == [
        "OOMKilled",
        "OOMKilled",
    ]
    tried = sorted(int(a[a.index("--micro-batch") + 1]) for a in map(pod_args, pods))
    assert tried == [2, 4]  # [trait_lora] k8s_micro_batch, then half of it
    failure = failures_of(data, run)["joy_plus"]
    assert failure["step"] == "train_pod" and failure["pod"]["oom_killed"] is True
    reason = failure["reason"]
    assert "OOMKilled (exit 137) at micro-batch 2" in reason
    assert "lower [trait_lora] k8s_micro_batch below 2" in reason and "k8s_memory = 64Gi" in reason


def test_after_an_oom_killed_group_pod_its_retry_and_its_traits_own_pods_run_with_half(
    airflow_db, kubernetes_conn, tmp_path, monkeypatch
):
    """Two traits in one pod (traits_per_process 2), OOMKilled on both tries: the group's retry runs at
    half the micro-batch and each trait's own pod (its fallback) at half of that, not at the setting
    the group already failed with; both traits train and no failure is left on record."""
    from trait_lora.provider.kubernetes import MICRO_BATCH_FLAG, argument

    fake = kubernetes_conn
    traits = ["joy_minus", "joy_plus"]
    data = tmp_path / "data"
    gpu_cluster(fake, data)
    stub_image(fake, tmp_path / "image", {trait: TRAIN for trait in traits})
    use(monkeypatch, settings_env(data, trainer_image=STUB_IMAGE, k8s_micro_batch="8"))
    fake.inject("oom_kill", selector="group=group-joy-minus-2", on_log="step 1", times=2)
    run = run_dag("trait_lora_kubernetes", {**stub_conf(data, traits), "traits_per_process": 2})
    assert str(run.state) == "success", task_states(run)

    def tried(pod: dict[str, Any]) -> int:
        return int(argument(pod_args(pod), MICRO_BATCH_FLAG) or 0)

    group = [p for p in fake.created_pods if p["metadata"]["labels"].get("group")]
    assert [tried(p) for p in group] == [8, 4]  # the setting, then half of it
    own = sorted((p["metadata"]["labels"]["trait"], tried(p)) for p in fake.created_pods if p not in group)
    assert own == [("joy-minus", 2), ("joy-plus", 2)]  # half of what the group's last pod tried
    mapping = json.loads((data / "out" / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == traits and not mapping.get("failed")
    assert failures_of(data, run) == {}  # each install cleared what the group's pods recorded


def test_trainer_exits_2_and_3_fail_at_once_without_a_retry_and_say_why(faults):
    fake, data, run = faults["fake"], faults["data"], faults["run"]
    assert fake.created_per_label("trait")["joy-minus"] == 1  # not retried
    assert fake.created_per_label("trait")["wisdom-plus"] == 1
    failures = failures_of(data, run)
    bad, model = failures["joy_minus"], failures["wisdom_plus"]
    assert "the trainer exited 2 (bad shard, config or arguments)" in bad["reason"]
    assert BAD_SHARD in bad["reason"]  # the trainer's own words, from the container's status
    assert "not retried" in bad["reason"] and bad["pod"]["exit_code"] == 2
    assert "the trainer exited 3 (base model missing or unusable" in model["reason"]
    assert NO_MODEL in model["reason"]


def test_an_evicted_or_deleted_pod_is_replaced_once_never_two_at_once(faults):
    fake, data = faults["fake"], faults["data"]
    created = fake.created_per_label("trait")
    assert (created["wisdom-minus"], created["intellect-plus"]) == (2, 2)  # one replacement each
    assert most_running_per_trait(fake)["wisdom-minus"] == 1
    assert most_running_per_trait(fake)["intellect-plus"] == 1
    evicted = fake.pods("trait=wisdom-minus", NAMESPACE)  # the evicted pod stays; the succeeded one goes
    assert [p["status"].get("reason") for p in evicted] == ["Evicted"]
    mapping = json.loads((data / "out" / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == ["intellect_plus", "wisdom_minus"]


def test_the_summary_the_mapping_and_the_dashboard_say_why_each_trait_failed(faults):
    from trait_lora.core.handoff import report
    from trait_lora.provider.dashboard import pages

    data, run = faults["data"], faults["run"]
    assert str(run.state) == "failed"
    summary = json.loads((data / "out" / "run_summary.json").read_text())
    rows = summary_rows(summary)
    assert {t: r["action"] for t, r in rows.items()} == {
        "intellect_plus": "trained",
        "joy_minus": "failed",
        "joy_plus": "failed",
        "wisdom_minus": "trained",
        "wisdom_plus": "failed",
    }
    assert rows["joy_plus"]["pod"]["container_state"] == "terminated OOMKilled"
    assert rows["joy_minus"]["pod"]["exit_meaning"] == "bad shard, config or arguments"
    mapping = json.loads((data / "out" / "hypernetwork_data.json").read_text())
    assert mapping["failed"] == summary["failed"]
    assert all("did not finish" not in why for why in summary["failed"].values())
    html = pages.run_page("trait_lora_kubernetes", report.run_view(str(data / "out"), run.run_id), str)
    assert "OOMKilled (exit 137)" in html and "the trainer exited 2" in html


def test_a_pod_past_its_deadline_or_waiting_for_a_busy_gpu_is_explained():
    """The two outcomes the runs above do not reach, from the status a cluster writes."""
    from trait_lora.provider.pod_failure import diagnose

    deadline = diagnose(
        pod_status(phase="Failed", reason="DeadlineExceeded", message="Pod was active too long"),
        settings={"k8s_active_deadline_minutes": 720},
    )
    assert not deadline.retry and "k8s_active_deadline_minutes = 720" in deadline.message
    busy = pod_status(
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    waiting = diagnose(busy, settings={"k8s_schedule_timeout_minutes": 10.0})
    assert waiting.retry and "3 Insufficient nvidia.com/gpu" in waiting.message  # GPUs may free up
    assert "k8s_max_pods" in waiting.message


def test_a_lost_create_answer_then_a_lost_worker_still_train_one_pod(
    airflow_db, kubernetes_conn, tmp_path, monkeypatch
):
    """The API server makes the pod but its answer is lost: the provider sends the create again,
    gets 409 AlreadyExists, and the operator follows the pod it made (the provider alone would ask
    four more times over 15 s and fail the try). Then the worker dies before it defers (the test
    raises there, as a lost worker ends the try): the retry finds the running pod by its labels (the
    provider's reattach_on_restart, with our labels) and follows it. One pod trains."""
    from trait_lora.provider.pod_operator import TrainingPodOperator

    fake = kubernetes_conn
    data = stub_cluster(fake, tmp_path, monkeypatch)
    fake.lose_answers("POST", "pods")
    defer, seen = TrainingPodOperator.invoke_defer_method, []

    def worker_lost(self: Any, last_log_time: Any = None, context: Any = None) -> None:
        seen.append((self.pod.metadata.name, fake.pod(self.pod.metadata.name, NAMESPACE)))
        if len(seen) == 1:
            raise RuntimeError("the worker was lost (injected by the test)")
        defer(self, last_log_time=last_log_time, context=context)

    monkeypatch.setattr(TrainingPodOperator, "invoke_defer_method", worker_lost)
    run = run_dag("trait_lora_kubernetes", stub_conf(data, ["joy_plus"]))
    assert str(run.state) == "success", task_states(run)
    assert fake.stats.requests[("POST", "pods")] > 1  # the create was sent again
    assert fake.stats.pods_created == 1 and len(fake.launches) == 1
    (first, _), (followed, found) = seen
    assert followed == first and found["status"]["phase"] == "Running"  # the retry's pod is the first
    assert (data / "out" / "lora_checkpoints" / "joy_plus" / "adapter_model.safetensors").is_file()


def test_a_missing_secret_fails_within_seconds_naming_it(
    airflow_db, kubernetes_conn, tmp_path, monkeypatch, s3_server, s3_bucket, s3_conn
):
    fake = kubernetes_conn
    client = s3_server.client()
    for path in copy_shards(tmp_path / "shards", ["joy_plus"]).iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    stub_cluster(
        fake,
        tmp_path,
        monkeypatch,
        k8s_storage_secret="trait-lora-s3",  # never created in the namespace
        storage_roots=json.dumps([f"s3://{s3_bucket}"]),
    )
    conf = {
        "shards_dir": f"s3://aws_default@{s3_bucket}/shards",
        "output_dir": f"s3://aws_default@{s3_bucket}/out",
        "base_model": "/models/llama-3.1-8b",
    }
    began = time.monotonic()
    run = run_dag("trait_lora_kubernetes", conf)
    assert time.monotonic() - began < 30  # not the 15-minute startup timeout
    assert str(run.state) == "failed" and fake.stats.pods_created == 1  # not retried
    assert fake.pods(namespace=NAMESPACE) == []  # it never started: deleted, the node is free
    assert fake.stats.requests[("GET", "pods/log")] == 0  # no log asked of a container never started
    from trait_lora.core.storage.records import as_store

    summary = as_store(f"s3://aws_default@{s3_bucket}/out").read("run_summary.json").json()
    reason = summary["failed"]["joy_plus"]
    assert 'secret "trait-lora-s3" not found' in reason and "k8s_storage_secret" in reason


def test_an_image_that_cannot_be_pulled_fails_within_seconds_naming_it(
    airflow_db, kubernetes_conn, tmp_path, monkeypatch
):
    fake = kubernetes_conn
    data = stub_cluster(fake, tmp_path, monkeypatch, trainer_image="registry.example/trait-lora-trainr:0.1.0")
    fake.images.block("registry.example/trait-lora-trainr:*")
    began = time.monotonic()
    run = run_dag("trait_lora_kubernetes", stub_conf(data, ["joy_plus"]))
    assert time.monotonic() - began < 30
    assert str(run.state) == "failed" and fake.stats.pods_created == 1
    assert fake.stats.requests[("GET", "pods/log")] == 0
    reason = json.loads((data / "out" / "run_summary.json").read_text())["failed"]["joy_plus"]
    assert "cannot pull its image registry.example/trait-lora-trainr:0.1.0" in reason
    assert "trainer_image" in reason


def test_a_pod_no_node_can_take_fails_after_the_schedule_timeout_with_the_schedulers_message(
    airflow_db, kubernetes_conn, tmp_path, monkeypatch
):
    fake = kubernetes_conn
    data = stub_cluster(
        fake,
        tmp_path,
        monkeypatch,
        k8s_node_selector=json.dumps({"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}),
        k8s_schedule_timeout_minutes="0.03",  # 1.8 s
    )
    began = time.monotonic()
    run = run_dag("trait_lora_kubernetes", stub_conf(data, ["joy_plus"]))
    assert 1.8 < time.monotonic() - began < 30
    assert str(run.state) == "failed" and fake.stats.pods_created == 1  # no node matches: no retry
    failure = failures_of(data, run)["joy_plus"]
    assert failure["pod"]["scheduler"].startswith("0/2 nodes are available:")
    assert "didn't match Pod's node affinity/selector" in failure["reason"]
    assert (
        "k8s_schedule_timeout_minutes = 0.03" in failure["reason"]
        and "k8s_node_selector" in failure["reason"]
    )


# ---------------------------------------------------------------------------------------------------
# The real trainer: four traits on a PVC, four in a bucket
# ---------------------------------------------------------------------------------------------------


def test_four_traits_train_in_pods_on_a_pvc_and_a_rerun_starts_no_pod(
    airflow_db, kubernetes_conn, warm_trainer, tiny_model, tmp_path, monkeypatch
):
    from trait_lora.core.jobs.ledger import Ledger

    fake = kubernetes_conn
    data = tmp_path / "data"  # the PVC's folder, mounted at the same path in the pods
    copy_shards(data / "shards", PVC_TRAITS)
    model = shutil.copytree(tiny_model, data / "models" / "tiny")  # on the volume, as a pod sees it
    gpu_cluster(fake, data)
    real_image(fake, warm_trainer)
    use(monkeypatch, settings_env(data, k8s_gpu_flag="0", k8s_micro_batch="8"))
    out = data / "out"
    conf = {"shards_dir": str(data / "shards"), "output_dir": str(out), "base_model": str(model)}

    began = time.monotonic()
    with pod_clock(fake) as clock:
        run = run_dag("trait_lora_kubernetes", conf)
    wall = time.monotonic() - began
    assert str(run.state) == "success", task_states(run)

    mapping = json.loads((out / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == PVC_TRAITS and not mapping.get("failed")
    ledger = Ledger(out)
    for trait, entry in mapping["traits"].items():
        assert entry["backend"] == "local" and entry["base_model"] == str(model)
        assert (out / entry["adapter_path"] / "adapter_model.safetensors").is_file()
        assert entry["adapter_sha256"] == ledger.hash_record(trait)["adapter_sha256"]
    rows = summary_rows(json.loads((out / "run_summary.json").read_text()))
    assert {t: r["action"] for t, r in rows.items()} == dict.fromkeys(PVC_TRAITS, "trained")
    assert not any((out / ".staging-train").glob("*/result.json"))  # installed, staging gone

    # one pod per trait, each ran the trainer on its own shard from the volume, as the image's user
    assert fake.created_per_label("trait") == {label(t): 1 for t in PVC_TRAITS}
    assert fake.pods(namespace=NAMESPACE) == []  # delete_succeeded_pod
    assert max(most_running_per_trait(fake).values()) == 1
    for launch in fake.launches:
        assert launch.argv[1:3] == ("-m", "trait_lora.train")
        shard = launch.argv[launch.argv.index("--shard") + 1]
        assert Path(shard).parent == data / "shards"
        assert launch.security_context["runAsUser"] == 1000
        assert (str(data), str(data)) in launch.mounts  # the claim at its own path: nothing rewritten
    assert fake.stats.requests[("GET", "pods/exec")] == 0  # no xcom sidecar, no exec
    figures("pvc", first_pod=clock.first_running - began, per_trait=(wall - clock.running_seconds()) / 4)

    created = fake.stats.pods_created
    began = time.monotonic()
    again = run_dag("trait_lora_kubernetes", conf)
    figures("pvc", rerun=time.monotonic() - began)
    assert str(again.state) == "success"
    assert fake.stats.pods_created == created  # every trait verified and skipped: no pod at all
    rows = summary_rows(json.loads((out / "run_summary.json").read_text()))
    assert {t: r["action"] for t, r in rows.items()} == dict.fromkeys(PVC_TRAITS, "skipped")


def test_four_traits_train_in_two_group_pods_from_and_to_a_bucket(
    airflow_db,
    kubernetes_conn,
    warm_trainer,
    tiny_model,
    tmp_path,
    monkeypatch,
    s3_server,
    s3_bucket,
    s3_conn,
):
    """No PVC: the pod reads its shards from the bucket and uploads the adapters, their result.json and
    records there, with credentials from a Secret; the worker installs at the content-addressed key.
    Two traits per pod (traits_per_process 2): a pod per pair of poles, each loading the model once;
    each trait then skips its own pod and its install verifies what the group left."""
    from tests.support.s3 import ACCESS_KEY, SECRET_KEY
    from trait_lora.core.storage.records import as_store

    fake = kubernetes_conn
    shards = copy_shards(tmp_path / "shards", S3_TRAITS)
    client = s3_server.client()
    for path in shards.iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    gpu_cluster(fake, tmp_path / "unused-pvc")
    real_image(fake, warm_trainer)
    fake.add_secret(
        "trait-lora-s3",
        {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY},
        namespace=NAMESPACE,
    )
    env = settings_env(
        tmp_path,
        k8s_gpu_flag="0",
        k8s_micro_batch="8",
        k8s_storage_secret="trait-lora-s3",
        k8s_s3_endpoint_url=s3_server.endpoint,
        storage_roots=json.dumps([f"s3://{s3_bucket}", str(tmp_path)]),
    )
    use(monkeypatch, env)
    out = f"s3://aws_default@{s3_bucket}/stage2"
    conf = {
        "shards_dir": f"s3://aws_default@{s3_bucket}/shards",
        "output_dir": out,
        "base_model": str(tiny_model),
        "traits_per_process": 2,
    }

    began = time.monotonic()
    with pod_clock(fake) as clock:
        run = run_dag("trait_lora_kubernetes", conf)
    wall = time.monotonic() - began
    assert str(run.state) == "success", task_states(run)

    store = as_store(out)
    mapping = store.read("hypernetwork_data.json").json()
    assert sorted(mapping["traits"]) == S3_TRAITS and not mapping.get("failed")
    for entry in mapping["traits"].values():
        assert entry["adapter_path"] == f"lora_checkpoints/{entry['trait']}/{entry['adapter_sha256']}"
        assert store.read(f"{entry['adapter_path']}/adapter_model.safetensors") is not None
        # each pod fetched its opposite pole too: the same held-out evaluation as on a volume
        assert isinstance(entry["eval"]["own_pole_margin"], float), entry["eval"]
    assert not [k for k in store.list("") if ".staging-train" in k]  # adapters and records consumed
    assert fake.created_per_label("group") == {"group-joy-minus-2": 1, "group-wisdom-minus-2": 1}
    assert fake.created_per_label("trait") == {"": 2}  # no pod of its own for any trait
    for launch in fake.launches:
        manifest = json.loads(launch.argv[launch.argv.index("--group") + 1])
        assert [m["trait"] for m in manifest["members"]] in (S3_TRAITS[:2], S3_TRAITS[2:])
        assert all(m["shard"].startswith(f"s3://{s3_bucket}/shards/") for m in manifest["members"])
        assert launch.env["AWS_ACCESS_KEY_ID"] == ACCESS_KEY  # resolved by the kubelet from the Secret
        assert "trait-lora-data" not in [m for m, _ in launch.mounts]
    for pod in fake.created_pods:  # the pod spec names the Secret, never the key itself
        assert SECRET_KEY not in json.dumps(pod)
    figures("s3", first_pod=clock.first_running - began, per_trait=(wall - clock.running_seconds()) / 4)

    created = fake.stats.pods_created
    again = run_dag("trait_lora_kubernetes", conf)
    assert str(again.state) == "success"
    assert fake.stats.pods_created == created  # every adapter in the bucket verified: no pod at all
    rows = summary_rows(store.read("run_summary.json").json())
    assert {t: r["action"] for t, r in rows.items()} == dict.fromkeys(S3_TRAITS, "skipped")


def test_a_group_pod_evicted_after_its_first_trait_is_replaced_by_one_that_trains_only_the_second(
    airflow_db, kubernetes_conn, warm_trainer, tiny_model, tmp_path, monkeypatch, capfd
):
    """Two traits in one pod on the PVC, evicted once the first trait is recorded: the replacement pod
    (the group task's retry) leaves the first trait's adapter as it is and trains the second; both are
    installed and neither gets a pod of its own."""
    fake = kubernetes_conn
    traits = PVC_TRAITS[:2]
    data = tmp_path / "data"
    copy_shards(data / "shards", traits)
    model = shutil.copytree(tiny_model, data / "models" / "tiny")
    gpu_cluster(fake, data)
    real_image(fake, warm_trainer)
    use(monkeypatch, settings_env(data, k8s_gpu_flag="0", k8s_micro_batch="8"))
    group = "group-" + label(traits[0]) + "-2"
    fake.inject("evict", selector=f"group={group}", on_log=r"group: \[2/2\]")
    conf = {
        "shards_dir": str(data / "shards"),
        "output_dir": str(data / "out"),
        "base_model": str(model),
        "traits_per_process": 2,
    }
    run = run_dag("trait_lora_kubernetes", conf)
    assert str(run.state) == "success", task_states(run)

    assert fake.created_per_label("group") == {group: 2}  # the evicted pod and its replacement
    assert fake.created_per_label("trait") == {"": 2}  # no pod of its own for either trait
    evicted = fake.logs(fake.created_pods[0]["metadata"]["name"], NAMESPACE)  # kept: it failed
    assert f"group: [1/2] {traits[0]}" in evicted and "not again" not in evicted
    task_log = capfd.readouterr().out  # the replacement's log, streamed into its task's log
    assert f"{traits[0]} was trained by this run's earlier process; not again" in task_log
    assert f"group: [1/1] {traits[1]}" in task_log  # the only one it trained
    mapping = json.loads((data / "out" / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == traits and not mapping.get("failed")
