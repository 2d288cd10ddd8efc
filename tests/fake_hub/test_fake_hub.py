"""The fake Hub answers the real client as the Hub does: the paths trait_lora.models does not take
itself (paged listings, a missing file, a private repo, a resumed download) are checked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_hub import FakeHub

FILES = {"config.json": b"{}", "a/b/c.txt": b"abc", "a/d.txt": b"d", "model.safetensors": b"w" * 100}


def test_listings_page_by_link_header(hub_online: FakeHub) -> None:
    from huggingface_hub import HfApi

    hub_online.page_size = 2
    sha = hub_online.add_repo("acme/m", FILES)
    api = HfApi(endpoint=hub_online.endpoint, token=hub_online.token)
    tree = list(api.list_repo_tree("acme/m", recursive=True, revision=sha))
    assert {e.path for e in tree} == {*FILES, "a", "a/b"}
    assert hub_online.count(route="tree") == 3  # 6 entries, 2 a page
    lfs = next(e for e in tree if e.path == "model.safetensors")
    assert lfs.lfs is not None and lfs.lfs.size == 100
    assert {e.path for e in api.list_repo_tree("acme/m", revision=sha)} == {
        "a",
        "config.json",
        "model.safetensors",
    }


def test_errors_are_the_hubs(hub_online: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    hub_online.add_repo("acme/m", FILES)
    hub_online.add_repo("acme/secret", FILES, private=True)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("acme/m", "nope.json", cache_dir=tmp_path, endpoint=hub_online.endpoint)
    for token in (None, hub_online.new_token()):
        with pytest.raises(RepositoryNotFoundError) as caught:
            hf_hub_download("acme/secret", "config.json", cache_dir=tmp_path, token=token or False)
        assert caught.value.response.status_code == (401 if token is None else 404)
    path = hf_hub_download("acme/secret", "config.json", cache_dir=tmp_path, token=hub_online.token)
    assert Path(path).read_bytes() == b"{}"


def test_a_range_request_resumes(hub_online: FakeHub) -> None:
    import httpx2

    sha = hub_online.add_repo("acme/m", FILES)
    url = f"{hub_online.endpoint}/acme/m/resolve/{sha}/a/b/c.txt"
    answer = httpx2.get(url, headers={"Range": "bytes=1-"})
    assert (answer.status_code, answer.content, answer.headers["Content-Range"]) == (
        206,
        b"bc",
        "bytes 1-2/3",
    )
