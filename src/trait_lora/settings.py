"""Every deployment setting in one table, resolved one way: ``[trait_lora]`` > legacy env > default.

Precedence, highest first:

1. an explicit ``[trait_lora]`` value: the env var ``AIRFLOW__TRAIT_LORA__<KEY>`` or ``<key> = ...`` in
   airflow.cfg, read through ``airflow.configuration.conf`` (so secrets backends, ``conf.set`` in tests
   and env expansion behave as Airflow's own options do);
2. the legacy env var ``TRAIT_LORA_<KEY>`` (deprecated; works for one more release and warns once per
   process, naming the new name);
3. the table's default.

An empty value counts as not set (as the old ``os.environ.get(...) or default`` did), except for
``schedule``, where empty means "manual only" as it always has.

Why "explicit" needs care: once the provider declares the section, ``conf.get`` answers every key with
the provider default, and the airflow.cfg Airflow generates on first start writes every default out
uncommented. So a value counts as explicit when its ``AIRFLOW__TRAIT_LORA__`` env var exists, or when
airflow.cfg holds a value *different from the default*; otherwise a legacy var still applies.

The CLI's ``list``/``validate``/``plan`` must not import Airflow (seconds of import): they resolve with
``use_airflow=False``, which reads the ``AIRFLOW__TRAIT_LORA__`` env var, then the legacy var, then the
default (airflow.cfg is not read there). ``airflow.configuration`` is imported lazily, only when asked.

This is the only module that reads deployment env vars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The table itself (every setting, its type, default, help and check) is ``settings_table``; this
# module resolves values. Re-exported: callers have always read them from here.
from trait_lora.settings_table import BY_KEY as BY_KEY
from trait_lora.settings_table import READ_AT as READ_AT
from trait_lora.settings_table import SECTION as SECTION
from trait_lora.settings_table import SETTINGS as SETTINGS
from trait_lora.settings_table import VERSION_ADDED as VERSION_ADDED
from trait_lora.settings_table import Setting as Setting
from trait_lora.settings_table import SettingError as SettingError

_warned: set[str] = set()


def _conf() -> Any:
    from airflow.configuration import conf

    return conf


def _explicit(setting: Setting, use_airflow: bool) -> tuple[str, str] | None:
    """The ``[trait_lora]`` value and where it came from, or None when it was not really set."""
    if not use_airflow:
        return (os.environ[setting.env], f"env {setting.env}") if setting.env in os.environ else None
    from configparser import ConfigParser

    from airflow.configuration import expand_env_var

    # Airflow's own first two lookups, done here rather than by conf.get: conf.get's first call builds
    # the merged provider config description (provider discovery, ~0.1 s of every DAG parse), and would
    # answer an unset key with the provider default. _CMD/_SECRET apply only to sensitive options.
    if setting.env in os.environ:
        return expand_env_var(os.environ[setting.env]), f"env {setting.env}"
    conf = _conf()
    # The parser's own layer holds airflow.cfg (and conf.set); Airflow's defaults live elsewhere.
    if ConfigParser.has_option(conf, SECTION, setting.key):
        text = expand_env_var(ConfigParser.get(conf, SECTION, setting.key))
        if text.strip() != setting.default:  # the generated airflow.cfg writes every default out
            return text, f"airflow.cfg [{SECTION}] {setting.key}"
    return None


def _warn_legacy(setting: Setting, ignored: bool) -> None:
    once = f"{setting.legacy_env}:{'ignored' if ignored else 'used'}"
    if once in _warned:
        return
    _warned.add(once)
    if ignored:
        message = (
            f"{setting.legacy_env} is ignored because [{SECTION}] {setting.key} is set; "
            f"remove {setting.legacy_env}"
        )
    else:
        message = (
            f"{setting.legacy_env} is deprecated and will stop working in the next release: set "
            f"{setting.env} (or [{SECTION}] {setting.key} in airflow.cfg) instead"
        )
    import logging  # lazily: the CLI's list/validate/plan start faster without it
    import warnings

    warnings.warn(message, DeprecationWarning, stacklevel=4)
    logging.getLogger(__name__).warning("%s", message)


def _is_set(text: str | None, setting: Setting) -> bool:
    return text is not None and (setting.empty_is_value or text.strip() != "")


def raw(key: str, *, use_airflow: bool = True) -> tuple[str, str]:
    """The setting's text and its source, by the precedence in this module's docstring."""
    setting = BY_KEY[key]
    explicit = _explicit(setting, use_airflow)
    legacy = os.environ.get(setting.legacy_env)
    if explicit is not None and _is_set(explicit[0], setting):
        if _is_set(legacy, setting) and legacy != explicit[0]:
            _warn_legacy(setting, ignored=True)
        return explicit
    if _is_set(legacy, setting):
        _warn_legacy(setting, ignored=False)
        return str(legacy), f"legacy env {setting.legacy_env}"
    return setting.default, "default"


def get(key: str, *, use_airflow: bool = True) -> Any:
    """The setting's typed value (str, int, float, bool, or the parsed JSON); SettingError if bad."""
    text, source = raw(key, use_airflow=use_airflow)
    return BY_KEY[key].parse(text, source)


