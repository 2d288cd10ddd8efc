"""Process plumbing of the live e2e harness: start, watch, signal and stop child process groups.

The bottom layer of ``tests/e2e``: the services (PostgreSQL, Redis, the fake Together server) and the
Airflow components are all started with ``start_proc`` and stopped with ``Proc.stop``, so a child dies
with us (``PR_SET_PDEATHSIG``) and its whole process group goes with it. Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


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
