"""docker-compose.yaml, Dockerfile, .env.example and scripts/airflow-init.sh, checked without Docker.

Docker cannot run on the test machines, so this reads the files: the services of Airflow 3's official
compose (CeleryExecutor), the mounts every component needs, the env wiring (Together connection from
.env, shards/outputs dirs on the mounts), that no secret is written in any of them, and that the image
installs the pinned requirements and the package (so the provider and the trigger import everywhere).
The init script's logic runs for real in ``make e2e``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.airflow import REPO
from trait_lora.settings import BY_KEY

COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
INIT_SCRIPT = REPO / "scripts" / "airflow-init.sh"

AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
}
ALL_SERVICES = {"postgres", "redis", "airflow-init", *AIRFLOW_SERVICES}
OUTPUTS_TARGET = "/opt/airflow/outputs"
# Shapes of real credentials: Together keys (tgp_...), OpenAI-style keys, long hex/base64 tokens.
SECRET_PATTERNS = (
    re.compile(r"tgp_[A-Za-z0-9_]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9]{16,}"),
    re.compile(r"\b[a-f0-9]{40,}\b"),
    re.compile(r"\b[A-Za-z0-9+/]{40,}={0,2}"),
)
VAR = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^{}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` (nested too) and ``$$`` rules (enough for this file)."""

    def sub(match: re.Match[str]) -> str:
        value = env.get(match["name"])
        unset = not value if match["op"] in (":-", ":?") else value is None
        if match["op"] and unset:
            return match["default"] or ""
        return value or ""

    while True:  # innermost first: ``${NEW:-${OLD:-4}}`` is a default that is itself a variable
        done = VAR.sub(sub, text)
        if done == text:
            return done.replace("$$", "$")
        text = done


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def volumes_of(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[target] = source
    return out


def test_services_follow_the_official_airflow3_compose(compose):
    services = compose["services"]
    assert set(services) == ALL_SERVICES
    for name, command in AIRFLOW_SERVICES.items():
        service = services[name]
        assert service["command"] == command, name
        assert service["build"] == "." and service["image"], name  # this repo's Dockerfile
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        depends = service["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert "healthcheck" in service, name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_every_component_mounts_dags_plugins_include_and_the_shared_outputs(compose):
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        mounts = volumes_of(compose["services"][name])
        assert mounts["/opt/airflow/dags"] == "./dags", name
        assert mounts["/opt/airflow/plugins"] == "./plugins", name
        assert mounts["/opt/airflow/include"] == "./include", name
        # One named volume for every component: the worker writes adapters, publish reads them.
        assert mounts[OUTPUTS_TARGET] == "trait-lora-outputs", name
    assert "trait-lora-outputs" in compose["volumes"]
    for source in ("dags", "plugins", "include"):
        assert (REPO / source).is_dir()


def test_env_wiring_points_at_the_mounts_and_the_pool(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    shards_default = interpolate(env["AIRFLOW__TRAIT_LORA__SHARDS_DIR"], {})
    assert shards_default.startswith("/opt/airflow/include/")
    assert (REPO / "include" / Path(shards_default).relative_to("/opt/airflow/include")).is_dir()
    assert env["AIRFLOW__TRAIT_LORA__OUTPUT_DIR"] == OUTPUTS_TARGET
    assert env["AIRFLOW__TRAIT_LORA__TOGETHER_POOL"] == "together_api"
    # Every trait-lora setting is passed in the [trait_lora] form, and names a real setting.
    assert not [name for name in env if name.startswith("TRAIT_LORA_")]
    ours = {name.removeprefix("AIRFLOW__TRAIT_LORA__").lower() for name in env if "__TRAIT_LORA__" in name}
    assert ours and ours <= set(BY_KEY), ours - set(BY_KEY)
    # An old .env with a deprecated name keeps its value (an upgrade must not reset the paid-job cap);
    # the new name wins when both are there; neither gives the compose default.
    cap = env["AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT"]
    assert interpolate(cap, {"TRAIT_LORA_MAX_JOBS_IN_FLIGHT": "2"}) == "2"
    both = {"TRAIT_LORA_MAX_JOBS_IN_FLIGHT": "2", "AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT": "3"}
    assert interpolate(cap, both) == "3"
    assert interpolate(cap, {}) == "4"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert compose["services"]["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"
    # Every Airflow component gets the same env (the worker adds DUMB_INIT_SETSID only).
    for name in AIRFLOW_SERVICES:
        other = {k: v for k, v in compose["services"][name]["environment"].items() if k != "DUMB_INIT_SETSID"}
        assert other == {k: v for k, v in env.items() if k != "DUMB_INIT_SETSID"}, name


def test_compose_runs_the_worker_tuning_that_the_e2e_and_the_bench_measure(compose):
    """The overhead figures in docs/decisions.md hold for this file only if it sets what they ran with."""
    from tests.e2e.live import WORKER_TUNING, WORKER_TUNING_CELERY

    env = compose["services"]["airflow-worker"]["environment"]
    assert {k: env.get(k) for k in {**WORKER_TUNING, **WORKER_TUNING_CELERY}} == {
        **WORKER_TUNING,
        **WORKER_TUNING_CELERY,
    }
    module, _, name = env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"].rpartition(".")
    assert (REPO / "src" / Path(*module.split("."))).with_suffix(".py").is_file()
    assert name == "CELERY_CONFIG"


def test_together_connection_is_built_from_the_env_file_key(compose):
    template = compose["services"]["airflow-triggerer"]["environment"]["AIRFLOW_CONN_TOGETHER_DEFAULT"]
    assert "${TOGETHER_API_KEY" in template
    key = "tgp_example_not_a_real_key_0123456789"
    conn = json.loads(interpolate(template, {"TOGETHER_API_KEY": key}))
    assert conn == {"conn_type": "together", "host": "https://api.together.ai", "password": key}
    other = json.loads(interpolate(template, {"TOGETHER_API_KEY": key, "TOGETHER_BASE_URL": "http://x:1"}))
    assert other["host"] == "http://x:1"
    # Without a .env the connection still parses (the hook then says the key is missing).
    assert json.loads(interpolate(template, {}))["password"] == ""


def test_no_secret_is_written_in_the_deployment_files():
    for path in (COMPOSE, DOCKERFILE, ENV_EXAMPLE, INIT_SCRIPT):
        text = path.read_text()
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.name}: {pattern.search(text)[0]!r} looks like a secret"
    compose_text = COMPOSE.read_text()
    # The key is only ever interpolated from .env, never set in the compose file.
    assert not re.search(r"^\s*-?\s*TOGETHER_API_KEY\s*[:=]", compose_text, re.M)


def test_env_example_has_no_real_key_and_documents_every_required_variable():
    example = env_example()
    assert example["TOGETHER_API_KEY"] in ("", "your-together-api-key")
    assert ".env" in (REPO / ".gitignore").read_text().split()
    # Every variable the compose file reads without a non-empty default is in .env.example.
    without_default = {m["name"] for m in VAR.finditer(COMPOSE.read_text()) if not (m["op"] and m["default"])}
    assert without_default <= set(example), without_default - set(example)


def test_init_creates_the_pool_with_deferred_tasks_and_migrates(compose):
    init = compose["services"]["airflow-init"]
    assert init["command"] == ["/opt/trait-lora/scripts/airflow-init.sh"]
    script = INIT_SCRIPT.read_text()
    assert '"$AIRFLOW_BIN" db migrate' in script
    assert re.search(r'pools set "\$POOL" "\$SLOTS" \\\n\s+".*" --include-deferred', script)
    assert INIT_SCRIPT.stat().st_mode & 0o111, "the init script must be executable"


def run_init(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The init script for real, with a stub ``airflow`` that records its arguments."""
    stub = tmp_path / "airflow"
    stub.write_text('#!/usr/bin/env bash\necho "$@" >> "$STUB_LOG"\n')
    stub.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "AIRFLOW_BIN": str(stub), "STUB_LOG": str(tmp_path / "log")}
    return subprocess.run(
        ["bash", str(INIT_SCRIPT)], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "pool", "slots"),
    [
        ({}, "together_api", "4"),
        ({"AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS": "8"}, "together_api", "8"),
        ({"TRAIT_LORA_TOGETHER_POOL_SLOTS": "3", "TRAIT_LORA_TOGETHER_POOL": "tg"}, "tg", "3"),
        (
            {"AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS": "8", "TRAIT_LORA_TOGETHER_POOL_SLOTS": "3"},
            "together_api",
            "8",
        ),
    ],
)
def test_init_sizes_the_pool_from_the_new_or_the_legacy_name(tmp_path, env, pool, slots):
    done = run_init(tmp_path, env)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    assert calls[0] == "db migrate"
    assert calls[1].startswith(f"pools set {pool} {slots} ") and calls[1].endswith("--include-deferred")
    assert ("deprecated" in done.stderr) == any(name.startswith("TRAIT_LORA_") for name in env)


def test_init_refuses_a_bad_pool_size_naming_the_setting(tmp_path):
    done = run_init(tmp_path, {"AIRFLOW__TRAIT_LORA__TOGETHER_POOL_SLOTS": "0"})
    assert done.returncode == 2
    assert "[trait_lora] together_pool_slots" in done.stderr and not (tmp_path / "log").exists()


def test_dockerfile_installs_the_pins_and_the_package():
    text = DOCKERFILE.read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pinned is not None
    assert re.search(rf"^FROM apache/airflow:{re.escape(pinned[1])}$", text, re.M)
    assert "-r /opt/trait-lora/requirements.txt -c /opt/trait-lora/constraints.txt" in text
    assert "COPY --chown=airflow:0 requirements.txt constraints.txt /opt/trait-lora/" in text
    assert "COPY --chown=airflow:0 src /opt/trait-lora/src" in text
    assert "COPY --chown=airflow:0 pyproject.toml README.md /opt/trait-lora/" in text
    assert re.search(r"pip install --no-cache-dir --no-deps /opt/trait-lora\b", text)
    assert "trait_lora.provider:get_provider_info" in text  # the entry point is checked at build time
    assert "COPY --chown=airflow:0 scripts /opt/trait-lora/scripts" in text
    # The postgres driver Airflow needs for that SQL_ALCHEMY_CONN is in the pinned requirements.
    assert re.search(r"^apache-airflow-providers-postgres==", (REPO / "requirements.txt").read_text(), re.M)
    assert re.search(r"^psycopg2-binary==", (REPO / "constraints.txt").read_text(), re.M)
