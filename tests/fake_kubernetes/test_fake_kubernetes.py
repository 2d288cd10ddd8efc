"""The fake Kubernetes API against the real clients: ``kubernetes`` (sync), ``kubernetes_asyncio`` and
the cncf.kubernetes provider's ``KubernetesPodOperator``, so that what the fake answers is what those
clients parse, and what it refuses is what a 1.37 API server refuses."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime

import kubernetes_asyncio
import pytest
from kubernetes import client

from tests.fake_kubernetes import FakeKubernetes

PY = sys.executable


def core_api(fake: FakeKubernetes) -> client.CoreV1Api:
    config = client.Configuration()
    config.host = fake.url
    config.api_key = {"authorization": f"Bearer {fake.token}"}
    return client.CoreV1Api(client.ApiClient(config))


def pod_manifest(name: str, script: str, **spec: object) -> dict:
    container = {"name": "base", "image": "python:3.11", "command": [PY, "-c", script]}
    container.update(spec.pop("container", {}))  # type: ignore[arg-type]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "fake-test"}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def log_text(api: client.CoreV1Api, name: str) -> str:
    """The log as text: kubernetes 36.0.x returns ``str(bytes)`` ("b'...'") unless the body is read raw
    (kubernetes-client/python#2596), which is how the cncf.kubernetes provider reads it."""
    return api.read_namespaced_pod_log(name, "default", _preload_content=False).data.decode()


def status_of(error: client.ApiException) -> dict:
    return json.loads(error.body)


def test_the_api_server_refuses_a_64_character_label_value_and_a_bad_name_with_422(fake_kubernetes):
    api = core_api(fake_kubernetes)
    manifest = pod_manifest("ok", "print(1)")
    manifest["metadata"]["labels"]["trait"] = "a" * 64
    with pytest.raises(client.ApiException) as caught:
        api.create_namespaced_pod("default", manifest)
    status = status_of(caught.value)
    assert caught.value.status == 422
    assert (status["kind"], status["status"], status["reason"]) == ("Status", "Failure", "Invalid")
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": f'Invalid value: "{"a" * 64}": must be no more than 63 characters',
            "field": "metadata.labels",
        }
    ]

    with pytest.raises(client.ApiException) as caught:
        api.create_namespaced_pod("default", pod_manifest("Trait_Joy", "print(1)"))
    causes = status_of(caught.value)["details"]["causes"]
    assert [c["field"] for c in causes] == ["metadata.name"]
    assert "RFC 1123 subdomain" in causes[0]["message"]

    gpu = pod_manifest("gpu", "print(1)", container={"resources": {"requests": {"nvidia.com/gpu": "1"}}})
    with pytest.raises(client.ApiException) as caught:
        api.create_namespaced_pod("default", gpu)
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "spec.containers[0].resources.limits"

    toleration = {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "effect": "NoSchedule",
        "tolerationSeconds": 60,
    }
    with pytest.raises(client.ApiException) as caught:
        api.create_namespaced_pod("default", pod_manifest("tol", "print(1)", tolerations=[toleration]))
    assert "effect must be 'NoExecute' when `tolerationSeconds` is set" in status_of(caught.value)["message"]
    assert fake_kubernetes.stats.pods_created == 0


