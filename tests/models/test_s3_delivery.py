"""An S3 model folder pinned by its listing and copied once into the cache (moto over HTTP).

What a user would notice: the model is copied once and reused by every later trait and run; a
re-uploaded file gives a new pin and a fresh copy; a file replaced after the run pinned the model
fails the copy (never half old, half new) and leaves nothing behind in the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.s3 import S3Server
from trait_lora.core.storage import opener
from trait_lora.core.storage.location import Location
from trait_lora.core.storage.objects import S3Store
from trait_lora.models import ModelDeliveryError, ModelKind, PinnedModel, materialize, resolve

FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"\x00" * 4096,
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def s3(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The bucket reached the way a trainer pod reaches it: an s3 opener with its own client. Counts
    the GetObject calls, so a test sees whether anything was copied."""
    client = s3_server.client()
    gets: list[str] = []
    client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"])
    )

    def open_s3(loc: Location) -> S3Store:
        return S3Store(client, loc.bucket, loc.prefix, location=loc.url)

    monkeypatch.setitem(opener._OPENERS, "s3", open_s3)
    for name, data in FILES.items():
        client.put_object(Bucket=s3_bucket, Key=f"models/tiny/{name}", Body=data)
    client.put_object(Bucket=s3_bucket, Key="models/tiny/", Body=b"")  # a console's folder marker
    client.put_object(Bucket=s3_bucket, Key="models/tiny-other/config.json", Body=b"{}")  # not ours
    return {"client": client, "bucket": s3_bucket, "gets": gets, "url": f"s3://{s3_bucket}/models/tiny"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_copied_once_then_reused_until_an_object_changes(s3: dict[str, Any], tmp_path: Path) -> None:
    pinned = resolve(s3["url"])
    assert pinned.ref.kind is ModelKind.S3 and pinned.pin is not None and pinned.pin.startswith("sha256:")
    assert [o.key for o in pinned.objects] == sorted(FILES)
    assert pinned.record()["base_model_revision"] == pinned.pin

    folder = materialize(PinnedModel.from_dict(pinned.to_dict()), tmp_path)
    assert _files(folder) == FILES
    assert len(s3["gets"]) == len(FILES)

    assert materialize(resolve(s3["url"]), tmp_path) == folder  # the next trait, the next run
    assert len(s3["gets"]) == len(FILES), "an unchanged model must not be copied again"

    s3["client"].put_object(Bucket=s3["bucket"], Key="models/tiny/config.json", Body=b'{"model_type": "x"}')
    changed = resolve(s3["url"])
    assert changed.pin != pinned.pin
    new_folder = materialize(changed, tmp_path)
    assert new_folder != folder and (new_folder / "config.json").read_bytes() == b'{"model_type": "x"}'
    assert _files(folder) == FILES  # the copy an earlier run pinned is untouched


def test_an_object_replaced_after_the_pin_fails_the_copy_and_leaves_nothing(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    pinned = resolve(s3["url"])
    s3["client"].put_object(Bucket=s3["bucket"], Key="models/tiny/tokenizer/tokenizer.json", Body=b"{}")
    with pytest.raises(ModelDeliveryError, match=r"tokenizer/tokenizer.json changed .* start a new run"):
        materialize(pinned, tmp_path)
    assert not any((tmp_path / "s3").iterdir()), "a failed copy must leave no folder, whole or partial"

    # A pin that travelled without its listing is checked against the bucket before anything is copied.
    bare = PinnedModel(pinned.ref, pinned.pin)
    with pytest.raises(ModelDeliveryError, match=r"changed since the run pinned it .* start a new run"):
        materialize(bare, tmp_path)


def test_a_folder_that_is_not_a_model(s3: dict[str, Any]) -> None:
    with pytest.raises(
        ModelDeliveryError, match=r"s3://.*/models/nothing-here has no config.json .*no objects"
    ):
        resolve(f"s3://{s3['bucket']}/models/nothing-here")
