"""Locations as URLs, and the roots a run's conf may point into.

A run's conf is user input: whoever may trigger a run must not be able to upload every ``*.jsonl`` a
worker can read, or overwrite another team's ``hypernetwork_data.json`` that stage 3 trusts.
"""

from __future__ import annotations

import os
import re

import jsonschema
import pytest

from trait_lora.core.storage.location import LocationError, confine, parse_location, root_pattern


def test_local_paths_file_urls_and_s3_urls_parse():
    assert parse_location("/srv/out").path is not None and parse_location("/srv/out").is_local
    assert parse_location("file:///srv/out").path == parse_location("/srv/out").path
    s3 = parse_location("s3://team_s3@team-bucket/trait-lora/outputs/")
    assert (s3.bucket, s3.prefix, s3.conn_id) == ("team-bucket", "trait-lora/outputs", "team_s3")
    assert s3.url == "s3://team_s3@team-bucket/trait-lora/outputs"
    assert s3.public_url == "s3://team-bucket/trait-lora/outputs"  # no connection id in records
    assert (
        parse_location("s3://team-bucket").prefix == "" and parse_location("s3://team-bucket").conn_id is None
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty"),
        ("gs://bucket/x", r"gs:// \(not supported yet\).*s3://\[conn_id@\]bucket/prefix"),
        ("ftp://host/x", "ftp:// is not one trait-lora stores to"),
        ("file://relative/x", "needs an absolute path"),
        ("s3://Bad_Bucket/x", "not an S3 bucket name"),
        ("s3://bucket/a/../b", r"contains '\.' or '\.\.'"),
        ("/srv/out/../etc", r"contains '\.' or '\.\.'"),
    ],
)
def test_a_location_we_cannot_use_says_what_would_work(text, says):
    with pytest.raises(LocationError, match=says):
        parse_location(text, what="output_dir")


def test_confine_accepts_the_roots_and_below_and_refuses_the_rest_naming_the_setting(tmp_path):
    root = tmp_path / "outputs"
    (root / "team-a").mkdir(parents=True)
    roots = [str(root), "s3://team-bucket/trait-lora"]
    assert confine(str(root), roots, what="output_dir", setting="storage_roots").path == root
    assert confine(str(root / "team-a"), roots, what="output_dir", setting="storage_roots")
    assert confine(
        "s3://conn@team-bucket/trait-lora/run-1", roots, what="output_dir", setting="storage_roots"
    )
    for outside in (
        str(tmp_path / "outputs-evil"),
        "/etc",
        "s3://team-bucket/other",
        "s3://other-bucket/trait-lora",
    ):
        with pytest.raises(LocationError, match=r"outside the locations.*\[trait_lora\] storage_roots"):
            confine(outside, roots, what="output_dir", setting="storage_roots")


def test_a_symlink_leading_out_of_a_root_is_refused(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    os.symlink(secret, root / "escape")
    (root / "fine").mkdir()
    os.symlink(root / "fine", root / "inside-link")
    assert confine(str(root / "inside-link"), [str(root)], what="shards_dir", setting="storage_roots")
    with pytest.raises(LocationError, match="outside the locations"):
        confine(str(root / "escape"), [str(root)], what="shards_dir", setting="storage_roots")


def test_the_form_pattern_accepts_exactly_what_confine_accepts_by_text():
    roots = ["/opt/airflow/outputs", "/opt/airflow/include/sample-shards", "s3://team-bucket/trait-lora"]
    schema = {"type": "string", "pattern": root_pattern(roots)}
    accepted = [
        "/opt/airflow/outputs",
        "/opt/airflow/outputs/",
        "/opt/airflow/outputs/team-a",
        "file:///opt/airflow/outputs/x",
        "/opt/airflow/include/sample-shards",
        "s3://team-bucket/trait-lora",
        "s3://aws_default@team-bucket/trait-lora/run-7",
    ]
    refused = [
        "/opt/airflow/outputs-evil",
        "/opt/airflow/outputs/../dags",
        "/opt/airflow/outputs/..",
        "/opt/airflow/outputs/./x",
        "/opt/airflow",
        "outputs",
        "/etc/passwd",
        "s3://team-bucket/trait-lora-other",
        "s3://team-bucket/other",
        "s3://evil-bucket/trait-lora",
    ]
    for text in accepted:
        jsonschema.validate(text, schema)
        confine(text, roots, what="output_dir", setting="storage_roots")
    for text in refused:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(text, schema)
    # the browser checks the pattern too: it must be a valid ECMAScript regex in unicode mode (no
    # identity escapes such as \- or \_), which Python's re.escape would write
    assert not re.search(r"\\[-_a-zA-Z]", root_pattern(roots).replace(r"\.", ""))


def test_no_roots_allows_nothing():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("/anything", {"type": "string", "pattern": root_pattern([])})
