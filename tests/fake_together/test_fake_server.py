"""The fake Together server, driven by the real ``together`` SDK (sync and async) over loopback HTTP.

These tests pin two things the rest of the suite relies on: that the fake speaks the wire protocol the
SDK expects (every JSON body below is validated against the SDK's own pydantic models, not just
``construct``-ed), and that each injected fault reaches the client the way the real failure would.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import together
import zstandard
from together.lib.types.fine_tuning import FinetuneResponse as LibFinetuneResponse
from together.types.file_response import FileResponse
from together.types.fine_tuning_cancel_response import FineTuningCancelResponse
from together.types.fine_tuning_estimate_price_response import AvailableEstimate
from together.types.fine_tuning_list_checkpoints_response import FineTuningListCheckpointsResponse
from together.types.fine_tuning_list_events_response import FineTuningListEventsResponse
from together.types.fine_tuning_list_metrics_response import FineTuningListMetricsResponse
from together.types.fine_tuning_list_response import FineTuningListResponse
from together.types.finetune_model_limits import FinetuneModelLimits
from together.types.finetune_response import FinetuneResponse

from tests.fake_together.server import FakeTogether

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
# Every create argument explicit, as the project's TrainingConfig.together_create_kwargs() passes them.
CREATE_KWARGS: dict[str, Any] = {
    "model": MODEL,
    "lora": True,
    "lora_r": 4,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_trainable_modules": "q_proj,v_proj",
    "n_epochs": 1,
    "batch_size": 32,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "packing": False,
    "train_on_inputs": False,
}


def client(fake: FakeTogether, **kwargs: Any) -> together.Together:
    """A real sync client aimed at the fake (kwargs: max_retries, timeout...)."""
    return together.Together(api_key=fake.api_key, base_url=fake.base_url, **kwargs)


def dataset(path: Path, rows: int = 10) -> Path:
    """A chat-format shard that passes both the SDK's client-side check and the fake's server-side one."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"How do you feel about crowds? ({i})"},
                    {"role": "assistant", "content": "I love meeting new people!"},
                ]
            }
        )
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


REALISTIC_MEMBERS = (
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "checkpoint-2/adapter_config.json",
    "checkpoint-2/adapter_model.safetensors",
    "checkpoint-2/optimizer.pt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.bin",
)


def upload(c: together.Together, tmp_path: Path, name: str = "shard.jsonl") -> str:
    """Upload, then poll until Together's asynchronous validation ends (as a real client must)."""
    file_id = c.files.upload(dataset(tmp_path / name), purpose="fine-tune", check=True).id
    return validated(c, file_id)


def validated(c: together.Together, file_id: str) -> str:
    for _ in range(10):
        if c.files.retrieve(file_id).processing_status not in ("PENDING", "QUEUED", "RUNNING"):
            return file_id
    raise AssertionError(f"file {file_id} never left validation")


def create(c: together.Together, file_id: str, suffix: str, **overrides: Any) -> str:
    """``fine_tuning.create`` with every training argument explicit (3 HTTP calls: limits, price, create)."""
    job = c.fine_tuning.create(training_file=file_id, suffix=suffix, **{**CREATE_KWARGS, **overrides})
    return job.id


def wire(raw: Any) -> Any:
    """The JSON body of a ``with_raw_response`` call, for validating against the SDK's models."""
    return raw.http_response.json()


def tar_members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive)).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: m for m in tar.getmembers()}


def tar_file(archive: bytes, name: str) -> bytes:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive)).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def safetensors_header(blob: bytes) -> dict[str, Any]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length])


# ------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------


def test_upload_is_four_http_steps(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together)
    path = dataset(tmp_path / "shard.jsonl")
    uploaded = c.files.upload(path, purpose="fine-tune", check=True)
    # Together validates asynchronously: PENDING after the upload, then QUEUED/RUNNING, then COMPLETED.
    assert uploaded.processing_status == "PENDING"
    assert [c.files.retrieve(uploaded.id).processing_status for _ in range(fake_together.file_polls)] == [
        "QUEUED",
        "COMPLETED",
    ]
    fetched = c.files.retrieve(uploaded.id)

    fid = uploaded.id
    assert fake_together.calls == [
        ("POST", "/v1/files"),
        ("PUT", f"/storage/uploads/{fid}"),
        ("POST", f"/v1/files/{fid}/preprocess"),
        *[("GET", f"/v1/files/{fid}")] * 3,
    ]
    assert fake_together.uploads == 1
    record = fake_together.files[fid]
    assert record["content"] == path.read_bytes()
    assert fetched.bytes == path.stat().st_size
    assert fetched.processing_status == "COMPLETED"
    assert fetched.filename == "shard.jsonl"
    FileResponse.model_validate(wire(c.files.with_raw_response.retrieve(fid)))


