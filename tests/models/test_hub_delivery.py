"""A Hub model pinned and delivered through the real huggingface_hub client, against the fake Hub.

What a user would notice: the run trains on the commit it pinned even after the branch moves; a second
run downloads nothing; a gated repo, a wrong token, a missing repo or revision fail before training
with a message naming the connection and the model, and the token shows up nowhere.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub
from trait_lora.models import (
    ModelDeliveryError,
    ModelKind,
    PinnedModel,
    materialize,
    parse_model_ref,
    resolve,
)

REPO = "acme/tiny-llama"
CONFIG = b'{"model_type": "llama", "hidden_size": 8}'
WEIGHTS = bytes(range(256)) * 40  # LFS on the Hub: served through the fake's CDN
FILES = {
    "config.json": CONFIG,
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
    "model.safetensors": WEIGHTS,
    "original/consolidated.00.pth": b"the same weights again, in Meta's format",
    "pytorch_model.bin": b"and pickled",
}


def _every_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def _no_token_in(token: str, exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "the client's DEBUG logs were not captured: the check below would prove nothing"
    assert token not in _every_text(exc)
    assert all(token not in record.getMessage() for record in caplog.records)


def test_pin_download_and_a_second_run_that_asks_nothing(
    hub_online: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = hub_online
    sha = hub.add_repo(REPO, FILES, gated=True)
    caplog.set_level(logging.DEBUG)

    pinned = resolve(REPO, token=hub.token, endpoint=hub.endpoint)
    assert (pinned.ref.kind, pinned.pin) == (ModelKind.HUB, sha)
    assert pinned.record() == {"base_model": REPO, "base_model_source": "hub", "base_model_revision": sha}
    assert hub.count(route="info") == 1 and hub.count(method="HEAD") == 1  # the file access check

    # What the worker hands a trainer travels as JSON and comes back the same.
    pinned = PinnedModel.from_dict(pinned.to_dict())
    folder = materialize(pinned, tmp_path / "cache", token=hub.token, endpoint=hub.endpoint)
    assert folder.name == sha
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert got == {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert "/_cdn/" in " ".join(hub.downloads())  # the weights came from the CDN...
    assert hub.cdn_authorizations == [None]  # ...which never saw the token
    assert all(r.token == hub.token for r in hub.requests if r.route != "cdn"), hub.requests

    before = len(hub.requests)
    again = materialize(pinned, tmp_path / "cache", token=hub.token, endpoint=hub.endpoint)
    assert again == folder
    assert len(hub.requests) == before, "a second run of the same pin must not ask the Hub anything"
    assert all(hub.token not in record.getMessage() for record in caplog.records)
    assert hub.token not in repr(pinned) and hub.token not in str(pinned.to_dict())


def test_the_pin_holds_when_the_branch_moves(hub_online: FakeHub, tmp_path: Path) -> None:
    hub = hub_online
    first = hub.add_repo(REPO, FILES)
    hub.tag(REPO, "v1", first)
    pinned = resolve(REPO, token=hub.token, endpoint=hub.endpoint)
    second = hub.commit(REPO, {"config.json": b'{"model_type": "llama", "hidden_size": 16}'})
    assert second != first

    # Every trait of the run materializes the pin taken in discover: the first commit.
    folder = materialize(pinned, tmp_path, token=hub.token, endpoint=hub.endpoint)
    assert (folder / "config.json").read_bytes() == CONFIG

    assert resolve(REPO, token=hub.token, endpoint=hub.endpoint).pin == second  # a new run: new commit
    assert resolve(f"{REPO}@v1", token=hub.token, endpoint=hub.endpoint).pin == first
    at_first = resolve(f"{REPO}@{first}", token=hub.token, endpoint=hub.endpoint)
    assert at_first.pin == first and at_first.ref.revision == first


def test_a_wrong_token_fails_naming_the_connection(
    hub_online: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = hub_online
    hub.add_repo(REPO, FILES)
    caplog.set_level(logging.DEBUG)
    wrong = "hf_not_a_token_the_hub_knows_0123456789"
    with pytest.raises(ModelDeliveryError) as caught:
        resolve(REPO, token=wrong, endpoint=hub.endpoint, conn_id="hf_mirror")
    message = str(caught.value)
    assert "'hf_mirror'" in message and REPO in message and "refused the token" in message
    assert "401" in message
    _no_token_in(wrong, caught.value, caplog)


def test_a_gated_repo_without_access(hub_online: FakeHub, caplog: pytest.LogCaptureFixture) -> None:
    hub = hub_online
    hub.add_repo(REPO, FILES, gated=True)
    caplog.set_level(logging.DEBUG)
    stranger = hub.new_token()  # a valid account that never accepted the licence
    with pytest.raises(ModelDeliveryError) as caught:
        resolve(REPO, token=stranger, endpoint=hub.endpoint)
    message = str(caught.value)
    assert "gated" in message and "'huggingface_default'" in message and "accept the licence" in message
    assert f"{hub.endpoint}/{REPO}" in message
    _no_token_in(stranger, caught.value, caplog)

    with pytest.raises(ModelDeliveryError, match=r"gated .* 'huggingface_default' has no token"):
        resolve(REPO, token=None, endpoint=hub.endpoint)
    assert hub.requests[-1].token is None  # anonymous means anonymous, never a token found on the machine


def test_a_missing_repo_or_revision(hub_online: FakeHub) -> None:
    hub = hub_online
    hub.add_repo(REPO, FILES)
    with pytest.raises(ModelDeliveryError, match=r"acme/no-such-model not found .* 'huggingface_default'"):
        resolve("acme/no-such-model", token=hub.token, endpoint=hub.endpoint)
    with pytest.raises(ModelDeliveryError, match=r"revision 'v9' does not exist in acme/tiny-llama"):
        resolve(f"{REPO}@v9", token=hub.token, endpoint=hub.endpoint)
    hub.add_repo("acme/gguf-only", {"model.gguf": b"gguf"})
    with pytest.raises(ModelDeliveryError, match=r"has no config.json .* not a transformers model"):
        resolve("acme/gguf-only", token=hub.token, endpoint=hub.endpoint)


def test_what_a_base_model_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "local-copy").mkdir(parents=True)
    local = parse_model_ref("acme/local-copy")  # a folder that exists here wins, as in from_pretrained
    assert local.kind is ModelKind.LOCAL and local.path == tmp_path / "acme" / "local-copy"
    assert parse_model_ref("./models/x").kind is ModelKind.LOCAL
    hub = parse_model_ref("meta-llama/Llama-3.1-8B-Instruct@refs/pr/7")
    assert (hub.kind, hub.repo_id, hub.revision) == (
        ModelKind.HUB,
        "meta-llama/Llama-3.1-8B-Instruct",
        "refs/pr/7",
    )
    s3 = parse_model_ref("s3://models_conn@my-bucket/llama/8b")
    assert s3.kind is ModelKind.S3 and s3.location is not None and s3.location.conn_id == "models_conn"
    assert s3.public_text == "s3://my-bucket/llama/8b"
    for bad in ("", "gs://bucket/model", "acme/a/b", "acme/bad--name", "s3://Bad_Bucket/x"):
        with pytest.raises(ModelDeliveryError, match="base_model"):
            parse_model_ref(bad)
