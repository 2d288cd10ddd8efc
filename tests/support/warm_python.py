"""A trainer image for the fake kubelet whose Python has torch, transformers and peft imported already.

``python -m trait_lora.train`` spends ~5 s of its ~7 s on a tiny model importing those libraries; eight
pods would spend 40 s of a CI worker re-importing them. A real node pays that per pod too, but what the
tests check is what the trainer does with the pod's argv, env, volumes and signals, so the pods here
share one warm interpreter, forked per container like a zygote:

* ``serve`` (a process started once by the ``warm_trainer`` fixture) imports the heavy modules, never
  runs a torch op (a fork after OpenMP started its threads may hang), and forks a *monitor* per
  container. The monitor forks the *trainer* child, which takes the container's stdin/stdout/stderr
  (passed over the socket), argv, env and working directory, and runs ``python -m MODULE`` or
  ``python -c CODE`` as a fresh interpreter would; the monitor sends its exit code back (128 + N for
  a signal, as a container runtime reports it).
* the container's process is the *client*: the image puts a ``python`` on ``PATH`` (``shim``) that
  forwards its argv, env, cwd and stdio, relays SIGTERM/SIGINT to the trainer and exits with its code.
  When the client is SIGKILLed (grace period over, OOM kill), the monitor sees the socket close and
  SIGKILLs the trainer: nothing outlives its container.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path

PRELOAD = (
    "trait_lora.train.cli",
    "trait_lora.train.trainer",
    "trait_lora.train.objects",
    "transformers.models.llama.modeling_llama",
    "boto3",
    "botocore.client",
)

SHIM = """#!{python}
import json, os, signal, socket, struct, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
for _ in range(1200):  # the server may still be importing: it is started in the background
    try:
        sock.connect({path!r})
        break
    except (FileNotFoundError, ConnectionRefusedError):
        time.sleep(0.05)
else:
    sys.exit("warm python: no server at {path}")
body = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
socket.send_fds(sock, [struct.pack("!I", len(body))], [0, 1, 2])
sock.sendall(body)
def forward(signum, frame):
    sock.sendall(bytes([signum]))
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
data = b""
while len(data) < 4:
    chunk = sock.recv(4 - len(data))
    if not chunk:
        os._exit(137)
    data += chunk
os._exit(struct.unpack("!i", data)[0])
"""


def write_shim(folder: Path, socket_path: str) -> Path:
    """``folder/python``: the image's interpreter on its ``PATH``."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "python"
    shim.write_text(SHIM.format(python=sys.executable, path=socket_path))
    shim.chmod(0o755)
    return shim


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("the client went away")
        data += chunk
    return data


def _run_python(argv: list[str]) -> int:
    """``python -m MODULE ARGS`` or ``python -c CODE ARGS`` in this (forked, warm) interpreter."""
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False))  # noqa: SIM115
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
    code = 0
    try:
        if argv[:1] == ["-m"] and len(argv) > 1:
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[:1] == ["-c"] and len(argv) > 1:
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            print(f"warm python: only -m MODULE and -c CODE are supported, got {argv[:2]}", file=sys.stderr)
            code = 2
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _monitor(conn: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(head) < 4:
        head += _recv_exact(conn, 4 - len(head))
    request = json.loads(_recv_exact(conn, struct.unpack("!I", head)[0]))
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os._exit(_run_python(request["argv"]))
    for fd in fds:
        os.close(fd)
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            try:
                data = conn.recv(1)
            except OSError:
                data = b""
            if done.is_set():
                return
            try:
                os.kill(pid, data[0] if data else signal.SIGKILL)
            except ProcessLookupError:
                return
            if not data:
                return

    threading.Thread(target=relay, daemon=True).start()
    _, status = os.waitpid(pid, 0)
    done.set()
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
    os._exit(0)


def serve(socket_path: str, preload: tuple[str, ...] = PRELOAD) -> None:
    import importlib

    for name in preload:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            try:
                _monitor(conn)
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
