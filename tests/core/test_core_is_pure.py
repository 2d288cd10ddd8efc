"""The pure core must import without Airflow, torch or the Together SDK.

The CLI, the Together backend and the pod-side trainer all build on ``trait_lora.core``; if a core module
pulled in Airflow (seconds of import time, a scheduler config) or torch (gigabytes), every one of them
would too. Each module is imported in a fresh interpreter, so a heavy import elsewhere in the test
session cannot hide one here, and modules are found with pkgutil so new ones are covered automatically.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import trait_lora.core

FORBIDDEN = ("airflow", "torch", "together", "transformers", "peft")
EXPECTED_AT_LEAST = {"atomic", "config", "errors", "keys", "shards", "validation"}

CORE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(trait_lora.core.__path__, prefix="trait_lora.core.")
)

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
forbidden = {forbidden!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


def test_module_discovery_finds_the_core():
    # Guards the parametrised test below against silently checking nothing.
    assert {name.rsplit(".", 1)[1] for name in CORE_MODULES} >= EXPECTED_AT_LEAST


@pytest.mark.parametrize("module", ["trait_lora.core", *CORE_MODULES])
def test_core_module_imports_nothing_heavy(module):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(forbidden=FORBIDDEN), module],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{module} pulls in {', '.join(loaded)}; keep the core free of {FORBIDDEN}"


def test_probe_detects_a_forbidden_import():
    # The probe itself must be able to fail: keys.py really imports hashlib, errors.py does not.
    def loaded(module):
        probe = PROBE.format(forbidden=("hashlib",))
        argv = [sys.executable, "-c", probe, module]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return json.loads(result.stdout)

    assert loaded("trait_lora.core.jobs.keys") == ["hashlib"]
    assert loaded("trait_lora.core.errors") == []
