"""Serve the fake Together API as its own process: ``python -m tests.fake_together --job-seconds T``.

Run from the repository root. Binds a free port on 127.0.0.1; every job completes T seconds after it
is created (``TimedFakeTogether``). Prints one JSON line on stdout once it is listening,
``{"base_url": ..., "api_key": ..., "job_seconds": ..., "pid": ...}``, then serves until SIGTERM or
SIGINT. ``GET /_fake/state`` (Bearer key) reports creates, jobs in flight and the peak of jobs in
flight. Point Airflow at it with
``AIRFLOW_CONN_TOGETHER_DEFAULT='{"conn_type": "together", "host": BASE_URL, "password": API_KEY}'``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from tests.fake_together.timed import TimedFakeTogether


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_together", description=__doc__.split("\n")[0])
    parser.add_argument("--job-seconds", type=float, default=10.0, help="time from create to completed")
    parser.add_argument("--api-key", default=None, help="the key clients must send (default: random)")
    parser.add_argument(
        "--answers",
        choices=("full", "spec-minimal"),
        default=os.environ.get("FAKE_TOGETHER_ANSWERS") or "full",
        help="full: every field the SDK declares; spec-minimal: only what Together's spec requires",
    )
    args = parser.parse_args(argv)

    fake = TimedFakeTogether(job_seconds=args.job_seconds)
    fake.answers = args.answers
    if args.api_key:
        fake.api_key = args.api_key
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fake.start()
    print(
        json.dumps(
            {
                "base_url": fake.base_url,
                "api_key": fake.api_key,
                "job_seconds": fake.job_seconds,
                "answers": fake.answers,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    print(f"fake Together at {fake.base_url}, jobs take {fake.job_seconds:g} s", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        fake.stop()
        if fake.bugs:
            print("the fake crashed on requests:\n" + "\n".join(fake.bugs), file=sys.stderr)
    return 1 if fake.bugs else 0


if __name__ == "__main__":
    sys.exit(main())