def _typed(key: str, kind: type, use_airflow: bool) -> Any:
    value = get(key, use_airflow=use_airflow)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"[{SECTION}] {key} is a {BY_KEY[key].kind} setting, not {kind.__name__}")
    return value


def get_str(key: str, *, use_airflow: bool = True) -> str:
    return str(_typed(key, str, use_airflow))


def get_int(key: str, *, use_airflow: bool = True) -> int:
    return int(_typed(key, int, use_airflow))


def get_float(key: str, *, use_airflow: bool = True) -> float:
    return float(_typed(key, float, use_airflow))


def get_bool(key: str, *, use_airflow: bool = True) -> bool:
    return bool(_typed(key, bool, use_airflow))


def schedule() -> str | None:
    """The training DAGs' cron schedule; None (manual only) for ``none``, ``null`` or empty."""
    value = get_str("schedule")
    return None if value.lower() in ("", "none", "null") else value


def default_dirs(project_dir: Path, *, use_airflow: bool = True) -> tuple[Any, Any]:
    """``shards_dir`` / ``output_dir``, else the project's ``include/sample_shards`` and ``outputs/``:
    a ``Path`` for a folder (``file://`` unwrapped), the text as given for an object-storage URL
    (``Path`` would fold ``s3://`` into ``s3:/``)."""
    shards = get_str("shards_dir", use_airflow=use_airflow) or project_dir / "include" / "sample_shards"
    output = get_str("output_dir", use_airflow=use_airflow) or project_dir / "outputs"
    return _location(shards), _location(output)


def _location(value: str | Path) -> Path | str:
    from trait_lora.core.storage.opener import is_url

    text = str(value)
    return text if is_url(text) else Path(text.removeprefix("file://"))


def airflow_home_default() -> str:
    """The CLI's embedded Airflow home: ``AIRFLOW_HOME`` as Airflow reads it, else ./.airflow."""
    return os.environ.get("AIRFLOW_HOME") or ".airflow"


def dags_folder_default() -> str:
    """The CLI's DAG folder: ``AIRFLOW__CORE__DAGS_FOLDER`` as Airflow reads it, else ./dags."""
    return os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or "dags"


def tls_trust_env() -> tuple[str | None, str | None]:
    """``SSL_CERT_FILE`` and ``SSL_CERT_DIR``: not ours but httpx's (the Together SDK's transport), read
    here only to key the shared TLS context (trait_lora.provider.hooks.tls) on what httpx will read."""
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of ``get_provider_info()``: how ``airflow config list`` learns the section."""
    options: dict[str, Any] = {}
    for s in SETTINGS:
        when = READ_AT[s.read_at]
        options[s.key] = {
            "description": f"{s.description} {when}. Legacy env: {s.legacy_env} (deprecated).",
            "version_added": VERSION_ADDED,
            "type": s.airflow_type,
            "example": s.example,
            "default": s.default,
        }
    return {
        SECTION: {
            "description": "Deployment settings of the trait-lora provider. Precedence: this section "
            f"(AIRFLOW__{SECTION.upper()}__<KEY> or airflow.cfg) > legacy TRAIT_LORA_<KEY> env > default.",
            "options": options,
        }
    }