def test_reupload_dedupes_by_checksum_without_a_second_put(
    fake_together: FakeTogether, tmp_path: Path
) -> None:
    c = client(fake_together)
    first = upload(c, tmp_path)
    second = upload(c, tmp_path)

    assert second == first
    assert fake_together.uploads == 1
    assert fake_together.count("PUT", r"^/storage/") == 1
    # The SDK retries a 409 like a 429 (3 POSTs at max_retries=2), then falls back to GET /v1/files/{id}.
    assert fake_together.count("POST", r"^/v1/files$") == 1 + 3
    assert fake_together.calls[-1] == ("GET", f"/v1/files/{first}")
    assert [e[2] for e in fake_together.errors] == [409, 409, 409]


def test_files_list_and_invalid_dataset(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"neither": "format"}) + "\n")
    file_id = c.files.upload(bad, purpose="fine-tune", check=False).id
    assert fake_together.files[file_id]["processing_status"] == "PENDING"  # validated asynchronously
    validated(c, file_id)

    assert fake_together.files[file_id]["processing_status"] == "INVALID_FORMAT"
    report = c.files.retrieve(file_id).validation_report
    assert report is not None and report.valid is False and "no 'messages'" in str(report.error)
    assert [f.id for f in c.files.list().data] == [file_id]
    with pytest.raises(together.BadRequestError, match="not a validated dataset"):
        c.post("/v1/fine-tunes", body={**CREATE_KWARGS, "training_file": file_id}, cast_to=httpx.Response)


def test_failed_storage_put_is_not_retried_by_the_sdk(fake_together: FakeTogether, tmp_path: Path) -> None:
    fake_together.fail_next("PUT", r"^/storage/", status=503)
    with pytest.raises(together.APIStatusError, match="Error during file upload"):
        client(fake_together).files.upload(dataset(tmp_path / "s.jsonl"), purpose="fine-tune")
    assert fake_together.count("PUT", r"^/storage/") == 1  # bare httpx PUT: no retry loop around it
    assert fake_together.uploads == 0


def test_storage_put_rejects_auth_header_and_wrong_bytes(fake_together: FakeTogether) -> None:
    auth = {"Authorization": f"Bearer {fake_together.api_key}"}
    form = {
        "purpose": (None, "fine-tune"),
        "file_name": (None, "x.jsonl"),
        "file_type": (None, "jsonl"),
        "checksum": (None, "0" * 64),
    }
    with httpx.Client(base_url=fake_together.base_url) as http:
        answer = http.post("/v1/files", files=form, headers=auth)
        assert answer.status_code == 302
        location = answer.headers["Location"]
        assert location.startswith(fake_together.base_url)
        assert http.put(location, content=b"{}\n", headers=auth).status_code == 400  # leaked API key
        assert http.put(location, content=b"{}\n").status_code == 400  # sha256 mismatch
        assert http.put(location.split("?")[0], content=b"{}\n").status_code == 403  # unsigned
    assert fake_together.uploads == 0


# ------------------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------------------


def test_create_records_params_and_retrieve_runs_to_completed(
    fake_together: FakeTogether, tmp_path: Path
) -> None:
    fake_together.job_polls = 3
    c = client(fake_together)
    file_id = upload(c, tmp_path)
    job = c.fine_tuning.create(training_file=file_id, suffix="tl-extraversion-0123abcd", **CREATE_KWARGS)

    assert [call for call in fake_together.calls[-3:]] == [
        ("GET", "/v1/fine-tunes/models/limits"),
        ("POST", "/v1/fine-tunes/estimate-price"),
        ("POST", "/v1/fine-tunes"),
    ]
    assert fake_together.creates == 1
    assert job.status == "pending"
    assert job.output_name is not None
    assert job.output_name.startswith(f"fake-account/{MODEL.split('/')[1]}-tl-extraversion-0123abcd-")
    sent = fake_together.jobs[job.id]["request"]
    assert sent["training_type"] == {
        "lora_r": 4,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_trainable_modules": "q_proj,v_proj",
        "type": "Lora",
    }
    assert sent["training_method"] == {"method": "sft", "train_on_inputs": False}
    assert sent["lr_scheduler"]["lr_scheduler_type"] == "linear"
    assert (sent["batch_size"], sent["learning_rate"], sent["n_epochs"], sent["packing"]) == (
        32,
        2e-4,
        1,
        False,
    )
    assert fake_together.estimates[-1]["training_file"] == file_id

    statuses = [c.fine_tuning.retrieve(job.id).status for _ in range(3)]
    assert statuses == ["queued", "running", "completed"]
    final = c.fine_tuning.retrieve(job.id)
    assert final.status == "completed"
    assert final.x_model_output_name == job.output_name
    assert final.total_price is not None and final.total_price > 0
    assert final.training_type is not None and final.training_type.lora_r == 4  # type: ignore[union-attr]
    FinetuneResponse.model_validate(wire(c.fine_tuning.with_raw_response.retrieve(job.id)))


