"""The base model inside a trainer pod: the run's pin fetched into the pod's model cache.

A pod has no Airflow, so it cannot read the ``hf_conn_id`` connection the worker pins with; it gets
the same things by reference instead: the token from a Kubernetes Secret as ``HF_TOKEN`` (mounted only
for a Hub model), a mirror as ``HF_ENDPOINT``, the cache volume as ``HF_HUB_CACHE``, S3 credentials
from its own environment. The pin (``--model-pin``) is the one ``discover`` resolved, so every pod of a
run loads exactly the commit (or S3 digest) the other traits trained on; a pod that finds the pin in
its cache volume makes no request at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trait_lora.models import PinnedModel, materialize
from trait_lora.train.objects import register_s3_opener


def pod_model(pin_json: str, cache: str | None) -> tuple[Path, dict[str, Any]]:
    """The local folder of the pinned model, and its record (base model id, source, revision)."""
    pinned = PinnedModel.from_dict(json.loads(pin_json))
    register_s3_opener()  # s3:// models through boto3's own chain (the pod's Secret or service account)
    folder = Path(cache or os.environ.get("HF_HUB_CACHE") or "~/.cache/trait-lora/models").expanduser()
    path = materialize(
        pinned,
        folder,
        token=os.environ.get("HF_TOKEN") or None,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
        conn_id="the pod's HF_TOKEN Secret ([trait_lora] k8s_hf_secret)",
    )
    return path, pinned.record()
