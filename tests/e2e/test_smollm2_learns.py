"""A real pretrained model learns its trait: SmolLM2-135M-Instruct, a few epochs of one trait on CPU.

The tiny random model shows the plumbing; only a real model can show that an adapter learned a trait
rather than the chat format. Trained through the trainer's own argv (as a backend runs it), on the first
24 examples of each pole of the sample ``joy`` axis, 20% held out by content.

In ``make e2e``, not ``make test``: a minute of real training on two cores, the one test that shows
learning rather than wiring (``make test`` keeps the conversion and the trainer's own tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.airflow import SAMPLE_SHARDS
from tests.train.conftest import converted  # noqa: F401  (the session fixture, shared with tests/train)

pytestmark = pytest.mark.e2e

N_EXAMPLES = 24


def test_a_smollm2_adapter_beats_the_base_model_on_its_trait_and_prefers_its_own_pole(converted, tmp_path):  # noqa: F811
    model_dir, _ = converted
    for trait in ("joy_plus", "joy_minus"):
        lines = (SAMPLE_SHARDS / f"{trait}.jsonl").read_text().splitlines()[:N_EXAMPLES]
        (tmp_path / f"{trait}.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "backend": "local",
        "local_model": str(model_dir),
        "eval_fraction": 0.2,
        "batch_size": 4,
        "n_epochs": 2,
        "learning_rate": 1e-3,  # the seed's r=4 on q_proj/v_proj; a higher rate to learn in 10 steps
    }
    argv = [sys.executable, "-m", "trait_lora.train", "--shard", str(tmp_path / "joy_plus.jsonl")]
    argv += ["--out", str(tmp_path / "adapter"), "--max-length", "256", "--config-json", json.dumps(config)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])["eval"]
    print(f"\nSmolLM2 joy_plus held-out figures: {json.dumps(figures, sort_keys=True)}")
    assert figures["n_held_out"] >= 4 and figures["opposite_trait"] == "joy_minus"
    # It learned: its own held-out examples are clearly likelier than under the base model...
    assert figures["adapter_loss"] < figures["base_loss"] - 0.1
    # ...and it learned the trait, not only the format: its own pole gained more than the opposite one.
    assert figures["prefers_own_pole"] and figures["own_pole_margin"] > 0.05
    assert Path(tmp_path / "adapter" / "adapter_model.safetensors").is_file()
