"""The local backend's process handling: a chatty trainer never deadlocks the worker, an interrupted
task never leaves its trainer running, and traits on a multi-GPU machine never share a GPU."""

from __future__ import annotations

import signal
import sys
import threading
import time

import psutil
import pytest

from trait_lora.local.backend import LocalTrainingError, run_trainer
from trait_lora.local.devices import Device, default_concurrency, gpu_claim, resolve_device, visible_gpus

CHATTY = (
    "import sys, json\n"
    "sys.stdout.write('x' * 300_000 + '\\n'); sys.stdout.flush()\n"  # several pipe buffers on stdout first
    "for i in range(3000): print(f'step {i}', file=sys.stderr)\n"
    "print(json.dumps({'adapter_dir': '/a', 'sha256': 'f' * 64}))\n"
)


def test_a_trainer_that_fills_both_pipes_finishes_and_its_result_line_is_read():
    relayed: list[str] = []
    done: dict = {}
    runner = threading.Thread(
        target=lambda: done.update(run_trainer([sys.executable, "-c", CHATTY], log=relayed.append))
    )
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the worker deadlocked on the trainer's pipes"
    assert done == {"adapter_dir": "/a", "sha256": "f" * 64}
    assert relayed[0] == "step 0" and relayed[-1] == "step 2999"


def test_an_interrupted_task_stops_its_trainer_before_the_error_goes_on(tmp_path):
    """What Airflow's execution_timeout does: an exception raised in the task while the trainer runs."""
    pid_file = tmp_path / "pid"
    child = (
        "import os, sys, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('started', file=sys.stderr, flush=True)\n"
        "time.sleep(120)\n"
    )

    class TaskTimeout(Exception):
        pass

    def alarm(signum, frame):
        raise TaskTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    started = time.monotonic()
    try:
        signal.alarm(2)
        with pytest.raises(TaskTimeout):
            run_trainer([sys.executable, "-c", child], log=lambda _line: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 20
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_failed_trainer_says_what_its_exit_code_means():
    with pytest.raises(LocalTrainingError) as failed:
        run_trainer(
            [sys.executable, "-c", "import sys; print('error: no room', file=sys.stderr); sys.exit(4)"],
            log=lambda _line: None,
        )
    assert failed.value.exit_code == 4 and "out of memory" in str(failed.value)
    assert "error: no room" in str(failed.value)


def test_the_gpus_a_worker_sees(tmp_path, monkeypatch):
    driver = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (driver / bus).mkdir(parents=True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(driver) == ["0", "1"]
    assert visible_gpus(tmp_path / "no-driver") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus(driver) == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus(driver) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")  # CUDA stops at the first invalid id
    assert visible_gpus(driver) == ["2"]

    assert resolve_device("auto", ["0"]) is Device.CUDA and resolve_device("auto", []) is Device.CPU
    assert resolve_device("cpu", ["0"]) is Device.CPU and resolve_device("cuda", []) is Device.CUDA
    assert default_concurrency(0, ["0", "1", "2", "3"]) == 4 and default_concurrency(0, []) == 1
    assert default_concurrency(2, ["0", "1", "2", "3"]) == 2


def test_two_traits_never_hold_the_same_gpu(tmp_path):
    held: list[str] = []
    with gpu_claim(["0", "1"], first=0, lock_dir=tmp_path) as a:
        with gpu_claim(["0", "1"], first=0, lock_dir=tmp_path) as b:  # GPU 0 is taken: the next one
            held += [a, b]
        waited: list[str] = []
        got: list[str] = []
        with gpu_claim(["0", "1"], first=1, lock_dir=tmp_path) as c:  # 1 is free again
            got.append(c)

        def third() -> None:
            with gpu_claim(["0"], lock_dir=tmp_path, poll_seconds=0.05, log=waited.append) as d:
                got.append(d)

        blocked = threading.Thread(target=third)
        blocked.start()
        time.sleep(0.3)
        assert blocked.is_alive() and waited, "GPU 0 is held: the third trait must wait, saying so"
    blocked.join(timeout=5)
    assert held == ["0", "1"] and got == ["1", "0"]


def test_the_local_dag_uses_the_gpus_and_bounds_each_trait(monkeypatch):
    from tests.support.airflow import get_dag

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.setenv("AIRFLOW__TRAIT_LORA__LOCAL_TIMEOUT_MINUTES", "90")
    train = get_dag("trait_lora_local").get_task("train")
    assert train.max_active_tis_per_dagrun == 3  # one trait per GPU
    assert train.execution_timeout.total_seconds() == 90 * 60
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert get_dag("trait_lora_local").get_task("train").max_active_tis_per_dagrun == 1
