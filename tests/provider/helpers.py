"""Shared bits of the provider tests: DAG conf, the plan a run will make, connection env, tree snapshots."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tests.support.airflow import copy_shards, get_dag

DAG_ID = "trait_lora_together"


def conf_for(tmp_path: Path, traits: list[str], **extra: Any) -> dict[str, Any]:
    """A UI-style run conf over a private copy of the sample shards and a private output dir."""
    shards = copy_shards(tmp_path / "shards", traits)
    return {"shards_dir": str(shards), "output_dir": str(tmp_path / "out"), **extra}


def plans_for(conf: dict[str, Any]) -> dict[str, Any]:
    """What ``discover`` will plan for this conf (same config, same keys, same suffixes)."""
    from trait_lora.core.config import from_mapping
    from trait_lora.core.jobs.plan import plan_traits
    from trait_lora.provider.params import config_values

    params = {**get_dag(DAG_ID).params.dump(), **conf}
    config = from_mapping(config_values(params, "together"))
    return {p.trait: p for p in plan_traits(conf["shards_dir"], conf["output_dir"], config)}


def suffix_part(trait: str) -> str:
    """A substring of every job suffix of ``trait`` and of no other sample trait's."""
    return trait.replace("_", "-") + "-"


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def conn_json(fake: Any, **overrides: Any) -> str:
    """An ``AIRFLOW_CONN_...`` value for the fake (overrides: host, password, extra...)."""
    data: dict[str, Any] = {"conn_type": "together", "host": fake.base_url, "password": fake.api_key}
    data.update(overrides)
    return json.dumps(data)


def snapshot(root: Path) -> dict[str, str]:
    """path -> sha256 (files), "link -> target" (symlinks), "dir" (dirs), for every entry under root."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