def test_a_pod_runs_its_command_and_its_log_streams_while_it_runs(fake_kubernetes, tmp_path):
    api = core_api(fake_kubernetes)
    go = tmp_path / "go"
    script = (
        "import os, time\nprint('first', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\nprint('second')"
    )
    created = api.create_namespaced_pod("default", pod_manifest("hello", script))
    assert (created.status.phase, created.spec.restart_policy) == ("Pending", "Never")
    with pytest.raises(client.ApiException) as caught:
        api.create_namespaced_pod("default", pod_manifest("hello", script))
    assert (caught.value.status, status_of(caught.value)["reason"]) == (409, "AlreadyExists")

    fake_kubernetes.wait_for_phase("hello", ("Running",))
    stream = api.read_namespaced_pod_log(
        "hello", "default", container="base", follow=True, timestamps=True, _preload_content=False
    ).stream(amt=None, decode_content=True)
    stamp, _, first = next(stream).decode().partition(" ")
    assert first == "first\n" and datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert api.read_namespaced_pod("hello", "default").status.phase == "Running"  # the process still runs
    go.touch()
    assert b"".join(stream).decode().split(" ", 1)[1] == "second\n"  # the stream ends with the container

    pod = fake_kubernetes.wait_for_phase("hello")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated["exitCode"], terminated["reason"]) == (
        "Succeeded",
        0,
        "Completed",
    )
    assert log_text(api, "hello") == "first\nsecond\n"
    events = api.list_namespaced_event("default", field_selector="involvedObject.name=hello").items
    assert [e.reason for e in events] == ["Scheduled", "Pulled", "Created", "Started"]

    api.patch_namespaced_pod("hello", "default", {"metadata": {"labels": {"already_checked": "True"}}})
    selector = "app=fake-test,already_checked!=True,!airflow-worker"  # the provider's reattach lookup
    assert api.list_namespaced_pod("default", label_selector=selector).items == []

    api.delete_namespaced_pod("hello", "default")
    with pytest.raises(client.ApiException) as caught:
        api.read_namespaced_pod("hello", "default")
    assert (caught.value.status, status_of(caught.value)["message"]) == (404, 'pods "hello" not found')


def test_a_pod_that_fits_no_node_stays_pending_with_the_schedulers_message(fake_kubernetes):
    fake_kubernetes.add_node(
        "gpu-1", gpus=1, taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    )
    api = core_api(fake_kubernetes)
    limits = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    api.create_namespaced_pod("default", pod_manifest("no-toleration", "print(1)", container=limits))
    fake_kubernetes.wait_for(lambda: any(e["reason"] == "FailedScheduling" for e in fake_kubernetes.events()))
    pod = api.read_namespaced_pod("no-toleration", "default")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert (pod.status.phase, scheduled.status, scheduled.reason) == ("Pending", "False", "Unschedulable")
    assert scheduled.message == (
        "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint(s). "
        "no new claims to deallocate, preemption: 0/2 nodes are available: 1 No preemption victims found "
        "for incoming pod, 1 Preemption is not helpful for scheduling."
    )
    assert pod.spec.containers[0].resources.requests == {"nvidia.com/gpu": "1"}  # defaulted from limits

    tolerate = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    hold = "import time; time.sleep(30)"
    api.create_namespaced_pod("default", pod_manifest("first", hold, container=limits, tolerations=tolerate))
    api.create_namespaced_pod(
        "default", pod_manifest("second", "print(2)", container=limits, tolerations=tolerate)
    )
    assert fake_kubernetes.wait_for_phase("first", ("Running",))["spec"]["nodeName"] == "gpu-1"
    fake_kubernetes.wait_for(
        lambda: any(e["reason"] == "FailedScheduling" for e in fake_kubernetes.events("second"))
    )
    assert (
        "2 Insufficient nvidia.com/gpu."
        in fake_kubernetes.pod("second")["status"]["conditions"][-1]["message"]
    )
    api.delete_namespaced_pod("first", "default", grace_period_seconds=0)  # the GPU frees: the next pod runs
    assert fake_kubernetes.wait_for_phase("second")["status"]["phase"] == "Succeeded"
    assert fake_kubernetes.stats.max_pods_active == 1  # never two GPU pods at once on the one GPU


def test_a_missing_secret_is_create_container_config_error_until_the_secret_exists(fake_kubernetes):
    api = core_api(fake_kubernetes)
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}]
    script = "import os; print(os.environ['HF_TOKEN'] == 'hf_x')"
    api.create_namespaced_pod("default", pod_manifest("needs-secret", script, container={"env": env}))

    def waiting() -> dict:
        pod = fake_kubernetes.store.get("pods", "default", "needs-secret")
        statuses = pod["status"].get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting", {})

    fake_kubernetes.wait_for(lambda: waiting().get("reason") == "CreateContainerConfigError")
    pod = api.read_namespaced_pod("needs-secret", "default")
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "hf-token" not found'
    with pytest.raises(client.ApiException) as caught:
        api.read_namespaced_pod_log("needs-secret", "default")
    assert status_of(caught.value)["message"] == (
        'container "base" in pod "needs-secret" is waiting to start: CreateContainerConfigError'
    )
    api.create_namespaced_secret(
        "default", {"metadata": {"name": "hf-token"}, "stringData": {"token": "hf_x"}}
    )
    assert fake_kubernetes.wait_for_phase("needs-secret")["status"]["phase"] == "Succeeded"
    assert log_text(api, "needs-secret") == "True\n"


