"""``trait_lora.models`` is imported by DAG-time code and by the trainer pod: importing it must not pull
in Airflow or torch, nor the Hub or AWS clients (each is imported inside the call that needs it)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("airflow", "torch", "transformers", "huggingface_hub", "boto3", "botocore")


def test_importing_models_loads_no_heavy_library() -> None:
    code = (
        "import sys, trait_lora.models, trait_lora.models.hub, trait_lora.models.s3\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
