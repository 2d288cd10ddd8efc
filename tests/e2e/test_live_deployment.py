"""Live end-to-end test: a real Airflow (PostgreSQL, LocalExecutor, api-server, scheduler, dag-processor,
triggerer) runs ``trait_lora_together`` against the fake Together API in its own process.

What only a live deployment can show (``dag.test()`` runs triggers inline, one at a time):

* the per-trait ``wait`` sensors (not ``launch``, which ends once its job exists) reach ``deferred`` while
  Together trains and hold no worker slot: more of them are deferred at once than the executor has
  slots, each labelled with its trait (not its map index) while deferred;
* the cap on jobs in flight (``[trait_lora] max_jobs_in_flight``, counted in the ledger before each create)
  holds: the fake's exact peak of concurrent jobs never exceeds it, though there are more traits;
* a run triggered through the REST API finishes, writes ``hypernetwork_data.json`` and records an
  Asset event; the API serves the trigger form's params and refuses a bad conf with HTTP 400;
* the dashboard in a real browser: headless Chromium logs in to the UI, opens the Traits tab and the
  run's Training summary tab, sees every trait with its state and figures and a loaded loss chart, and
  leaves screenshots in ``e2e-artefacts/``; ``airflow plugins`` lists the plugin;
* a forced backfill of three runs (``POST /api/v2/backfills``, the real scheduler) creates exactly one
  Together job per trait: every run of one backfill shares the forced job key;
* a forced retrain survives the triggerer being stopped (SIGTERM) and crashing (SIGKILL) mid-wait:
  the run completes with exactly one new Together job per trait and no job cancelled;
* ``trait_lora_kubernetes`` against the fake Kubernetes API (``tests/fake_kubernetes``, a stub trainer
  image): its deferred pods hold no worker slot, so only ``[trait_lora] k8s_max_pods`` bounds them, and
  the API's own history never has more pods running than that while 8 traits wait for a GPU.

Skipped by ``make test`` (marker ``e2e``); run with ``make e2e``. Prints its timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.browser import chromium_session, open_plugin_tab, read_trigger_form, screenshot
from tests.e2e.live import (
    DAG_ID,
    REPO,
    VENV_BIN,
    LiveDeployment,
    RunWatch,
    Sample,
    describe,
    log,
    trait_of_suffix,
    wait_for,
    watch_run,
    write_shards,
)
from tests.e2e.shards import write_shards as write_pod_shards
from tests.fake_kubernetes import FakeKubernetes
from tests.support import tracking
from tests.support.k8s_cluster import STUB_IMAGE, gpu_cluster, pod_clock, settings_env, stub_image
from trait_lora.core.handoff.runs import run_dir

pytestmark = pytest.mark.e2e

N_TRAITS = 8  # more traits than worker slots and than the cap
PARALLELISM = 4  # LocalExecutor worker slots
POOL_SLOTS = 6  # together_api: paces the launches (submissions) only
CAP = 6  # jobs in flight: > PARALLELISM (so deferral is visible), < N_TRAITS (so the cap binds)
JOB_SECONDS = 20.0  # every fake Together job takes this long
POLL_SECONDS = 1.0
RUN_TIMEOUT = 600.0

K8S_DAG = "trait_lora_kubernetes"
K8S_MAX_PODS = 3  # [trait_lora] k8s_max_pods: < PARALLELISM, so the executor is not what bounds pods
POD_SECONDS = 12.0  # what every stub trainer pod takes

TIMINGS: dict[str, float] = {}
# Screenshots of the dashboard (kept after the run, for a person to look at).
ARTEFACTS = Path(os.environ.get("TRAIT_LORA_E2E_ARTEFACTS") or REPO / "e2e-artefacts")


class Kube(NamedTuple):
    fake: FakeKubernetes
    data: Path  # the PVC's folder (also its mount path in the pods)
    traits: list[str]


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    """The fake Kubernetes API of the deployment: a GPU node with a GPU per trait (the cluster is not
    what bounds the pods), the data PVC holding N_TRAITS shards, and the stub trainer image."""
    workdir = tmp_path_factory.mktemp("kube")
    data = workdir / "data"
    with FakeKubernetes() as fake:
        gpu_cluster(fake, data, gpus=N_TRAITS)
        traits = write_pod_shards(data / "shards", N_TRAITS, prefix="pod")
        steps = 16
        stub_image(
            fake,
            workdir / "image",
            {t: {"steps": steps, "step_seconds": POD_SECONDS / steps} for t in traits},
        )
        yield Kube(fake, data, traits)
        problems = fake.self_check()
    assert not fake.bugs and not problems, (fake.bugs, problems)


@pytest.fixture(scope="module")
def live(tmp_path_factory, request, kube):
    workdir = tmp_path_factory.mktemp("live")
    shards = workdir / "shards"
    write_shards(shards, N_TRAITS)
    dep = LiveDeployment(
        workdir,
        answers="spec-minimal",  # the least Together promises; the Celery e2e runs the full answers
        job_seconds=JOB_SECONDS,
        pool_slots=POOL_SLOTS,
        parallelism=PARALLELISM,
        shards_dir=shards,
        output_dir=workdir / "outputs",
        poll_seconds=POLL_SECONDS,
        extra_env={
            "AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": str(CAP),
            # OpenLineage to a file, as a deployment points it at Marquez (every process appends)
            **{k: v for k, v in tracking.tracking_env(workdir).items() if "OPENLINEAGE" in k},
            # trait_lora_kubernetes on the fake API: its PVC, the stub image, at most K8S_MAX_PODS pods
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(kube.fake.airflow_connection()),
            "AIRFLOW__TRAIT_LORA__STORAGE_ROOTS": json.dumps([str(kube.data)]),
            **settings_env(kube.data, trainer_image=STUB_IMAGE, k8s_max_pods=K8S_MAX_PODS),
        },
    )
    started = time.monotonic()
    try:
        with dep:
            yield dep
            if request.session.testsfailed:
                dep.print_log_tails()
    finally:
        TIMINGS["total (start to stop)"] = time.monotonic() - started
        dep.timings.marks.update(TIMINGS)
        print("\n== e2e timings ==\n" + dep.timings.table())


def conf_for(dep: LiveDeployment, **extra) -> dict:
    return {"shards_dir": str(dep.shards_dir), "output_dir": str(dep.output_dir), **extra}


def finish_and_report(dep: LiveDeployment, run_id: str, label: str, on_sample=None) -> RunWatch:
    last_print = [0.0]

    def sample_hook(sample: Sample) -> None:
        if sample.t - last_print[0] >= 5:
            last_print[0] = sample.t
            log(describe(sample))
        if on_sample is not None:
            on_sample(sample)

    watch = watch_run(dep, run_id, timeout=RUN_TIMEOUT, on_sample=sample_hook)
    TIMINGS[f"{label}: trigger to {watch.state}"] = watch.wall_s
    log(
        f"{label}: {watch.state} in {watch.wall_s:.1f} s; peak deferred tasks {watch.max_deferred}, "
        f"peak jobs in flight (polled) {watch.max_fake_active}"
    )
    return watch


def test_api_serves_trait_options_and_refuses_bad_conf(live):
    details = live.api("GET", f"/api/v2/dags/{DAG_ID}/details")
    assert details.status_code == 200, details.text
    traits_param = details.json()["params"]["traits"]
    assert traits_param["schema"]["items"]["enum"] == sorted(live.traits)
    assert traits_param["schema"]["examples"] == sorted(live.traits)

    outside = {"output_dir": "/etc/trait-lora"}  # not in [trait_lora] storage_roots
    for bad in (
        {"traits": ["../etc_plus"]},
        {"traits": ["no_such_trait_plus"]},
        {"learning_rate": 3},
        outside,
    ):
        response = live.trigger(bad)
        assert response.status_code == 400, (bad, response.status_code, response.text)
    runs = live.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns").json()
    assert runs["total_entries"] == 0, "a refused conf must not create a run"


def test_run_defers_waits_and_the_cap_bounds_jobs_in_flight(live):
    before = live.fake.state()
    response = live.trigger(conf_for(live), run_id="e2e_first")
    assert response.status_code == 200, response.text
    pool_seen: list[dict] = []
    labels_seen: list[tuple[str, int, str | None]] = []
    deferred_while_training: Counter[str] = Counter()

    def check(sample: Sample) -> None:
        if len(pool_seen) < sample.t / 2:  # the API, every ~2 s
            pool_seen.append(live.pool())
        labels_seen.extend(live.deferred_labels("e2e_first"))
        if sample.mid_training_jobs:
            for task, counts in sample.states.items():
                deferred_while_training[task] = max(deferred_while_training[task], counts.get("deferred", 0))

    watch = finish_and_report(live, "e2e_first", "first run", check)
    assert watch.state == "success", watch.api

    # The sensor is what waits: more wait tasks deferred at once than the executor has slots...
    peak_wait = max(s.states.get("trait.wait", {}).get("deferred", 0) for s in watch.samples)
    assert peak_wait > PARALLELISM, f"peak deferred waits {peak_wait} <= {PARALLELISM} slots"
    # ...while launch ends once its job exists: deferred, if ever, only at the cap (N - CAP traits).
    peak_launch = max(s.states.get("trait.launch", {}).get("deferred", 0) for s in watch.samples)
    assert peak_launch <= N_TRAITS - CAP, peak_launch
    log(f"deferred while training (peak per task): {dict(deferred_while_training)}")
    assert deferred_while_training["trait.wait"] >= deferred_while_training["trait.launch"]
    # Deferred mapped tasks show their trait, not their index, while they wait.
    traits = live.mapped_traits("e2e_first")
    waits = {(i, label) for task, i, label in labels_seen if task == "trait.wait"}
    assert waits and all(label == traits[i] for i, label in waits), sorted(waits)
    # The cap bounds Together jobs in flight: the exact peak (from job intervals) and every poll.
    state = live.fake.state()
    assert state["max_active"] <= CAP, state["max_active"]
    assert watch.max_fake_active <= CAP
    assert state["max_active"] > PARALLELISM  # and it did run that many at once
    assert max(p["occupied_slots"] for p in pool_seen) <= POOL_SLOTS
    assert state["creates"] - before["creates"] == N_TRAITS
    assert state["cancels"] == 0 and not state["bugs"]

    mapping = json.loads((live.output_dir / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == sorted(live.traits)
    assert mapping["failed"] == {}
    for entry in mapping["traits"].values():
        assert (live.output_dir / entry["adapter_path"] / "adapter_model.safetensors").is_file()

    events = live.api(
        "GET", "/api/v2/assets/events", params={"source_dag_id": DAG_ID, "source_run_id": "e2e_first"}
    ).json()
    assert events["total_entries"] == 1, events
    event = events["asset_events"][0]
    assert event["source_task_id"] == "publish_mapping"
    assert event["extra"]["num_traits"] == N_TRAITS
    assert sorted(event["extra"]["trained"]) == sorted(live.traits)

    # While Together trains, a trait holds no worker slot (a poke-mode sensor would hold one each).
    mid = watch.mid_training
    assert len(mid) >= 5, "too few samples with a job mid-training to judge"
    held = max(s.mid_training_slots for s in mid)
    log(
        f"{len(mid)} samples with jobs mid-training (up to {max(s.mid_training_jobs for s in mid)} at once): "
        f"worker slots held by those traits max {held}; "
        f"pool peak occupied {max(p['occupied_slots'] for p in pool_seen)}/{POOL_SLOTS}, "
        f"peak jobs in flight {state['max_active']} (cap {CAP})"
    )
    # A wait task runs briefly when it starts (before it defers) and when its trigger fires; on a
    # loaded machine its start can lag its launch by more than MID_TRAINING_AFTER (the launches that
    # poll at the cap fill the slots), so a few samples catch waits not yet deferred. A poke-mode
    # sensor would hold one slot per trait mid-training in every sample (ratio 1, no sample at 0), so:
    # at least half the samples hold none, and the slots held stay under a quarter of the jobs
    # mid-training (measured: 0.09-0.12 with 11-27% of samples busy on a loaded 2-core machine).
    busy = [s for s in mid if s.mid_training_slots]
    ratio = sum(s.mid_training_slots for s in mid) / sum(s.mid_training_jobs for s in mid)
    log(f"mid-training samples holding a slot: {len(busy)}/{len(mid)}; slots/jobs ratio {ratio:.3f}")
    assert len(busy) <= len(mid) // 2 and ratio <= 0.25, [describe(s) for s in busy]


def test_lineage_events_join_each_shard_through_its_job_to_the_mapping(live):
    """What Marquez would draw from the first run's OpenLineage events, emitted by the workers of a
    real deployment: shard -> Together file -> job -> adapter -> hypernetwork_data.json per trait."""
    events = tracking.lineage_events(live.workdir / "lineage.jsonl")
    graph = tracking.edges(events)
    mapping = json.loads((live.output_dir / "hypernetwork_data.json").read_text())
    target = ("file", str((live.output_dir / "hypernetwork_data.json").resolve()))
    downloads = {tracking.facet(e).get("trait"): e for e in tracking.completed(events, "download")}
    for trait, entry in mapping["traits"].items():
        shard = ("file", str((live.shards_dir / f"{trait}.jsonl").resolve()))
        adapter = ("file", str((live.output_dir / entry["adapter_path"]).resolve()))
        assert tracking.reaches(graph, shard, adapter), f"{trait}: no lineage from its shard to its adapter"
        assert target in graph[adapter], f"{trait}: its adapter does not feed the mapping"
        assert tracking.facet(downloads[trait])["job_id"] == entry["job_id"]
    log(f"lineage: {len(events)} OpenLineage events, {len(graph)} datasets with outputs")


def test_the_dashboard_in_a_real_browser(live):
    """Headless Chromium logs in to the live UI, opens the Traits tab and the first run's Training
    summary tab, and sees every trait, its state and figures, and a loaded loss chart; then opens the
    trigger form and sees every param with its title and help text in its section."""
    plugins = live.api("GET", "/api/v2/plugins").json()["plugins"]
    ours = [p for p in plugins if p["name"] == "trait_lora"]
    assert len(ours) == 1, [p["name"] for p in plugins]
    assert {v["name"] for v in ours[0]["external_views"]} == {"Traits", "Training summary"}
    listed = subprocess.run(
        [str(VENV_BIN / "airflow"), "plugins", "-o", "json"], env=live.env, capture_output=True, text=True
    )
    assert listed.returncode == 0 and '"trait_lora"' in listed.stdout, listed.stderr[-2000:]

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_session(width=1280) as driver:  # a laptop screen: the tabs must fit it
        traits = open_plugin_tab(
            driver, f"{live.api_url}/dags/{DAG_ID}/plugin/trait-lora-traits", ready_text="Traits of"
        )
        shot_traits = screenshot(driver, ARTEFACTS / "traits_tab.png")
        summary = open_plugin_tab(
            driver,
            f"{live.api_url}/dags/{DAG_ID}/runs/e2e_first/plugin/trait-lora-summary",
            ready_text="Training summary of",
        )
        shot_summary = screenshot(driver, ARTEFACTS / "training_summary_tab.png")
        params = live.api("GET", f"/api/v2/dags/{DAG_ID}/details").json()["params"]
        sections = sorted({param["schema"]["section"] for param in params.values()})
        form = read_trigger_form(driver, f"{live.api_url}/dags/{DAG_ID}", sections)
        shot_form = screenshot(driver, ARTEFACTS / "trigger_form.png")
    log(f"screenshots: {shot_traits} (Traits tab), {shot_summary} (Training summary of e2e_first)")
    log(f"screenshot: {shot_form} (trigger form, every section open)")

    # The trigger form draws every param with its title and its help text.
    missing = [
        name
        for name, param in params.items()
        if param["schema"]["title"] not in form or (param.get("description") or "")[:40] not in form
    ]
    assert not missing, (missing, form[:3000])

    mapping = json.loads((live.output_dir / "hypernetwork_data.json").read_text())
    for trait in live.traits:
        assert trait in traits["text"] and trait in summary["text"]
        assert mapping["traits"][trait]["adapter_sha256"][:12] in traits["text"]
    assert traits["text"].count("trained") >= len(live.traits)
    assert f"{len(live.traits)} trait(s): {len(live.traits)} trained" in traits["text"]
    assert "in flight: 0" in traits["text"] and "spend: $" in traits["text"]
    assert f"{len(live.traits)} trained" in summary["text"]
    for view in (traits, summary):
        assert view["overflow"] <= 0, (
            f"the tab scrolls sideways at 1,280 px: {view['scroll']} > {view['client']}"
        )
        assert "=-" not in view["text"]  # figures in words, not a key=value dump
        assert view["images"], "no loss chart on the page"
        assert all(i["complete"] and i["naturalWidth"] > 0 for i in view["images"]), view["images"]
    assert shot_traits.stat().st_size > 10_000 and shot_summary.stat().st_size > 10_000


def test_forced_rerun_survives_triggerer_stop_and_crash(live):
    before = live.fake.state()
    old_jobs = {j["id"] for j in before["jobs"]}
    kills: list[tuple[str, float]] = []

    def chaos(sample: Sample) -> None:
        launch = sample.states.get("trait.launch", {})
        launched = launch.get("deferred", 0) + launch.get("success", 0)
        if not kills and sample.deferred >= 3:
            # A rolling restart: SIGTERM, the triggerer shuts down cleanly (its triggers are cancelled,
            # which must NOT cancel the Together jobs), a new one adopts the triggers.
            live.stop_component("triggerer", signal.SIGTERM)
            kills.append(("SIGTERM", sample.t))
            time.sleep(2)
            live.start_component("triggerer")
        elif len(kills) == 1 and launched == N_TRAITS and sample.deferred >= 1:
            # A crash: SIGKILL to the whole process group. The triggers are reassigned once the dead
            # triggerer's heartbeat is older than triggerer_health_check_threshold (10 s here).
            live.stop_component("triggerer", signal.SIGKILL)
            kills.append(("SIGKILL", sample.t))
            time.sleep(2)
            live.start_component("triggerer")

    response = live.trigger(conf_for(live, force_retrain=True), run_id="e2e_forced")
    assert response.status_code == 200, response.text
    watch = finish_and_report(live, "e2e_forced", "forced run (triggerer restarts)", chaos)
    log(f"triggerer kills: {kills}")
    assert [k for k, _ in kills] == ["SIGTERM", "SIGKILL"], kills
    assert watch.state == "success", watch.api

    state = live.fake.state()
    new_jobs = [j for j in state["jobs"] if j["id"] not in old_jobs]
    per_trait = Counter(trait_of_suffix(j["suffix"] or "", live.traits) for j in new_jobs)
    assert per_trait == Counter({t: 1 for t in live.traits}), per_trait
    assert state["creates"] - before["creates"] == N_TRAITS
    assert state["cancels"] == 0, "a triggerer restart cancelled a Together job"
    assert state["max_active"] <= CAP
    assert not state["bugs"]

    mapping = json.loads((live.output_dir / "hypernetwork_data.json").read_text())
    new_ids = {j["id"] for j in new_jobs}
    assert {entry["job_id"] for entry in mapping["traits"].values()} == new_ids
    events = live.api(
        "GET", "/api/v2/assets/events", params={"source_dag_id": DAG_ID, "source_run_id": "e2e_forced"}
    ).json()
    assert events["total_entries"] == 1


def test_logs_show_deferral_in_the_triggerer(live):
    """The restarted triggerers really ran our trigger (its classpath imports in the triggerer)."""
    logs = Path(live.home) / "logs"
    trigger_logs = list(logs.rglob("*.trigger.*.log"))
    assert trigger_logs, "no trigger log written"
    text = "\n".join(p.read_text(errors="replace") for p in trigger_logs)
    assert "is completed" in text


def test_kubernetes_pods_never_outnumber_k8s_max_pods(live, kube):
    """Eight traits, one GPU pod each, on a cluster with a GPU per trait and an executor with free
    slots (a deferred pod holds none): the scheduler keeps k8s_max_pods pod tasks active and the rest
    waiting, and the API's history never has more than k8s_max_pods pods running. Prints the seconds
    from trigger to the first pod running."""
    live.unpause(K8S_DAG)
    conf = {"shards_dir": str(kube.data / "shards"), "output_dir": str(kube.data / "out")}
    conf["base_model"] = "/models/llama-3.1-8b"  # in the model cache: no Hub token needed
    active_sql = (
        "SELECT count(*) FILTER (WHERE state IN ('queued', 'running', 'deferred')), "
        "count(*) FILTER (WHERE state IS NULL OR state = 'scheduled') FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s AND task_id = 'trait.train_pod' AND map_index >= 0"
    )
    peaks = {"active": 0, "active_while_others_wait": 0}
    with pod_clock(kube.fake) as clock:
        began = time.monotonic()
        response = live.api(
            "POST", f"/api/v2/dags/{K8S_DAG}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        state = None
        while state not in ("success", "failed") and time.monotonic() - began < RUN_TIMEOUT:
            time.sleep(0.5)
            active, waiting = live.query(active_sql, K8S_DAG, run_id)[0]
            peaks["active"] = max(peaks["active"], active)
            if waiting:
                peaks["active_while_others_wait"] = max(peaks["active_while_others_wait"], active)
            state = live.api("GET", f"/api/v2/dags/{K8S_DAG}/dagRuns/{run_id}").json()["state"]
        wall = time.monotonic() - began
    live.api("PATCH", f"/api/v2/dags/{K8S_DAG}", json={"is_paused": True}).raise_for_status()
    stats = kube.fake.stats
    TIMINGS[f"kubernetes run ({N_TRAITS} traits, {K8S_MAX_PODS} pods at most): trigger to {state}"] = wall
    TIMINGS["kubernetes run: trigger to first pod running"] = clock.first_running - began
    log(
        f"kubernetes run: {state} in {wall:.1f} s; pods running at once peak {stats.max_pods_running}, "
        f"pod tasks active at once peak {peaks['active']} ({peaks['active_while_others_wait']} while "
        f"others waited), k8s_max_pods {K8S_MAX_PODS}; first pod running "
        f"{clock.first_running - began:.1f} s after the trigger; pods ran {clock.running_seconds():.1f} s "
        f"in all ({N_TRAITS} x {POD_SECONDS:.0f} s of stub training); the bound's slots spent "
        f"{(wall * K8S_MAX_PODS - clock.running_seconds()) / N_TRAITS:.1f} s per trait not training"
    )
    assert state == "success"
    # the bound binds (pod tasks waited while K8S_MAX_PODS were active) and holds, for tasks and pods
    assert peaks["active_while_others_wait"] == peaks["active"] == K8S_MAX_PODS, peaks
    assert 2 <= stats.max_pods_running <= K8S_MAX_PODS, stats
    assert stats.max_pods_active <= K8S_MAX_PODS, stats  # nor a pod holding a node's GPU beyond it
    assert kube.fake.created_per_label("trait") == Counter({t.replace("_", "-"): 1 for t in kube.traits})
    mapping = json.loads((kube.data / "out" / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == sorted(kube.traits) and mapping["failed"] == {}


def test_a_forced_backfill_of_three_runs_pays_once_per_trait(live):
    """`POST /api/v2/backfills` with force_retrain over three days, through the real scheduler: the first
    run creates one job per trait, the other two find the adapters their backfill already bought."""
    # Backfills need a periodic schedule: the DAG processor re-parses the file with a daily one. (The
    # scheduled run this queues for the latest day trains nothing: every shard is unchanged.)
    mapping = json.loads((live.output_dir / "hypernetwork_data.json").read_text())
    assert sorted(mapping["traits"]) == sorted(live.traits), "runs after the earlier tests' adapters"
    live.env["AIRFLOW__TRAIT_LORA__SCHEDULE"] = "@daily"
    live.stop_component("dag-processor")
    live.start_component("dag-processor")

    def periodic() -> bool:
        summary = live.api("GET", f"/api/v2/dags/{DAG_ID}").json().get("timetable_summary")
        return summary not in (None, "", "None")

    wait_for("the DAG to be re-parsed with a daily schedule", periodic, timeout=180, interval=2)
    before = live.fake.state()
    old_jobs = {j["id"] for j in before["jobs"]}
    body = {
        "dag_id": DAG_ID,
        "from_date": "2026-11-20T00:00:00Z",
        "to_date": "2026-11-22T00:00:00Z",
        "dag_run_conf": conf_for(live, force_retrain=True),
        "max_active_runs": 1,
    }
    dry = live.api("POST", "/api/v2/backfills/dry_run", json=body)
    assert dry.status_code == 200, dry.text
    assert dry.json()["total_entries"] == 3, dry.json()
    started = time.monotonic()
    created = live.api("POST", "/api/v2/backfills", json=body)
    assert created.status_code == 200, created.text
    backfill_id = created.json()["id"]

    def backfill_runs() -> list[dict]:
        runs = live.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100}).json()["dag_runs"]
        return [r for r in runs if r["run_type"] == "backfill"]

    def finished() -> list[dict] | None:
        runs = backfill_runs()
        if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        return None

    runs = wait_for("the backfill's 3 runs to finish", finished, timeout=RUN_TIMEOUT, interval=2)
    TIMINGS["forced backfill (3 runs): create to done"] = time.monotonic() - started
    assert [r["state"] for r in runs] == ["success"] * 3, runs
    state = live.fake.state()
    new_jobs = [j for j in state["jobs"] if j["id"] not in old_jobs]
    per_trait = Counter(trait_of_suffix(j["suffix"] or "", live.traits) for j in new_jobs)
    assert per_trait == Counter({t: 1 for t in live.traits}), per_trait
    assert state["creates"] - before["creates"] == N_TRAITS
    actions = []
    for run in sorted(runs, key=lambda r: r["logical_date"]):
        summary = json.loads((run_dir(live.output_dir, run["dag_run_id"]) / "summary.json").read_text())
        actions.append(summary["counts"])
    log(f"backfill {backfill_id}: per-run counts {actions}")
    assert actions[0] == {"trained": N_TRAITS}, actions
    assert actions[1:] == [{"skipped": N_TRAITS}] * 2, actions
