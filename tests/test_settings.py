"""Deployment settings: one table, precedence [trait_lora] > legacy TRAIT_LORA_* env > default.

Airflow's ``conf`` is the real one (the provider's section is registered by the installed entry point),
so these tests see what a worker sees, including the provider defaults ``conf.get`` returns for unset
keys and the defaults the generated airflow.cfg writes out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.airflow import REPO
from trait_lora import settings

EXPECTED_KEYS = {
    "shards_dir",
    "output_dir",
    "storage_roots",
    "storage_conn_id",
    "k8s_storage_secret",
    "wandb_project",
    "wandb_entity",
    "wandb_base_url",
    "wandb_conn_id",
    "mlflow_tracking_uri",
    "mlflow_log_adapters",
    "mlflow_timeout_seconds",
    "k8s_service_account",
    "k8s_s3_endpoint_url",
    "schedule",
    "together_pool",
    "together_pool_slots",
    "gpu_pool",
    "poll_seconds",
    "file_poll_seconds",
    "retry_delay_seconds",
    "stagger_seconds",
    "max_jobs_in_flight",
    "local_concurrency",
    "local_device",
    "local_timeout_minutes",
    "checkpoint_every_steps",
    "hf_conn_id",
    "model_cache_dir",
    "together_dashboard_url",
    "trainer_image",
    "k8s_namespace",
    "k8s_pvc",
    "k8s_mount_path",
    "k8s_node_selector",
    "k8s_tolerations",
    "k8s_gpus",
    "k8s_cpu",
    "k8s_memory",
    "k8s_hf_secret",
    "k8s_hf_secret_key",
    "k8s_gpu_flag",
    "k8s_micro_batch",
    "k8s_conn_id",
    "k8s_max_pods",
    "k8s_schedule_timeout_minutes",
    "k8s_poll_seconds",
    "k8s_retry_delay_seconds",
    "k8s_startup_timeout_minutes",
    "k8s_active_deadline_minutes",
    "k8s_logging_interval_seconds",
    "k8s_run_as_user",
    "k8s_run_as_group",
    "k8s_fs_group",
    "k8s_model_cache",
    "k8s_model_cache_size",
}


@pytest.fixture
def clean(monkeypatch):
    """No [trait_lora] or legacy value set, no conf.set left over, warnings not yet given."""
    from airflow.configuration import conf

    for name in list(os.environ):
        if name.startswith(("AIRFLOW__TRAIT_LORA__", "TRAIT_LORA_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(settings, "_warned", set())
    yield monkeypatch
    for s in settings.SETTINGS:
        if conf.has_section("trait_lora"):
            conf.remove_option("trait_lora", s.key, remove_default=False)


def test_the_table_has_every_setting_with_a_description_and_a_default_its_parser_accepts():
    assert set(settings.BY_KEY) == EXPECTED_KEYS
    for s in settings.SETTINGS:
        assert s.description and s.read_at in settings.READ_AT, s.key
        assert s.env == f"AIRFLOW__TRAIT_LORA__{s.key.upper()}"
        assert s.legacy_env == f"TRAIT_LORA_{s.key.upper()}"
        s.parse(s.default, "default")  # every default is valid


def test_defaults_are_typed(clean):
    assert settings.get_float("poll_seconds") == 30.0
    assert settings.get_int("max_jobs_in_flight") == 6
    assert settings.get_bool("k8s_gpu_flag") is True
    assert settings.get("k8s_tolerations")[0]["key"] == "nvidia.com/gpu"
    assert settings.schedule() == "0 3 * * 1"
    assert settings.default_dirs(Path("/p")) == (Path("/p/include/sample_shards"), Path("/p/outputs"))
    with pytest.raises(TypeError, match="poll_seconds is a float setting"):
        settings.get_int("poll_seconds")


def test_the_legacy_env_var_still_works_and_warns_once_naming_the_new_name(clean):
    clean.setenv("TRAIT_LORA_POLL_SECONDS", "5")
    with pytest.warns(DeprecationWarning, match="set AIRFLOW__TRAIT_LORA__POLL_SECONDS") as caught:
        assert settings.get_float("poll_seconds") == 5.0
        assert settings.get_float("poll_seconds") == 5.0
    assert len([w for w in caught if "TRAIT_LORA_POLL_SECONDS" in str(w.message)]) == 1
    assert settings.raw("poll_seconds") == ("5", "legacy env TRAIT_LORA_POLL_SECONDS")


def test_airflow_env_beats_legacy_which_beats_the_default(clean):
    clean.setenv("TRAIT_LORA_MAX_JOBS_IN_FLIGHT", "3")
    assert settings.get_int("max_jobs_in_flight") == 3
    clean.setenv("AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT", "9")
    with pytest.warns(DeprecationWarning, match="TRAIT_LORA_MAX_JOBS_IN_FLIGHT is ignored"):
        assert settings.get_int("max_jobs_in_flight") == 9
    # An env value equal to the default is still explicit: the legacy value does not come back.
    clean.setenv("AIRFLOW__TRAIT_LORA__MAX_JOBS_IN_FLIGHT", "6")
    assert settings.get_int("max_jobs_in_flight") == 6


def test_an_airflow_cfg_value_beats_legacy_but_a_written_out_default_does_not(clean):
    from airflow.configuration import conf

    clean.setenv("TRAIT_LORA_POLL_SECONDS", "5")
    # What the airflow.cfg generated on first start holds: every default, uncommented.
    conf.set("trait_lora", "poll_seconds", "30")
    assert conf.get("trait_lora", "poll_seconds") == "30"
    assert settings.get_float("poll_seconds") == 5.0
    conf.set("trait_lora", "poll_seconds", "12")
    assert settings.raw("poll_seconds") == ("12", "airflow.cfg [trait_lora] poll_seconds")
    clean.setenv("AIRFLOW__TRAIT_LORA__POLL_SECONDS", "0.5")  # env beats the file, as in Airflow
    assert settings.get_float("poll_seconds") == 0.5


def test_conf_answers_unset_keys_with_the_provider_default_yet_nothing_counts_as_set(clean):
    from airflow.configuration import conf

    clean.setenv("TRAIT_LORA_STAGGER_SECONDS", "0")
    assert conf.get("trait_lora", "stagger_seconds") == "2"  # the trap: the provider default
    assert settings.raw("stagger_seconds") == ("0", "legacy env TRAIT_LORA_STAGGER_SECONDS")


def test_without_airflow_the_env_is_read_in_the_same_order(clean):
    clean.setenv("TRAIT_LORA_SHARDS_DIR", "/legacy")
    assert settings.get_str("shards_dir", use_airflow=False) == "/legacy"
    clean.setenv("AIRFLOW__TRAIT_LORA__SHARDS_DIR", "/new")
    assert settings.get_str("shards_dir", use_airflow=False) == "/new"


def test_empty_means_unset_except_for_the_schedule(clean):
    clean.setenv("AIRFLOW__TRAIT_LORA__K8S_PVC", "")
    clean.setenv("TRAIT_LORA_K8S_PVC", "legacy-pvc")
    assert settings.get_str("k8s_pvc") == "legacy-pvc"
    clean.setenv("AIRFLOW__TRAIT_LORA__SCHEDULE", "")
    assert settings.schedule() is None
    for manual in ("none", "None", "null"):
        clean.setenv("AIRFLOW__TRAIT_LORA__SCHEDULE", manual)
        assert settings.schedule() is None
    clean.setenv("AIRFLOW__TRAIT_LORA__SCHEDULE", "@daily")
    assert settings.schedule() == "@daily"


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("poll_seconds", "abc", "a number > 0"),
        ("poll_seconds", "0", "a number > 0"),
        ("max_jobs_in_flight", "0", "an integer >= 1"),
        ("max_jobs_in_flight", "2.5", "an integer >= 1"),
        ("retry_delay_seconds", "-1", "a number >= 0"),
        ("k8s_gpu_flag", "maybe", "true or false"),
        ("k8s_node_selector", "[1]", "a JSON object"),
        ("k8s_tolerations", "{not json", "a JSON list"),
        ("together_dashboard_url", "https://x/jobs", "containing {job_id}"),
    ],
)
def test_a_bad_value_names_the_setting_its_env_and_what_is_allowed(clean, key, value, allowed):
    clean.setenv(f"AIRFLOW__TRAIT_LORA__{key.upper()}", value)
    with pytest.raises(settings.SettingError) as exc:
        settings.get(key)
    message = str(exc.value)
    assert f"[trait_lora] {key}" in message and f"AIRFLOW__TRAIT_LORA__{key.upper()}" in message
    assert allowed in message and repr(value) in message


def test_a_bad_legacy_value_says_where_it_came_from(clean):
    clean.setenv("TRAIT_LORA_LOCAL_CONCURRENCY", "two")
    with pytest.raises(settings.SettingError, match=r"from legacy env TRAIT_LORA_LOCAL_CONCURRENCY"):
        settings.get_int("local_concurrency")


def test_the_provider_config_follows_airflows_schema_and_the_table():
    import airflow
    import jsonschema

    from trait_lora.provider import get_provider_info

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    options = info["config"]["trait_lora"]["options"]
    assert set(options) == EXPECTED_KEYS
    for s in settings.SETTINGS:
        assert options[s.key]["default"] == s.default and s.legacy_env in options[s.key]["description"]


def test_airflow_config_list_shows_every_setting_with_its_default_and_description(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRAIT_LORA_"))}
    env.update(AIRFLOW_HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run(
        [
            str(airflow),
            "config",
            "list",
            "--section",
            "trait_lora",
            "--include-descriptions",
            "--show-values",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.lstrip().startswith("[trait_lora]"), out[:500]
    for s in settings.SETTINGS:
        block = re.search(rf"^# (?P<desc>.*)\n{re.escape(s.key)} = (?P<value>.*)$", out, re.M)
        assert block is not None, f"{s.key} missing from airflow config list:\n{out[:3000]}"
        assert block["value"].strip() == s.default, s.key
        assert block["desc"].startswith(s.description), s.key


def test_only_the_settings_module_reads_deployment_env_vars():
    # embedded.py configures its in-process Airflow; local/backend.py passes the env to a subprocess.
    # devices: CUDA_VISIBLE_DEVICES; delivery: the pod's HF_TOKEN / HF_ENDPOINT (it has no Airflow settings)
    allowed = {"settings.py", "embedded.py", "backend.py", "devices.py", "delivery.py"}
    readers = []
    for path in [*(REPO / "src" / "trait_lora").rglob("*.py"), *(REPO / "dags").glob("*.py")]:
        if path.name not in allowed and re.search(r"os\.environ|getenv", path.read_text()):
            readers.append(str(path.relative_to(REPO)))
    assert readers == [], f"read settings through trait_lora.settings, not the env: {readers}"


PROBE = "import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"


@pytest.mark.parametrize("module", ["trait_lora.settings", "trait_lora.cli"])
def test_settings_and_the_cli_import_no_airflow(module):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cli_list_reads_the_new_and_the_legacy_shards_dir_without_airflow(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__TRAIT_LORA__", "TRAIT_LORA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    shards = REPO / "include" / "sample_shards"
    for name in ("AIRFLOW__TRAIT_LORA__SHARDS_DIR", "TRAIT_LORA_SHARDS_DIR"):
        done = subprocess.run(
            [sys.executable, "-m", "trait_lora.cli", "list", "--json"],
            capture_output=True,
            text=True,
            env={**env, name: str(shards)},
            cwd=tmp_path,  # the default (./include/sample_shards) does not exist here
            timeout=120,
        )
        assert done.returncode == 0, (name, done.stderr)
        assert json.loads(done.stdout)["shards"], name


def test_the_operations_guide_lists_every_setting_as_the_code_declares_it():
    """An operator reads docs/operations.md, not settings_table.py: a setting missing there, or with
    another default, is a setting nobody can find. Regenerate with scripts/settings_doc.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("settings_doc", REPO / "scripts" / "settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = (REPO / "docs" / "operations.md").read_text()
    missing = [row for row in module.rows() if row not in doc]
    assert not missing, "run .venv/bin/python scripts/settings_doc.py; out of date:\n" + "\n".join(missing)
