"""Live e2e on CeleryExecutor: two workers as two "machines" that share no directory at all.

A real Airflow (PostgreSQL, Redis from Debian's packages as the broker, api-server, scheduler,
dag-processor, triggerer) and two ``airflow celery worker`` processes, each with its own working
directory, ``HOME``, ``TMPDIR``, ``AIRFLOW_HOME`` (its task logs) and reported hostname. Shards and
outputs live in a bucket on an S3 API server (moto, over HTTP on loopback), reached through the
``aws_default`` connection; no path is common to the two machines. What it shows:

* a ``trait_lora_together`` run of 8 traits completes with task instances run by both workers (their
  ``hostname`` column), every adapter at its content-addressed key in the bucket;
* a forced run in which one worker is SIGKILLed (its whole process group: the Celery worker and the
  task processes it runs) while it holds running per-trait tasks still succeeds on the other worker,
  with exactly one new Together job per trait, none cancelled, and ledgers that parse and name every
  trait's job and adapter.

Skipped by ``make test`` (marker ``e2e``); run with ``make e2e``.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from tests.e2e.live import DAG_ID, LiveDeployment, log, trait_of_suffix, watch_run, write_shards
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.core.storage.location import parse_location
from trait_lora.core.storage.objects import S3Store

pytestmark = pytest.mark.e2e

WORKERS = ("machine-a", "machine-b")
N_TRAITS = 8
JOB_SECONDS = 10.0
RUN_TIMEOUT = 600.0
# A task whose worker died stops heartbeating; the scheduler fails that try after this many seconds
# (Airflow's default is 300) and the retry runs on the surviving worker.
HEARTBEAT_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    name = "trait-lora-celery"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def celery(tmp_path_factory, request, s3_server, bucket):
    workdir = tmp_path_factory.mktemp("celery")
    local_shards = workdir / "upload-once"
    write_shards(local_shards, N_TRAITS, prefix="celery", salt="celery")
    for i in range(1, N_TRAITS, 2):  # both poles of four axes: what the stage-3 intake asks for
        (local_shards / f"celery{i}_plus.jsonl").rename(local_shards / f"celery{i - 1}_minus.jsonl")
    traits = sorted(p.stem for p in local_shards.glob("*.jsonl"))
    client = s3_server.client()
    for path in sorted(local_shards.glob("*.jsonl")):
        client.put_object(Bucket=bucket, Key=f"shards/{path.name}", Body=path.read_bytes())
    dep = LiveDeployment(
        workdir,
        job_seconds=JOB_SECONDS,
        pool_slots=4,
        parallelism=8,
        shards_dir=f"s3://{bucket}/shards",
        output_dir=f"s3://{bucket}/stage2",
        traits=traits,
        poll_seconds=1.0,
        celery_workers=WORKERS,
        worker_concurrency=2,
        extra_env={
            "AIRFLOW_CONN_AWS_DEFAULT": s3_server.connection_json(),
            "AIRFLOW__TRAIT_LORA__STORAGE_ROOTS": json.dumps([f"s3://{bucket}"]),
            "AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": str(N_TRAITS),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # A task message the dead worker had taken but not started leaves its TI queued: requeue
            # it after 30 s instead of Airflow's default 600 s.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
        },
    )
    with dep:
        yield dep
        if request.session.testsfailed:
            dep.print_log_tails()
        print("\n== celery e2e timings ==\n" + dep.timings.table())


def conf_for(dep: LiveDeployment, **extra) -> dict:
    return {"shards_dir": str(dep.shards_dir), "output_dir": str(dep.output_dir), **extra}


def tis(dep: LiveDeployment, run_id: str) -> list[tuple[str, int, str, str | None, int]]:
    """(task, map index, state, hostname, try number) of every task instance of the run."""
    return dep.query(
        "SELECT task_id, map_index, state, hostname, try_number FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
        DAG_ID,
        run_id,
    )


def outputs(dep: LiveDeployment) -> S3Store:
    """The run's output location, read as stage 3 or an operator would: over the S3 API."""
    from tests.support.s3 import S3Server

    loc = parse_location(str(dep.output_dir))
    server = S3Server(json.loads(dep.extra_env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"])
    return S3Store(server.client(), loc.bucket, loc.prefix, location=loc.url)


def task_logs_on(dep: LiveDeployment, worker: str, run_id: str) -> list[str]:
    logs = dep.worker_dir(worker) / "airflow_home" / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    return sorted(str(p.relative_to(logs)) for p in logs.rglob("*.log")) if logs.is_dir() else []


def test_a_run_spreads_over_two_workers_sharing_only_the_outputs(celery):
    before = celery.fake.state()
    response = celery.trigger(conf_for(celery), run_id="celery_first")
    assert response.status_code == 200, response.text
    watch = watch_run(celery, "celery_first", timeout=RUN_TIMEOUT)
    log(f"celery first run: {watch.state} in {watch.wall_s:.1f} s")
    assert watch.state == "success", watch.api

    rows = tis(celery, "celery_first")
    by_host = Counter(host for *_, host, _try in rows)
    log(f"task instances per worker: {dict(by_host)}")
    assert set(by_host) == set(WORKERS), by_host  # every task ran on one of the two, and both worked
    per_trait_tasks = Counter(host for task, _i, _s, host, _t in rows if task.startswith("trait."))
    assert all(per_trait_tasks[w] >= 4 for w in WORKERS), per_trait_tasks
    # Each "machine" wrote the logs of what it ran into its own AIRFLOW_HOME, not a shared one.
    for worker in WORKERS:
        assert task_logs_on(celery, worker, "celery_first"), f"no task log on {worker}"

    state = celery.fake.state()
    assert state["creates"] - before["creates"] == N_TRAITS
    assert state["cancels"] == 0 and not state["bugs"]
    store = outputs(celery)
    mapping = store.read("hypernetwork_data.json").json()
    assert sorted(mapping["traits"]) == sorted(celery.traits)
    for trait, entry in mapping["traits"].items():
        assert entry["adapter_path"] == f"lora_checkpoints/{trait}/{entry['adapter_sha256']}"
        assert store.read(f"{entry['adapter_path']}/adapter_model.safetensors") is not None
    # the "machines" kept their copies and scratch in their own temp folders, nothing in a common one
    copies = {w: list(celery.worker_dir(w).rglob("trait-lora-shards/*/*.jsonl")) for w in WORKERS}
    assert any(copies.values()), copies


def test_a_worker_killed_mid_run_costs_no_second_job_and_no_ledger_entry(celery):
    before = celery.fake.state()
    old_jobs = {j["id"] for j in before["jobs"]}
    victim, survivor = WORKERS
    killed: dict[str, object] = {}

    def kill_when_busy(sample) -> None:
        if killed:
            return
        running = celery.query(
            "SELECT task_id, map_index FROM task_instance WHERE dag_id = %s AND run_id = %s "
            "AND state = 'running' AND hostname = %s AND task_id LIKE 'trait.%%'",
            DAG_ID,
            "celery_forced",
            victim,
        )
        # Best while it runs a launch (the create of a paid job); failing that, any per-trait task
        # once every launch is past.
        launches_done = sample.states.get("trait.launch", {}).get("success", 0) == N_TRAITS
        if any(task == "trait.launch" for task, _ in running) or (running and launches_done):
            celery.stop_component(f"worker-{victim}", signal.SIGKILL)
            killed.update(t=sample.t, running=sorted(running))
            log(f"SIGKILLed worker {victim} at t={sample.t:.1f} s while it ran {sorted(running)}")

    response = celery.trigger(conf_for(celery, force_retrain=True), run_id="celery_forced")
    assert response.status_code == 200, response.text
    started = time.monotonic()
    watch = watch_run(celery, "celery_forced", timeout=RUN_TIMEOUT, interval=0.25, on_sample=kill_when_busy)
    log(f"celery forced run with a worker killed: {watch.state} in {time.monotonic() - started:.1f} s")
    assert killed, "the victim worker never held a running per-trait task"
    assert watch.state == "success", watch.api

    rows = {(task, i): (state, host, tries) for task, i, state, host, tries in tis(celery, "celery_forced")}
    for task, i in killed["running"]:
        state, host, tries = rows[(task, i)]
        # The killed try failed on its heartbeat; the retry ran (and ended) on the survivor.
        assert (state, host) == ("success", survivor) and tries >= 2, (task, i, rows[(task, i)])

    state = celery.fake.state()
    new_jobs = [j for j in state["jobs"] if j["id"] not in old_jobs]
    per_trait = Counter(trait_of_suffix(j["suffix"] or "", celery.traits) for j in new_jobs)
    assert per_trait == Counter({t: 1 for t in celery.traits}), per_trait
    assert state["creates"] - before["creates"] == N_TRAITS
    assert state["cancels"] == 0 and not state["bugs"]

    # The ledger's records parse (never torn) and hold every trait: its new job, and the adapter it
    # installed, which the mapping names.
    store = outputs(celery)
    ledger = Ledger(store)
    jobs, hashes = ledger.jobs(), ledger.hashes()
    mapping = store.read("hypernetwork_data.json").json()
    new_ids = {j["id"] for j in new_jobs}
    assert sorted(jobs) == sorted(hashes) == sorted(mapping["traits"]) == sorted(celery.traits)
    assert {jobs[t]["job_id"] for t in celery.traits} == new_ids, jobs
    assert {mapping["traits"][t]["job_id"] for t in celery.traits} == new_ids
    for trait in celery.traits:
        assert hashes[trait]["adapter_sha256"] == mapping["traits"][trait]["adapter_sha256"], trait
        assert hashes[trait]["adapter_path"] == mapping["traits"][trait]["adapter_path"], trait


def test_the_dashboard_and_the_intake_read_the_bucket(celery):
    """After the runs above: the dashboard's Traits view (api-server) and ``hypernetwork_intake`` (on a
    worker) read the outputs from the bucket; the intake's dataset is published behind its pointer."""
    response = celery.api("GET", f"/trait-lora/api/dags/{DAG_ID}/traits")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["output_dir"] == str(celery.output_dir)  # shown without a connection id
    assert {r["trait"]: r["state"] for r in view["traits"]} == {t: "trained" for t in celery.traits}
    assert sorted(view["mapping"]["traits"]) == sorted(celery.traits)

    celery.unpause("hypernetwork_intake")
    mapping_url = f"{celery.output_dir}/hypernetwork_data.json"
    response = celery.api(
        "POST",
        "/api/v2/dags/hypernetwork_intake/dagRuns",
        json={"logical_date": None, "conf": {"mapping_path": mapping_url}, "dag_run_id": "intake_s3"},
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 180
    state = None
    while time.monotonic() < deadline:
        state = celery.api("GET", "/api/v2/dags/hypernetwork_intake/dagRuns/intake_s3").json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    assert state == "success", state
    store = outputs(celery)
    pointer = store.read("hypernetwork_dataset/current.json").json()
    assert sorted(pointer["traits"]) == sorted(celery.traits)
    index = store.read(pointer["index_file"]).json()
    assert index["num_traits"] == N_TRAITS and store.read(pointer["stack_file"]) is not None
