"""A probe run inside worker processes by tests: which of these modules did the process start with."""

from __future__ import annotations

import sys


def loaded(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in sys.modules]
