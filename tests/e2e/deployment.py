"""A real Airflow deployment on loopback, started and stopped from Python (``make e2e`` and the bench).

``LiveDeployment`` starts, each as its own process group:

* PostgreSQL from Debian's packages (installed with ``apt-get`` when ``initdb`` is missing and we are
  root), a private cluster made by ``initdb`` in a temp dir, on a free 127.0.0.1 port, run as the
  ``postgres`` user when we are root (``initdb`` refuses root);
* the fake Together API (``python -m tests.fake_together``), every job taking ``job_seconds``;
* ``scripts/airflow-init.sh`` (``airflow db migrate`` + the ``together_api`` pool with
  ``--include-deferred``), the same script the docker-compose ``airflow-init`` service runs;
* ``airflow api-server``, ``airflow scheduler`` (LocalExecutor), ``airflow dag-processor`` and
  ``airflow triggerer`` with the repository's ``dags/``, SimpleAuthManager with all users admin;
* with ``celery_workers``: Redis from Debian's packages (``redis-server``, installed like PostgreSQL)
  as the broker, CeleryExecutor, and one ``airflow celery worker`` per name, each as a machine of its
  own (working directory, ``HOME``, ``TMPDIR``, ``AIRFLOW_HOME``, reported hostname) sharing only the
  outputs directory.

Everything it starts it stops, on success and on failure: ``stop()`` from ``__exit__``/a fixture
finalizer, an ``atexit`` hook as a safety net, and ``PR_SET_PDEATHSIG`` so a child dies with us even
when we are killed. Logs go to ``<workdir>/logs``; ``print_log_tails()`` shows them after a failure.

This module is the lifecycle only (what starts, in what order, and how all of it stops); the
services, the Airflow config, the API/DB calls and run watching live in their own modules, which
``tests/e2e/live.py`` re-exports.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.airflow_env import airflow_env
from tests.e2e.client import DAG_ID, DeploymentClient
from tests.e2e.procs import REPO, VENV_BIN, Proc, free_port, log, start_proc, tail, wait_for
from tests.e2e.services import FakeProcess, Postgres, Redis


@dataclass
class Timings:
    marks: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.marks[name] = time.monotonic() - start
            log(f"{name}: {self.marks[name]:.1f} s")

    def table(self) -> str:
        width = max((len(k) for k in self.marks), default=10)
        return "\n".join(f"  {name:<{width}}  {secs:7.1f} s" for name, secs in self.marks.items())


class LiveDeployment(DeploymentClient):
    """PostgreSQL + fake Together + Airflow (api-server, scheduler, dag-processor, triggerer)."""

    COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

    def __init__(
        self,
        workdir: Path,
        *,
        job_seconds: float,
        pool_slots: int,
        parallelism: int,
        shards_dir: Path | str,
        output_dir: Path | str,
        poll_seconds: float = 1.0,
        traits: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        celery_workers: tuple[str, ...] = (),
        worker_concurrency: int = 2,
        worker_tuning: bool = True,
        answers: str = "full",
    ) -> None:
        """``celery_workers`` (names) switches the executor to Celery with Redis as the broker and
        starts one ``airflow celery worker`` per name (see ``start_worker``); else LocalExecutor.
        ``worker_tuning=False`` leaves Airflow's defaults for the settings in ``WORKER_TUNING*``.
        ``answers``: the fake's answer shapes ("full" or "spec-minimal", tests/fake_together/shapes.py)."""
        self.workdir = Path(workdir)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "airflow_home"
        self.home.mkdir(exist_ok=True)
        self.job_seconds = job_seconds
        self.pool_slots = pool_slots
        self.parallelism = parallelism
        self.poll_seconds = poll_seconds
        # a folder, or an s3:// URL (then ``traits`` names what the bucket holds)
        self.shards_dir: Any = shards_dir if "://" in str(shards_dir) else Path(shards_dir)
        self.output_dir: Any = output_dir if "://" in str(output_dir) else Path(output_dir)
        self.extra_env = dict(extra_env or {})
        self.celery_workers = tuple(celery_workers)
        self.worker_concurrency = worker_concurrency
        self.worker_tuning = worker_tuning
        self.answers = answers
        self.redis: Redis | None = None
        self.traits: list[str] = sorted(traits or (p.stem for p in Path(shards_dir).glob("*.jsonl")))
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.timings = Timings()
        self.postgres: Postgres | None = None
        self.fake: FakeProcess | None = None
        self.procs: dict[str, Proc] = {}
        self._token: str | None = None
        self._http: httpx.Client | None = None
        self._db: Any = None
        self._stopped = False
        atexit.register(self.stop)

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> LiveDeployment:
        try:
            self.start()
        except BaseException:
            self.print_log_tails()
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        with self.timings.measure("postgres (install check + initdb + start)"):
            self.postgres = Postgres(self.log_dir)
            self.postgres.start()
        if self.celery_workers:
            with self.timings.measure("redis (install check + start)"):
                self.redis = Redis(self.log_dir)
                self.redis.start()
        with self.timings.measure("fake Together start"):
            self.fake = FakeProcess(self.log_dir, self.job_seconds, self.answers)
            self.fake.start()
        self.env = self._airflow_env()
        with self.timings.measure("airflow-init.sh (db migrate + pool)"):
            result = subprocess.run(
                ["bash", str(REPO / "scripts" / "airflow-init.sh")],
                env={**self.env, "AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS": str(self.pool_slots)},
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            (self.log_dir / "airflow-init.log").write_text(result.stdout + result.stderr)
            if result.returncode:
                raise RuntimeError(f"airflow-init.sh failed:\n{tail(self.log_dir / 'airflow-init.log')}")
        with self.timings.measure("airflow components up (api + DAG parsed)"):
            for component in self.COMPONENTS:
                self.start_component(component)
            wait_for("the API server", self._api_ready, timeout=180, interval=1)
            wait_for(f"DAG {DAG_ID} to be parsed", self._dag_ready, timeout=180, interval=1)
            for worker in self.celery_workers:
                self.start_worker(worker)
            if self.celery_workers:
                wait_for("every Celery worker to answer a ping", self._workers_ready, timeout=120, interval=1)
            self.unpause(DAG_ID)
        self.timings.marks["deployment start (total)"] = time.monotonic() - started
        log(f"deployment up in {self.timings.marks['deployment start (total)']:.1f} s at {self.api_url}")

    def start_component(self, component: str) -> Proc:
        argv = [str(VENV_BIN / "airflow"), component]
        if component == "api-server":
            argv += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
        proc = start_proc(component, argv, self.log_dir, env=self.env)
        self.procs[component] = proc
        log(f"started {component} (pid {proc.popen.pid})")
        return proc

    def worker_dir(self, worker: str) -> Path:
        return self.workdir / "machines" / worker

    def start_worker(self, worker: str) -> Proc:
        """``airflow celery worker`` as if on a machine of its own, sharing no folder with the others.

        Its own working directory, ``HOME``, ``TMPDIR`` and ``AIRFLOW_HOME`` (so its logs and any
        scratch file stay on its "machine"), its own Celery node name, and the hostname it reports for
        the task instances it runs (``[core] hostname_callable``): two processes on one host would
        otherwise both report this host's name. The code (the installed package and ``dags/``) and the
        shards are the same on both, as they would be in one image.
        """
        root = self.worker_dir(worker)
        home = root / "home"
        for sub in (home, root / "tmp", root / "airflow_home"):
            sub.mkdir(parents=True, exist_ok=True)
        env = {
            **self.env,
            "HOME": str(home),
            "TMPDIR": str(root / "tmp"),
            "AIRFLOW_HOME": str(root / "airflow_home"),
            "PYTHONPATH": str(REPO),  # for the hostname callable below (a test helper, not product code)
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_host.hostname",
            "TRAIT_LORA_E2E_HOSTNAME": worker,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        }
        argv = [
            str(VENV_BIN / "airflow"),
            "celery",
            "worker",
            "--celery-hostname",
            f"{worker}@e2e",
            "--concurrency",
            str(self.worker_concurrency),
            "--without-gossip",
            "--without-mingle",
        ]
        proc = start_proc(f"worker-{worker}", argv, self.log_dir, env=env, cwd=root)
        self.procs[f"worker-{worker}"] = proc
        log(f"started Celery worker {worker} (pid {proc.popen.pid}) in {root}")
        return proc

    def _workers_ready(self) -> bool:
        """Every worker answers ``celery inspect ping`` (it has connected to the broker)."""
        for worker in self.celery_workers:
            proc = self.procs.get(f"worker-{worker}")
            if proc is not None and not proc.alive:
                raise RuntimeError(
                    f"worker {worker} exited ({proc.popen.returncode}):\n{tail(proc.log_path)}"
                )
        result = subprocess.run(
            [
                str(VENV_BIN / "celery"),
                "--app",
                "airflow.providers.celery.executors.celery_executor.app",
                "inspect",
                "ping",
                "--timeout",
                "3",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=self.workdir,
        )
        return all(f"{w}@e2e" in result.stdout for w in self.celery_workers)

    def stop_component(self, component: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop one component: SIGTERM is a graceful stop; SIGKILL is a crash (kills its process group)."""
        proc = self.procs.pop(component)
        if sig == signal.SIGKILL:
            proc.signal_group(signal.SIGKILL)
            proc.popen.wait(timeout=30)
        else:
            proc.stop_signal = sig
            proc.stop(timeout=timeout)
        log(f"stopped {component} with signal {signal.Signals(sig).name}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        started = time.monotonic()
        if self._http is not None:
            self._http.close()
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
        workers = [name for name in self.procs if name.startswith("worker-")]
        for component in (*workers, "triggerer", "scheduler", "dag-processor", "api-server"):
            proc = self.procs.pop(component, None)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop(timeout=30)
        for service in (self.fake, self.redis, self.postgres):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        log(f"deployment stopped in {time.monotonic() - started:.1f} s")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each service's process tree.

        A tree's total is what its live processes used plus what their reaped children used, so task
        processes (children of LocalExecutor workers, children of the scheduler) count for the scheduler.
        """
        import psutil

        def tree(pid: int) -> float:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return 0.0
            total = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                total += t.user + t.system + t.children_user + t.children_system
            return total

        out = {name: tree(proc.popen.pid) for name, proc in self.procs.items()}
        for name, service in (
            ("postgres", self.postgres),
            ("fake_together", self.fake),
            ("redis", self.redis),
        ):
            proc = getattr(service, "proc", None)
            if proc is not None:
                out[name] = tree(proc.popen.pid)
        return out

    def print_log_tails(self, lines: int = 40) -> None:
        for path in sorted(self.log_dir.glob("*.log")):
            print(f"----- {path.name} (last {lines} lines) -----\n{tail(path, lines)}", flush=True)

    def _airflow_env(self) -> dict[str, str]:
        return airflow_env(self)