def test_deletion_and_active_deadline_stop_a_pod_with_sigterm_then_sigkill(fake_kubernetes):
    api = core_api(fake_kubernetes)
    stubborn = (
        "import os, signal, time\n"  # os.write: a print() in the handler may re-enter the one in progress
        "signal.signal(signal.SIGTERM, lambda *_: os.write(1, b'got SIGTERM\\n'))\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    api.create_namespaced_pod("default", pod_manifest("stubborn", stubborn))
    api.create_namespaced_pod(
        "default", pod_manifest("hung", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )
    fake_kubernetes.wait_for(lambda: "ready" in fake_kubernetes.logs("stubborn"))
    launch = next(x for x in fake_kubernetes.launches if x.pod == "stubborn")
    assert launch.argv[0] == PY and launch.env["HOSTNAME"] == "stubborn"
    started = time.monotonic()
    deleting = api.delete_namespaced_pod(
        "stubborn", "default", grace_period_seconds=1, propagation_policy="Background"
    )
    assert deleting.metadata.deletion_grace_period_seconds == 1 and deleting.metadata.deletion_timestamp
    fake_kubernetes.wait_for(lambda: "got SIGTERM" in fake_kubernetes.logs("stubborn"))
    fake_kubernetes.wait_for(
        lambda: fake_kubernetes.store.get("pods", "default", "stubborn") is None, what="deletion"
    )
    assert 1.0 <= time.monotonic() - started < 5.0  # SIGTERM ignored: killed when the grace period ended
    assert [e["reason"] for e in fake_kubernetes.events("stubborn")][-1] == "Killing"

    hung = fake_kubernetes.wait_for_phase("hung", ("Failed",))
    assert (hung["status"]["reason"], hung["status"]["message"]) == (
        "DeadlineExceeded",
        "Pod was active on the node longer than the specified deadline",
    )
    fake_kubernetes.wait_for(
        lambda: all(
            c.process is None for r in fake_kubernetes.cluster.kubelet.runs.values() for c in r.containers
        )
    )
    assert (
        fake_kubernetes.pod("hung")["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
        == 143
    )


def test_faults_end_a_pod_as_a_kubelet_reports_them(fake_kubernetes):
    api = core_api(fake_kubernetes)
    sleeper = "import time; print('step 1', flush=True); time.sleep(30)"
    fake_kubernetes.inject("oom_kill", selector="app=fake-test,case=oom", on_log="step 1")
    oom = pod_manifest("oom", sleeper)
    oom["metadata"]["labels"]["case"] = "oom"
    api.create_namespaced_pod("default", oom)
    api.create_namespaced_pod("default", pod_manifest("evicted", sleeper))
    fake_kubernetes.images.block("private.registry/trainer:*")
    api.create_namespaced_pod(
        "default", pod_manifest("unpullable", "print(1)", container={"image": "private.registry/trainer:1"})
    )
    failed = fake_kubernetes.wait_for_phase("oom")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (failed["status"]["phase"], terminated["exitCode"], terminated["reason"]) == (
        "Failed",
        137,
        "OOMKilled",
    )

    fake_kubernetes.wait_for(lambda: "step 1" in fake_kubernetes.logs("evicted"))
    fake_kubernetes.evict("evicted")
    evicted = fake_kubernetes.wait_for_phase("evicted")
    assert (evicted["status"]["phase"], evicted["status"]["reason"]) == ("Failed", "Evicted")

    def pull_reason() -> str:
        statuses = fake_kubernetes.store.get("pods", "default", "unpullable")["status"].get(
            "containerStatuses"
        )
        return ((statuses or [{}])[0].get("state") or {}).get("waiting", {}).get("reason", "")

    fake_kubernetes.wait_for(lambda: pull_reason() == "ImagePullBackOff")
    assert fake_kubernetes.pod("unpullable")["status"]["phase"] == "Pending"
    assert [e["reason"] for e in fake_kubernetes.events("unpullable")][-2:] == ["BackOff", "Failed"]


def test_the_asyncio_client_creates_watches_reads_and_deletes(fake_kubernetes):
    async def scenario() -> tuple[list[str], str, int]:
        config = kubernetes_asyncio.client.Configuration(host=fake_kubernetes.url)
        config.api_key = {"BearerToken": fake_kubernetes.token}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        async with kubernetes_asyncio.client.ApiClient(config) as api_client:
            api = kubernetes_asyncio.client.CoreV1Api(api_client)
            await api.create_namespaced_pod("default", pod_manifest("async-pod", "print('from asyncio')"))
            seen = []
            watch = kubernetes_asyncio.watch.Watch()
            async for event in watch.stream(
                api.list_namespaced_event,
                namespace="default",
                field_selector="involvedObject.name=async-pod",
                timeout_seconds=5,
            ):
                seen.append(event["object"].reason)
                if event["object"].reason == "Started":
                    watch.stop()
            pod = await api.read_namespaced_pod("async-pod", "default")
            while pod.status.phase not in ("Succeeded", "Failed"):
                await asyncio.sleep(0.02)
                pod = await api.read_namespaced_pod("async-pod", "default")
            log = await api.read_namespaced_pod_log("async-pod", "default", timestamps=True)
            await api.delete_namespaced_pod("async-pod", "default")
            try:
                await api.read_namespaced_pod("async-pod", "default")
            except kubernetes_asyncio.client.ApiException as error:
                return seen, log, error.status
            return seen, log, 200

    seen, log, after_delete = asyncio.run(scenario())
    assert seen == ["Scheduled", "Pulled", "Created", "Started"]
    assert log.split(" ", 1)[1] == "from asyncio\n"
    assert after_delete == 404


KPO_DAG = """
from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG({dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    KubernetesPodOperator(
        task_id="pod",
        name="trait-joy",
        namespace="default",
        image="python:3.11",
        cmds={cmds!r},
        labels={{"trait": "joy"}},
        deferrable={deferrable!r},
        poll_interval=0.05,
        startup_check_interval_seconds=0.05,  # a float sleeps fine; the default 5 s would dominate
        on_finish_action="delete_succeeded_pod",
    )
"""


def bundled_dag(tmp_path, monkeypatch, dag_id: str, source: str):
    """A DAG that ``dag.test()`` can run: it must come from a configured bundle, so the test adds one
    beside the repository's ``dags-folder``."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / f"{dag_id}.py").write_text(source)
    bundles = [
        {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {},
        },
        {
            "name": f"bundle-{dag_id}",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(folder)},
        },
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_the_providers_pod_operator_runs_a_pod_to_completion(
    airflow_db, kubernetes_conn, deferrable, tmp_path, monkeypatch
):
    fake = kubernetes_conn
    out = tmp_path / "out.txt"
    cmds = [PY, "-c", f"import pathlib; pathlib.Path({str(out)!r}).write_text('done'); print('trained')"]
    dag_id = f"fake_k8s_kpo_{'deferrable' if deferrable else 'sync'}"
    dag = bundled_dag(
        tmp_path, monkeypatch, dag_id, KPO_DAG.format(dag_id=dag_id, cmds=cmds, deferrable=deferrable)
    )
    run = dag.test()
    assert str(run.state) == "success"
    assert out.read_text() == "done"
    assert fake.stats.pods_created == 1 and fake.created_per_label("trait") == {"joy": 1}
    created = fake.created_pods[0]
    assert created["metadata"]["labels"]["task_id"] == "pod"
    assert fake.pods() == []  # delete_succeeded_pod: the pod is gone
    assert fake.stats.requests[("GET", "pods/log")] >= 1
    assert fake.stats.requests[("GET", "pods/exec")] == 0  # no xcom sidecar, no exec
