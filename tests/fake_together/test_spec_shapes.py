"""Every answer the fake sends, in both modes, checked against Together's own OpenAPI spec.

``full`` must satisfy the spec too (the spec's required fields are present); ``spec-minimal`` must send
nothing beyond them except the fields ``shapes.DOCUMENTED`` names and the unknown extras, so that the
suite's spec-minimal runs prove our code needs no more than Together promises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.fake_together import shapes
from tests.fake_together.server import FakeTogether
from tests.fake_together.test_fake_server import CREATE_KWARGS, MODEL, client, dataset

# Values the fake sends on purpose although the spec's enums omit them (the real service does too:
# together-api notes): the ``user_error`` status, the SDK's hand-written capitalised event spellings.
DELIBERATE = {"user_error", "Error", "JOB_ERROR", "JOB_USER_ERROR"}


def check(schema: str | None, body: Any, *, response: str | None = None) -> list[str]:
    """Spec violations of ``body`` (validated as the named component schema or inline response)."""
    doc = shapes.spec()
    target = {"$ref": f"#/components/schemas/{schema}"} if schema else doc["responses"][response]
    validator = jsonschema.Draft202012Validator({**target, "components": doc["components"]})
    problems = []
    for error in validator.iter_errors(body):
        if error.validator in ("enum", "const") and error.instance in DELIBERATE:
            continue
        if error.validator == "format":
            continue
        problems.append(f"{'/'.join(map(str, error.absolute_path))}: {error.message}")
    return problems


def raw(fake: FakeTogether, method: str, path: str, **kwargs: Any) -> Any:
    reply = httpx.request(
        method, fake.base_url + path, headers={"Authorization": f"Bearer {fake.api_key}"}, **kwargs
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def create_body(file_id: str, suffix: str) -> dict[str, Any]:
    """The body SDK 3.1.1's ``create`` posts for CREATE_KWARGS. Posted directly: the SDK's own
    ``create`` fails on a spec-minimal limits answer (it reads ``lora_training``, which the spec does
    not require), which is why our hook hands it limits of its own (``answers.sdk_model_limits``)."""
    return {
        "training_file": file_id,
        "model": MODEL,
        "suffix": suffix,
        "n_epochs": CREATE_KWARGS["n_epochs"],
        "batch_size": CREATE_KWARGS["batch_size"],
        "learning_rate": CREATE_KWARGS["learning_rate"],
        "training_type": {
            "type": "Lora",
            "lora_r": 4,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "lora_trainable_modules": "q_proj,v_proj",
        },
        "training_method": {"method": "sft", "train_on_inputs": False},
        "lr_scheduler": {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.0}},
    }


def answers(fake: FakeTogether, tmp_path: Path) -> dict[str, tuple[str | None, str | None, Any]]:
    """One of each answer our code reads, as the wire carries it: name -> (schema, inline, body)."""
    c = client(fake)
    file_id = c.files.upload(dataset(tmp_path / "shard.jsonl"), purpose="fine-tune", check=True).id
    first = raw(fake, "GET", f"/v1/files/{file_id}")
    for _ in range(5):
        raw(fake, "GET", f"/v1/files/{file_id}")
    limits = raw(fake, "GET", "/v1/fine-tunes/models/limits", params={"model_name": MODEL})
    estimate = raw(fake, "POST", "/v1/fine-tunes/estimate-price", json={"training_file": file_id})
    job_id = raw(fake, "POST", "/v1/fine-tunes", json=create_body(file_id, "spec-check"))["id"]
    listed = raw(fake, "GET", "/v1/fine-tunes")
    running = raw(fake, "GET", f"/v1/fine-tunes/{job_id}")
    fake.complete_all()
    done = raw(fake, "GET", f"/v1/fine-tunes/{job_id}")
    other = raw(fake, "POST", "/v1/fine-tunes", json=create_body(file_id, "spec-cancel"))["id"]
    return {
        "file (validating)": ("FileResponse", None, first),
        "file (validated)": ("FileResponse", None, raw(fake, "GET", f"/v1/files/{file_id}")),
        "files": ("FileList", None, raw(fake, "GET", "/v1/files")),
        "limits": ("FineTuneModelLimits", None, limits),
        "estimate": (None, "POST /v1/fine-tunes/estimate-price", estimate),
        "jobs": ("FinetuneTruncatedList", None, listed),
        "job (running)": ("FinetuneResponse", None, running),
        "job (completed)": ("FinetuneResponse", None, done),
        "events": ("FinetuneListEvents", None, raw(fake, "GET", f"/v1/fine-tunes/{job_id}/events")),
        "checkpoints": (
            "FinetuneListCheckpoints",
            None,
            raw(fake, "GET", f"/v1/fine-tunes/{job_id}/checkpoints"),
        ),
        "metrics": (
            None,
            "GET /v1/fine-tunes/{id}/metrics",
            raw(fake, "GET", f"/v1/fine-tunes/{job_id}/metrics"),
        ),
        "cancel": ("FinetuneResponseTruncated", None, raw(fake, "POST", f"/v1/fine-tunes/{other}/cancel")),
    }


@pytest.mark.parametrize("mode", shapes.MODES)
def test_every_answer_satisfies_the_spec(mode, tmp_path):
    with FakeTogether(answers=mode) as fake:
        seen = answers(fake, tmp_path)
    problems = {name: check(s, body, response=r) for name, (s, r, body) in seen.items()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_spec_minimal_answers_carry_only_what_the_spec_requires(tmp_path):
    with FakeTogether(answers="spec-minimal") as fake:
        seen = answers(fake, tmp_path)
    allowed_extra = set(shapes.UNKNOWN)
    for name, (schema, _, body) in seen.items():
        if schema is None:
            continue
        items = body.get("data") if schema.endswith(("List", "Events", "Checkpoints")) else [body]
        item_schema = {
            "FileList": "FileResponse",
            "FinetuneTruncatedList": "FinetuneResponseTruncated",
            "FinetuneListEvents": "FineTuneEvent",
            "FinetuneListCheckpoints": "FineTuneCheckpoint",
        }.get(schema, schema)
        allowed = (
            set(shapes.required(item_schema)) | set(shapes.DOCUMENTED.get(item_schema, ())) | allowed_extra
        )
        for item in items:
            assert set(item) <= allowed, (name, sorted(set(item) - allowed))
            assert set(shapes.UNKNOWN) <= set(item), name
    # The inconvenient parts, spelled out: no processing_status, a Processed flag instead; limits
    # without lora_training or sequence lengths (SDK 3.1.1 declares all of them required).
    assert "processing_status" not in seen["file (validating)"][2]
    assert seen["file (validating)"][2]["Processed"] is False
    assert seen["file (validated)"][2]["Processed"] is True
    limits = seen["limits"][2]
    for missing in ("lora_training", "default_gradient_accumulation_steps", "max_seq_length_dpo"):
        assert missing not in limits