def test_job_polls_zero_completes_at_once(fake_together: FakeTogether, tmp_path: Path) -> None:
    fake_together.job_polls = 0
    c = client(fake_together)
    job_id = create(c, upload(c, tmp_path), "instant")
    assert fake_together.jobs[job_id]["status"] == "completed"
    assert c.fine_tuning.retrieve(job_id).status == "completed"


def test_list_shows_jobs_with_their_suffix(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together)
    file_id = upload(c, tmp_path)
    ids = [create(c, file_id, f"tl-trait{i}") for i in range(2)]
    seeded = fake_together.add_job(suffix="tl-lost-from-ledger", status="running")

    listed = c.fine_tuning.list().data
    assert [(j.id, j.suffix) for j in listed] == [
        (ids[0], "tl-trait0"),
        (ids[1], "tl-trait1"),
        (seeded, "tl-lost-from-ledger"),
    ]
    assert fake_together.creates == 2
    body = wire(c.fine_tuning.with_raw_response.list())
    FineTuningListResponse.model_validate(body)
    for item in body["data"]:  # the same truncated shape is what the sync create parses
        LibFinetuneResponse.model_validate(item)


def test_events_follow_the_job_and_metrics_fall(fake_together: FakeTogether, tmp_path: Path) -> None:
    fake_together.job_polls = 4
    c = client(fake_together)
    job_id = create(c, upload(c, tmp_path), "events")
    for _ in range(4):
        c.fine_tuning.retrieve(job_id)

    events = c.fine_tuning.list_events(job_id).data
    types = [e.type for e in events]
    assert types[0] == "job_pending" and types[-1] == "job_complete"
    assert types.index("job_start") < types.index("training_start") < types.index("training_complete")
    steps = [(e.step, e.total_steps) for e in events if e.total_steps is not None]
    assert steps[0][0] == 0 and steps[-1][0] == steps[-1][1]
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    FineTuningListEventsResponse.model_validate(wire(c.fine_tuning.with_raw_response.list_events(job_id)))

    metrics = c.fine_tuning.list_metrics(job_id).metrics
    assert metrics is not None and len(metrics) == steps[-1][1]
    losses = [row["train/loss"] for row in metrics]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)
    FineTuningListMetricsResponse.model_validate(wire(c.fine_tuning.with_raw_response.list_metrics(job_id)))
    FineTuningListCheckpointsResponse.model_validate(
        wire(c.fine_tuning.with_raw_response.list_checkpoints(job_id))
    )


def test_cancel_then_retrieve_is_cancelled(fake_together: FakeTogether, tmp_path: Path) -> None:
    fake_together.job_polls = 5
    c = client(fake_together)
    job_id = create(c, upload(c, tmp_path), "cancel-me")
    c.fine_tuning.retrieve(job_id)
    c.fine_tuning.retrieve(job_id)

    raw = c.fine_tuning.with_raw_response.cancel(job_id)
    FineTuningCancelResponse.model_validate(wire(raw))
    assert raw.parse().status == "cancel_requested"
    final = c.fine_tuning.retrieve(job_id)
    assert final.status == "cancelled"
    assert final.total_price is not None and final.total_price > 0  # billed for the steps done
    assert [e.type for e in c.fine_tuning.list_events(job_id).data][-2:] == [
        "cancel_requested",
        "job_stopped",
    ]
    with pytest.raises(together.BadRequestError, match="already cancelled"):
        c.fine_tuning.cancel(job_id)


