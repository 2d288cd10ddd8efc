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
when we are killed. Logs go to ``<workdir>/logs``; ``log_tails()`` shows them after a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DAG_ID = "trait_lora_together"
POOL = "together_api"


def log(message: str) -> None:
    print(f"[live {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # not up yet
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


def _die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """preexec_fn: the child gets ``sig`` when this process dies (Linux prctl PR_SET_PDEATHSIG)."""

    def preexec() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig, 0, 0, 0)

    return preexec


# --------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------


def write_shards(
    dest: Path, count: int, *, prefix: str = "axis", examples: int = 4, salt: str = ""
) -> list[str]:
    """``count`` small valid chat shards ``<prefix><i>_plus.jsonl``; every shard's bytes differ.

    Distinct bytes matter: the job key is (shard content, config), so two identical shards would be
    one job (the second trait adopts the first one's job), which is right in production and wrong here.
    ``salt`` makes the bytes differ from another set with the same trait names (another benchmark run).
    """
    dest.mkdir(parents=True, exist_ok=True)
    traits = []
    for i in range(count):
        trait = f"{prefix}{i}_plus"
        lines = [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {j} ({trait}{salt}): plan my week?"},
                        {
                            "role": "assistant",
                            "content": f"Answer {j} in the voice of {trait}: start with what matters most.",
                        },
                    ]
                }
            )
            for j in range(examples)
        ]
        (dest / f"{trait}.jsonl").write_text("\n".join(lines) + "\n")
        traits.append(trait)
    return traits


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop signal to the whole process group, then SIGKILL to the group if it lingers."""
        if self.alive:
            self.signal_group(self.stop_signal)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored signal {self.stop_signal} for {timeout:.0f} s: SIGKILL")
        # Children (task processes, uvicorn workers) may outlive the leader: sweep the group.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


def start_proc(
    name: str,
    argv: list[str],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
    stdout: int | None = None,
) -> Proc:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as fh:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else fh,
            stderr=fh,
            start_new_session=True,  # own process group: stop() reaches its children too
            user=user,
            preexec_fn=_die_with_parent(stop_signal),
        )
    return Proc(name, popen, log_path, stop_signal)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def find_pg_bin() -> Path | None:
    """The directory holding initdb and postgres: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        bin_dir = Path(found).resolve().parent
        if (bin_dir / "postgres").exists():
            return bin_dir
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def apt_install(*packages: str, what: str) -> None:
    """Install Debian packages the e2e needs (CI is a fresh root machine); say how when we cannot."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(
            f"{what} is not installed and this process cannot install it: "
            f"run `apt-get install -y {' '.join(packages)}` (Debian/Ubuntu) and retry"
        )
    log(f"{what} missing: apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env
    )


def ensure_pg_bin() -> Path:
    bin_dir = find_pg_bin()
    if bin_dir is not None:
        return bin_dir
    apt_install("postgresql", what="PostgreSQL (initdb)")
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("apt-get installed postgresql but no initdb was found under /usr/lib/postgresql")
    return bin_dir


class Postgres:
    """A private PostgreSQL cluster in a temp dir, on a free loopback port, for one test session."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.bin_dir = ensure_pg_bin()
        self.user = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.user = "postgres" if _user_exists("postgres") else "nobody"
        self.root = Path(tempfile.mkdtemp(prefix="trait-lora-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def dsn(self, dbname: str = "airflow") -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": "airflow", "dbname": dbname}

    def start(self) -> None:
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        os.chmod(self.root, 0o700)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "airflow",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            user=self.user,
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        self.proc = start_proc(
            "postgres",
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            self.log_dir,
            env=env,
            cwd=self.root,
            user=self.user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: no waiting for clients to disconnect
        )
        import psycopg2

        def ready() -> bool:
            if not self.proc or not self.proc.alive:
                raise RuntimeError("postgres exited:\n" + tail(self.proc.log_path if self.proc else Path()))
            psycopg2.connect(**self.dsn("postgres"), connect_timeout=2).close()
            return True

        wait_for("PostgreSQL to accept connections", ready, timeout=60)
        conn = psycopg2.connect(**self.dsn("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=20)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Redis (the Celery broker)
# --------------------------------------------------------------------------------------------------


def ensure_redis_server() -> str:
    """``redis-server`` on PATH, installed from Debian's packages when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt_install("redis-server", what="Redis (redis-server)")
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("apt-get installed redis-server but it is not on PATH")
    return found


class Redis:
    """A private, non-persistent Redis on a free loopback port: the Celery broker of one session."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.binary = ensure_redis_server()
        self.root = Path(tempfile.mkdtemp(prefix="trait-lora-redis-"))
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_proc(
            "redis",
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--protected-mode",
                "no",
            ],
            self.log_dir,
            cwd=self.root,
        )

        def ready() -> bool:
            if not self.proc or not self.proc.alive:
                raise RuntimeError(
                    "redis-server exited:\n" + tail(self.proc.log_path if self.proc else Path())
                )
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        wait_for("Redis to answer PING", ready, timeout=30, interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The fake Together server (own process)
# --------------------------------------------------------------------------------------------------


class FakeProcess:
    """``python -m tests.fake_together`` as a process; ``state()`` reads its ``/_fake/state``."""

    def __init__(self, log_dir: Path, job_seconds: float, answers: str = "full") -> None:
        self.log_dir = log_dir
        self.job_seconds = job_seconds
        self.answers = answers
        self.proc: Proc | None = None
        self.base_url = ""
        self.api_key = ""

    def start(self) -> None:
        self.proc = start_proc(
            "fake_together",
            [
                sys.executable,
                "-m",
                "tests.fake_together",
                "--job-seconds",
                str(self.job_seconds),
                "--answers",
                self.answers,
            ],
            self.log_dir,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
        )
        assert self.proc.popen.stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.popen.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=60)
        if not line or not line[0]:
            raise RuntimeError("the fake Together server did not start:\n" + tail(self.proc.log_path))
        info = json.loads(line[0])
        self.base_url, self.api_key = info["base_url"], info["api_key"]

    def state(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.base_url}/_fake/state", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None


# --------------------------------------------------------------------------------------------------
# The deployment
# --------------------------------------------------------------------------------------------------


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


# Worker settings of the shipped deployment (docker-compose.yaml, docs/operations.md section 4), so the
# e2e and the benches measure what users run; tests/deploy/test_compose.py holds compose to them. Why each
# one: docs/decisions.md "Worker tuning".
WORKER_TUNING = {
    # A task process that closes its sockets before it can be reaped leaves Airflow's supervisor asleep
    # in select() for min_heartbeat_interval (default 5 s) holding the worker slot: 1 s bounds that.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
}
WORKER_TUNING_CELERY = {
    # The Together SDK and our task modules imported once per worker, not once per task try.
    "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "trait_lora.provider.celery_config.CELERY_CONFIG",
}
WORKER_TUNING_LOCAL = {
    # The same for LocalExecutor: its workers fork from a server that imported them.
    "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
    "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "trait_lora.provider.worker_preload",
}


class LiveDeployment:
    """PostgreSQL + fake Together + Airflow (api-server, scheduler, dag-processor, triggerer)."""

    COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

    def __init__(
        self,
        workdir: Path,
        *,
        job_seconds: float,
        pool_slots: int,
        parallelism: int,
        shards_dir: Path,
        output_dir: Path,
        poll_seconds: float = 1.0,
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
        self.shards_dir = Path(shards_dir)
        self.output_dir = Path(output_dir)
        self.extra_env = dict(extra_env or {})
        self.celery_workers = tuple(celery_workers)
        self.worker_concurrency = worker_concurrency
        self.worker_tuning = worker_tuning
        self.answers = answers
        self.redis: Redis | None = None
        self.traits: list[str] = sorted(p.stem for p in self.shards_dir.glob("*.jsonl"))
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
        """``airflow celery worker`` as if on a machine of its own, sharing only the outputs volume.

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
        assert self.postgres is not None and self.fake is not None
        from cryptography.fernet import Fernet

        ours = ("AIRFLOW", "TRAIT_LORA_", "TOGETHER_")  # nothing of the caller's config leaks in
        base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        env = {
            **base,
            "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if self.celery_workers else "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1024",
            # Paused at creation: only the DAG under test is unpaused (other DAG files in dags/ stay idle).
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # The scheduler (LocalExecutor) and the triggerer serve task logs on fixed ports by default
            # (8793, 8794): free ports let two deployments (or a developer's Airflow) coexist.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW_CONN_TOGETHER_DEFAULT": json.dumps(
                {"conn_type": "together", "host": self.fake.base_url, "password": self.fake.api_key}
            ),
            "AIRFLOW__TRAIT_LORA__SHARDS_DIR": str(self.shards_dir),
            "AIRFLOW__TRAIT_LORA__OUTPUT_DIR": str(self.output_dir),
            "AIRFLOW__TRAIT_LORA__SCHEDULE": "none",
            "AIRFLOW__TRAIT_LORA__POLL_SECONDS": str(self.poll_seconds),
            "AIRFLOW__TRAIT_LORA__STAGGER_SECONDS": "0",
            "AIRFLOW__TRAIT_LORA__RETRY_DELAY_SECONDS": "2",
        }
        if self.redis is not None:
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.postgres.url.replace("+psycopg2", ""),
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                }
            )
        if self.worker_tuning:
            env.update(WORKER_TUNING)
            env.update(WORKER_TUNING_CELERY if self.celery_workers else WORKER_TUNING_LOCAL)
        env.update(self.extra_env)
        return env

    # -- REST API ---------------------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.api_url, timeout=60)
        return self._http

    def token(self, refresh: bool = False) -> str:
        """A JWT from SimpleAuthManager: with all users admin, ``GET /auth/token`` needs no credentials."""
        if self._token is None or refresh:
            response = self.http.get("/auth/token")
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code == 401:  # token expired: once more with a new one
            headers["Authorization"] = f"Bearer {self.token(refresh=True)}"
            response = self.http.request(method, path, headers=headers, **kwargs)
        return response

    def _api_ready(self) -> bool:
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            proc = self.procs.get(name)
            if proc is not None and not proc.alive:
                raise RuntimeError(f"{name} exited ({proc.popen.returncode}):\n{tail(proc.log_path)}")
        return self.http.get("/api/v2/version", timeout=5).status_code == 200

    def _dag_ready(self) -> bool:
        self._api_ready()
        response = self.api("GET", f"/api/v2/dags/{DAG_ID}")
        if response.status_code == 200:
            return True
        errors = self.api("GET", "/api/v2/importErrors").json().get("import_errors", [])
        mine = [e for e in errors if DAG_ID.replace("trait_lora_", "") in e.get("filename", "")]
        if mine:
            raise RuntimeError(f"the DAG file failed to import: {mine}")
        return False

    def unpause(self, dag_id: str) -> None:
        response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        response.raise_for_status()

    def trigger(self, conf: dict[str, Any], run_id: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json=body)

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()

    def pool(self) -> dict[str, Any]:
        response = self.api("GET", f"/api/v2/pools/{POOL}")
        response.raise_for_status()
        return response.json()

    # -- metadata DB (cheap sampling, no load on the API server) ----------------------------------
    @property
    def db(self) -> Any:
        import psycopg2

        assert self.postgres is not None
        if self._db is None:
            self._db = psycopg2.connect(**self.postgres.dsn())
            self._db.autocommit = True
        return self._db

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def ti_states(self, run_id: str) -> list[tuple[str, int, str | None]]:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = %s AND run_id = %s",
                (DAG_ID, run_id),
            )
            return list(cur.fetchall())

    def deferred_labels(self, run_id: str) -> list[tuple[str, int, str | None]]:
        """(task, map index, rendered label) of every deferred task instance of the run."""
        assert self._db is not None
        with self._db.cursor() as cur:
            cur.execute(
                "SELECT task_id, map_index, rendered_map_index FROM task_instance WHERE dag_id = %s "
                "AND run_id = %s AND state = 'deferred'",
                (DAG_ID, run_id),
            )
            return list(cur.fetchall())

    def mapped_traits(self, run_id: str) -> list[str] | None:
        """Map index -> trait of the run's mapped group: the order of ``discover``'s return value."""
        assert self._db is not None
        with self._db.cursor() as cur:
            cur.execute(
                "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'discover' "
                "AND key = 'return_value' AND map_index = -1",
                (DAG_ID, run_id),
            )
            row = cur.fetchone()
        if row is None:
            return None
        value = json.loads(row[0]) if isinstance(row[0], str | bytes) else row[0]
        return [plan["trait"] for plan in value]


# --------------------------------------------------------------------------------------------------
# Watching a run
# --------------------------------------------------------------------------------------------------

WORKER_STATES = ("queued", "running")  # states that hold a LocalExecutor slot
# A job this long in flight is "mid-training": its launch has long since deferred (create -> defer takes
# a second or two; the margin is for a loaded machine).
MID_TRAINING_AFTER = 8.0
# The tasks that wait on Together: upload defers while Together validates the file, launch defers while
# the jobs in flight are at the cap, wait (the sensor) defers while the job trains.
WAITING_TASKS = ("trait.upload", "trait.launch", "trait.wait")


@dataclass
class Sample:
    t: float  # seconds since the run was triggered
    states: dict[str, dict[str, int]]  # task id -> state -> count
    fake_active: int
    fake_creates: int
    # Worker slots held (queued/running task instances) by traits whose Together job has been in flight
    # for MID_TRAINING_AFTER seconds or more and has not ended: what a trait costs while Together trains
    # (a poke-mode sensor would hold one each; a deferred task none). None until the map is known.
    mid_training_slots: int | None = None
    mid_training_jobs: int = 0
    # Those slots by task and state ("trait.wait queued": a wait whose first try has not started yet,
    # "trait.wait running": one reading its job, or a poke), so a reader can tell a late start from a hold.
    mid_training_by_task: dict[str, int] = field(default_factory=dict)

    def count(self, task: str | None = None, states: tuple[str, ...] = WORKER_STATES) -> int:
        tasks = [task] if task else list(self.states)
        return sum(self.states.get(t, {}).get(s, 0) for t in tasks for s in states)

    @property
    def deferred(self) -> int:
        """Task instances deferred to the triggerer (holding no worker slot)."""
        return self.count(states=("deferred",))

    @property
    def worker_slots(self) -> int:
        return self.count()

    @property
    def only_waiting(self) -> bool:
        """The wait phase: jobs are waited on (deferred) and no other kind of task holds a worker slot.

        What holds a slot in such a sample can only be a launch about to defer or a wait reading an
        ended job: the worker slots that waiting on Together costs. Tasks ``scheduled`` but not queued
        (a launch held back by the pool) hold none.
        """
        others = [t for t in self.states if t not in WAITING_TASKS]
        return self.deferred > 0 and sum(self.count(t) for t in others) == 0


@dataclass
class RunWatch:
    run_id: str
    triggered_at: float
    samples: list[Sample] = field(default_factory=list)
    state: str = ""
    wall_s: float = 0.0
    api: dict[str, Any] = field(default_factory=dict)

    @property
    def max_deferred(self) -> int:
        return max((s.deferred for s in self.samples), default=0)

    @property
    def max_fake_active(self) -> int:
        return max((s.fake_active for s in self.samples), default=0)

    @property
    def wait_phase(self) -> list[Sample]:
        return [s for s in self.samples if s.only_waiting]

    @property
    def mid_training(self) -> list[Sample]:
        """Samples in which at least one job was mid-training."""
        return [s for s in self.samples if s.mid_training_jobs and s.mid_training_slots is not None]

    def first(self, predicate: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in self.samples if predicate(s)), None)


def watch_run(
    dep: LiveDeployment,
    run_id: str,
    *,
    timeout: float,
    interval: float = 0.5,
    on_sample: Callable[[Sample], None] | None = None,
) -> RunWatch:
    """Sample task states (metadata DB) and the fake's jobs in flight until the run ends."""
    assert dep.fake is not None
    watch = RunWatch(run_id, time.monotonic())
    deadline = watch.triggered_at + timeout
    last_api = 0.0
    traits: list[str] | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        states: dict[str, dict[str, int]] = {}
        rows = dep.ti_states(run_id)
        for task_id, _map_index, state in rows:
            bucket = states.setdefault(task_id, {})
            key = str(state or "none")
            bucket[key] = bucket.get(key, 0) + 1
        fake = dep.fake.state()
        sample = Sample(round(now - watch.triggered_at, 2), states, fake["active"], fake["creates"])
        if traits is None and states.get("discover", {}).get("success"):
            traits = dep.mapped_traits(run_id)
        if traits is not None:
            training = {
                trait_of_suffix(job.get("suffix") or "", traits)
                for job in fake["jobs"]
                if MID_TRAINING_AFTER <= job["age_s"] < fake["job_seconds"] and job["status"] != "cancelled"
            }
            training.discard(None)
            sample.mid_training_jobs = len(training)
            held = [
                f"{task_id} {state}"
                for task_id, map_index, state in rows
                if task_id.startswith("trait.")
                and 0 <= map_index < len(traits)
                and traits[map_index] in training
                and state in WORKER_STATES
            ]
            sample.mid_training_slots = len(held)
            sample.mid_training_by_task = dict(Counter(held))
        watch.samples.append(sample)
        if on_sample is not None:
            on_sample(sample)
        if now - last_api >= 2:  # the run's state through the API, less often
            last_api = now
            run = dep.run(run_id)
            if run["state"] in ("success", "failed"):
                watch.state = run["state"]
                watch.wall_s = time.monotonic() - watch.triggered_at
                watch.api = run
                return watch
        time.sleep(interval)
    last = describe(watch.samples[-1]) if watch.samples else "none"
    raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s; last sample: {last}")


def trait_of_suffix(suffix: str, traits: list[str]) -> str | None:
    """Job suffixes are ``<trait with '-' for '_'>-<tag>`` (trait_lora.core.jobs.keys.job_suffix)."""
    readable = suffix.rsplit("-", 1)[0]
    return next((t for t in traits if t.replace("_", "-") == readable), None)


def describe(sample: Sample) -> str:
    parts = []
    for task, counts in sorted(sample.states.items()):
        short = task.replace("trait.", "")
        parts.append(short + ":" + ",".join(f"{s}={n}" for s, n in sorted(counts.items())))
    return f"t={sample.t:6.1f}s jobs_in_flight={sample.fake_active} " + " ".join(parts)
