"""The second process of a parallel shard check: ``python -m trait_lora.core.shards.validation_child``.

A subprocess of our own interpreter, not ``multiprocessing``: validation runs inside Airflow task
processes and Celery workers, where a forked pool is unsafe (threads) or refused (daemonic workers).
It prints one JSON object (see :func:`trait_lora.core.shards.scan.scan_range`); anything else, or a
child that cannot start, makes the caller check the rest itself, so a failure here costs time, never
a wrong report. It imports only ``scan``, never ``validation`` (which starts it): no import circle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


class Child:
    """A running child check; ``result()`` is its findings, or None when it failed in any way."""

    def __init__(self, popen: subprocess.Popen[bytes] | None) -> None:
        self.popen = popen

    def result(self) -> dict[str, Any] | None:
        if self.popen is None:
            return None
        out, _ = self.popen.communicate()
        if self.popen.returncode != 0:
            return None
        try:
            value = json.loads(out)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def start_child(path: Path, start: int, max_problems: int, max_line_bytes: int) -> Child:
    package_root = str(Path(__file__).resolve().parents[3])  # the child imports this very copy
    bootstrap = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from trait_lora.core.shards.validation_child import main; raise SystemExit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", bootstrap, package_root, str(path), str(start), str(max_problems)]
    try:
        popen = subprocess.Popen(
            [*argv, str(max_line_bytes)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return Child(None)
    return Child(popen)


def main(argv: list[str]) -> int:
    from trait_lora.core.shards.scan import scan_range

    path, start, max_problems, max_line_bytes = argv
    result = scan_range(Path(path), int(start), int(max_problems), int(max_line_bytes))
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