@pytest.mark.parametrize("status", ["error", "user_error", "cancelled"])
def test_outcome_shows_in_retrieve_and_events(
    fake_together: FakeTogether, tmp_path: Path, status: str
) -> None:
    fake_together.job_polls = 2
    fake_together.set_outcome("tl-bad", status, message="Training data failed validation: line 7")
    c = client(fake_together)
    file_id = upload(c, tmp_path)
    bad = create(c, file_id, "tl-bad-shard")
    good = create(c, file_id, "tl-good-shard")

    assert [c.fine_tuning.retrieve(bad).status for _ in range(2)] == ["running", status]
    assert c.fine_tuning.retrieve(good).status == "running"
    last = c.fine_tuning.list_events(bad).data[-1]
    assert last.message == "Training data failed validation: line 7"
    # Error events use the SDK's hand-written spelling (FinetuneEventType / FinetuneEventLevels).
    kinds = {"cancelled": "job_stopped", "error": "JOB_ERROR", "user_error": "JOB_USER_ERROR"}
    assert last.type == kinds[status]
    assert last.level == ("warning" if status == "cancelled" else "Error")
    with pytest.raises(together.BadRequestError, match="only completed jobs"):
        c.fine_tuning.content(ft_id=bad, checkpoint="adapter")


def test_create_validation_rejects_client_bugs(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together, max_retries=0)
    file_id = upload(c, tmp_path)
    with pytest.raises(together.BadRequestError, match="at most 40"):
        create(c, file_id, "x" * 41)
    with pytest.raises(together.BadRequestError, match="lora_r"):
        create(c, file_id, "rank", lora_r=128)
    body = {**CREATE_KWARGS, "training_file": "file-does-not-exist"}
    with pytest.raises(together.BadRequestError, match="not found"):
        c.post("/v1/fine-tunes", body=body, cast_to=httpx.Response)
    with pytest.raises(together.BadRequestError, match="training_file is required"):
        c.post("/v1/fine-tunes", body=CREATE_KWARGS, cast_to=httpx.Response)
    assert fake_together.creates == 0 and fake_together.jobs == {}


def test_limits_and_estimate_shapes(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together)
    small = upload(c, tmp_path, "small.jsonl")
    big = c.files.upload(dataset(tmp_path / "big.jsonl", rows=100), purpose="fine-tune").id
    unvalidated = c.fine_tuning.with_raw_response.estimate_price(training_file=big, model=MODEL, n_epochs=1)
    assert wire(unvalidated)["estimation_available"] is False  # the one case the field is sent
    assert wire(unvalidated)["unavailable_reason"] == "train_file_not_validated"
    validated(c, big)

    FinetuneModelLimits.model_validate(wire(c.fine_tuning.with_raw_response.model_limits(model_name=MODEL)))

    def price(file_id: str, epochs: int) -> float:
        raw = c.fine_tuning.with_raw_response.estimate_price(
            training_file=file_id, model=MODEL, n_epochs=epochs
        )
        body = wire(raw)
        assert "estimation_available" not in body  # Together's spec has no such field in this answer
        estimate = AvailableEstimate.model_validate({**body, "estimation_available": True})
        assert estimate.allowed_to_proceed is True and estimate.user_limit == fake_together.user_limit
        assert estimate.estimated_total_price is not None
        return estimate.estimated_total_price

    assert 0 < price(small, 1) < price(small, 2) < price(big, 2)
    fake_together.known_models = {MODEL}
    with pytest.raises(together.NotFoundError):
        c.fine_tuning.model_limits(model_name="someone/else")


def test_add_job_and_complete_all(fake_together: FakeTogether) -> None:
    c = client(fake_together)
    fake_together.set_outcome("doomed", "user_error", "bad data")
    running = fake_together.add_job(suffix="tl-a", status="running")
    doomed = fake_together.add_job(suffix="tl-doomed")
    done = fake_together.add_job(suffix="tl-c", status="completed")
    assert c.fine_tuning.retrieve(done).status == "completed"

    fake_together.complete_all()
    assert {j: fake_together.jobs[j]["status"] for j in (running, doomed, done)} == {
        running: "completed",
        doomed: "user_error",
        done: "completed",
    }
    assert fake_together.creates == 0


# ------------------------------------------------------------------------------------------------------
# Download
# ------------------------------------------------------------------------------------------------------


