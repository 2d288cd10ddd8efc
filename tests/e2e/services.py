"""The services a live deployment runs beside Airflow, each a private process on a free loopback port.

PostgreSQL (the metadata DB), Redis (the Celery broker) and the fake Together API server, with the
``apt-get`` fallback that installs Debian's PostgreSQL/Redis on a fresh root machine (CI). Apart from
``deployment`` because each service is self-contained: started, probed until ready, stopped and
cleaned up on its own. Imports only ``procs``.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.procs import REPO, Proc, free_port, log, start_proc, tail, wait_for

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