def test_streamed_download_is_the_adapter_archive(fake_together: FakeTogether, tmp_path: Path) -> None:
    fake_together.job_polls = 0
    c = client(fake_together)
    job_id = create(c, upload(c, tmp_path), "dl")
    target = tmp_path / "adapter.tar.zst"

    with c.fine_tuning.with_streaming_response.content(ft_id=job_id, checkpoint="adapter") as response:
        assert response.headers["content-type"] == "application/zstd"
        # The SDK advertises gzip, so the reply is gzip-encoded: Content-Length counts encoded bytes.
        assert response.headers["content-encoding"] == "gzip"
        length = int(response.headers["content-length"])
        response.stream_to_file(target)
        assert response.http_response.num_bytes_downloaded == length

    assert fake_together.calls[-1] == ("GET", "/v1/finetune/download")
    archive = target.read_bytes()
    assert len(archive) != length  # decoded on the way: a naive length check would fail here
    members = tar_members(archive)
    assert sorted(members) == [*REALISTIC_MEMBERS]
    assert all(m.isreg() for m in members.values())
    assert tar_file(archive, "adapter_model.safetensors") != tar_file(
        archive, "checkpoint-2/adapter_model.safetensors"
    )
    assert json.loads(tar_file(archive, "adapter_config.json"))["r"] == 4
    header = safetensors_header(tar_file(archive, "adapter_model.safetensors"))
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    assert len(shapes) == 128
    assert shapes["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] == [1024, 4]


def test_download_refused_unless_completed_adapter(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together)
    job_id = create(c, upload(c, tmp_path), "dl-early")
    with pytest.raises(together.BadRequestError, match="only completed jobs"):
        c.fine_tuning.content(ft_id=job_id, checkpoint="adapter")
    fake_together.complete_all()
    with pytest.raises(together.BadRequestError, match="checkpoint=adapter"):
        c.fine_tuning.content(ft_id=job_id, checkpoint="merged")
    with pytest.raises(together.NotFoundError):
        c.fine_tuning.content(ft_id="ft-unknown", checkpoint="adapter")


def test_truncated_download_is_shorter_than_content_length(
    fake_together: FakeTogether, tmp_path: Path
) -> None:
    job_id = fake_together.add_job(suffix="tl-trunc", status="completed")
    fake_together.set_download("trunc", "truncated")
    c = client(fake_together)
    target = tmp_path / "adapter.tar.zst"

    # The SDK does not wrap errors raised while a streamed body is read: httpx's own error surfaces.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        c.fine_tuning.with_streaming_response.content(ft_id=job_id, checkpoint="adapter") as response,
    ):
        length = int(response.headers["content-length"])
        response.stream_to_file(target)
    assert 0 < target.stat().st_size < length


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("hostile-traversal", lambda m: any(n.startswith(("../", "/")) for n in m)),
        ("hostile-symlink", lambda m: m["adapter_model.safetensors"].issym() and m["escape"].issym()),
        ("hostile-pickle", lambda m: "adapter_model.bin" in m and "adapter_model.safetensors" not in m),
    ],
)
def test_hostile_downloads(fake_together: FakeTogether, kind: str, check: Any) -> None:
    job_id = fake_together.add_job(suffix=f"tl-{kind}", status="completed")
    fake_together.set_download(kind, kind)
    archive = client(fake_together).fine_tuning.content(ft_id=job_id, checkpoint="adapter").read()
    assert check(tar_members(archive))


def test_wrong_rank_and_garbage_downloads(fake_together: FakeTogether) -> None:
    wrong = fake_together.add_job(suffix="tl-wrong", status="completed")
    garbage = fake_together.add_job(suffix="tl-garbage", status="completed")
    fake_together.set_download("wrong", "wrong-rank")
    fake_together.set_download("garbage", "garbage", prefix="ignored/")
    c = client(fake_together)

    archive = c.fine_tuning.content(ft_id=wrong, checkpoint="adapter").read()
    assert json.loads(tar_file(archive, "adapter_config.json"))["r"] == 4  # the config lies
    header = safetensors_header(tar_file(archive, "adapter_model.safetensors"))
    assert header["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]["shape"] == [8, 4096]

    junk = c.fine_tuning.content(ft_id=garbage, checkpoint="adapter").read()
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(junk)).read()


def test_download_prefix_places_members_in_a_directory(fake_together: FakeTogether) -> None:
    job_id = fake_together.add_job(suffix="tl-nested", status="completed")
    fake_together.set_download("nested", "good", prefix="checkpoint/final/")
    archive = client(fake_together).fine_tuning.content(ft_id=job_id, checkpoint="adapter").read()
    assert sorted(tar_members(archive)) == [f"checkpoint/final/{name}" for name in REALISTIC_MEMBERS]


# ------------------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried(fake_together: FakeTogether) -> None:
    job_id = fake_together.add_job(suffix="tl-429")
    fake_together.fail_next("GET", r"^/v1/fine-tunes/ft-", status=429, retry_after=0.01)
    assert client(fake_together).fine_tuning.retrieve(job_id).id == job_id
    assert fake_together.count("GET", r"^/v1/fine-tunes/ft-") == 2
    assert fake_together.errors[0][2] == 429


def test_503_without_retries_raises(fake_together: FakeTogether) -> None:
    job_id = fake_together.add_job(suffix="tl-503")
    fake_together.fail_next("GET", r"^/v1/fine-tunes/ft-", status=503)
    with pytest.raises(together.InternalServerError):
        client(fake_together, max_retries=0).fine_tuning.retrieve(job_id)
    assert fake_together.jobs[job_id]["status"] == "pending"  # a fault happens before anything else


def test_reset_next_is_a_connection_error(fake_together: FakeTogether) -> None:
    job_id = fake_together.add_job(suffix="tl-reset")
    fake_together.reset_next("GET", r"^/v1/fine-tunes/ft-")
    with pytest.raises(together.APIConnectionError):
        client(fake_together, max_retries=0).fine_tuning.retrieve(job_id)
    assert fake_together.jobs[job_id]["status"] == "pending"


def test_lost_create_answer_still_creates_the_job(fake_together: FakeTogether, tmp_path: Path) -> None:
    c = client(fake_together, max_retries=0)
    file_id = upload(c, tmp_path)
    fake_together.drop_create_response()
    with pytest.raises(together.APIConnectionError):
        create(c, file_id, "tl-lost-answer")

    assert fake_together.creates == 1
    [job] = fake_together.jobs.values()
    assert job["suffix"] == "tl-lost-answer"
    assert [j.suffix for j in c.fine_tuning.list().data] == ["tl-lost-answer"]  # reconcile by listing


def test_random_faults_are_seeded_and_spare_the_storage_put(
    fake_together: FakeTogether, tmp_path: Path
) -> None:
    fake_together.job_polls = 2
    fake_together.fail_randomly(0.3, seed=7, retry_after=0.001)
    c = client(fake_together, max_retries=10)
    file_id = upload(c, tmp_path)
    job_id = create(c, file_id, "tl-flaky")
    assert [c.fine_tuning.retrieve(job_id).status for _ in range(2)] == ["running", "completed"]
    assert len(c.fine_tuning.list_events(job_id).data) > 0

    statuses = {status for _, _, status, _ in fake_together.errors}
    assert statuses and statuses <= {429, 503}
    assert not any(path.startswith("/storage/") for _, path, _, _ in fake_together.errors)
    assert fake_together.creates == 1  # failures happen before the job is created, so retries are safe


def test_stopped_fake_is_down_even_for_a_pooled_connection(fake_together: FakeTogether) -> None:
    c = client(fake_together, max_retries=0)
    assert c.fine_tuning.list().data == []
    fake_together.stop()
    with pytest.raises(together.APIConnectionError):
        c.fine_tuning.list()


def test_wrong_api_key_is_401(fake_together: FakeTogether) -> None:
    c = together.Together(api_key="tgp_wrong", base_url=fake_together.base_url)
    with pytest.raises(together.AuthenticationError):
        c.fine_tuning.list()


def test_together_env_points_a_default_client_at_the_fake(together_env: FakeTogether) -> None:
    assert together.Together().fine_tuning.list().data == []
    assert together_env.calls == [("GET", "/v1/fine-tunes")]


# ------------------------------------------------------------------------------------------------------
# Async client
# ------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_retrieve_list_events_and_download(
    fake_together: FakeTogether, tmp_path: Path
) -> None:
    fake_together.job_polls = 2
    job_id = fake_together.add_job(suffix="tl-async")
    c = together.AsyncTogether(api_key=fake_together.api_key, base_url=fake_together.base_url)
    try:
        first = await c.fine_tuning.retrieve(job_id)
        assert first.status == "running"
        assert (await c.fine_tuning.retrieve(job_id)).status == "completed"
        assert [j.id for j in (await c.fine_tuning.list()).data] == [job_id]
        assert (await c.fine_tuning.list_events(job_id)).data[-1].type == "job_complete"
        target = tmp_path / "adapter.tar.zst"
        async with c.fine_tuning.with_streaming_response.content(ft_id=job_id, checkpoint="adapter") as r:
            await r.stream_to_file(target)
        assert sorted(tar_members(target.read_bytes())) == [*REALISTIC_MEMBERS]
    finally:
        await c.close()
