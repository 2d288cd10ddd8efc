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
    assert confine("s3://team-bucket/trait-lora/run-1", roots, what="output_dir", setting="storage_roots")
    for outside in (
        str(tmp_path / "outputs-evil"),
        "/etc",
        "s3://team-bucket/other",
        "s3://other-bucket/trait-lora",
    ):
        with pytest.raises(LocationError, match=r"outside the locations.*\[trait_lora\] storage_roots"):
            confine(outside, roots, what="output_dir", setting="storage_roots")


def test_a_conf_may_not_borrow_a_connection_its_root_does_not_name():
    """s3://conn@bucket/... reads and writes as ``conn``: a user allowed to trigger runs must not reach
    an allowed prefix with another identity (or another endpoint) than the deployment chose."""
    roots = ["s3://team-bucket/trait-lora", "s3://team_s3@shared-bucket/stage2"]

    def ok(text: str) -> bool:
        try:
            confine(text, roots, what="output_dir", setting="storage_roots", default_conn="aws_default")
        except LocationError:
            return False
        return True

    # a root naming none: none, or the deployment's default connection by name
    assert ok("s3://team-bucket/trait-lora/a") and ok("s3://aws_default@team-bucket/trait-lora/a")
    # a root naming one: exactly that one (the default is another identity there)
    assert ok("s3://team_s3@shared-bucket/stage2/x")
    assert not ok("s3://shared-bucket/stage2/x") and not ok("s3://aws_default@shared-bucket/stage2/x")
    with pytest.raises(LocationError) as refused:
        confine(
            "s3://admin_conn@team-bucket/trait-lora/a",
            roots,
            what="output_dir",
            setting="storage_roots",
            default_conn="aws_default",
        )
    message = str(refused.value)
    assert "'admin_conn'" in message and "[trait_lora] storage_roots" in message
    assert "[trait_lora] storage_conn_id = 'aws_default'" in message and "Nothing was read" in message
    # the form's pattern agrees, text for text
    schema = {"type": "string", "pattern": root_pattern(roots, "aws_default")}
    for text in (
        "s3://team-bucket/trait-lora/a",
        "s3://aws_default@team-bucket/trait-lora/a",
        "s3://team_s3@shared-bucket/stage2/x",
        "s3://admin_conn@team-bucket/trait-lora/a",
        "s3://shared-bucket/stage2/x",
        "s3://aws_default@shared-bucket/stage2",
        "s3://a@b@team-bucket/trait-lora",
    ):
        try:
            jsonschema.validate(text, schema)
            matched = True
        except jsonschema.ValidationError:
            matched = False
        assert matched == ok(text), text


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
    schema = {"type": "string", "pattern": root_pattern(roots, "aws_default")}
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
        "s3://other_conn@team-bucket/trait-lora",
    ]
    for text in accepted:
        jsonschema.validate(text, schema)
        confine(text, roots, what="output_dir", setting="storage_roots", default_conn="aws_default")
    for text in refused:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(text, schema)
    # the browser checks the pattern too: it must be a valid ECMAScript regex in unicode mode (no
    # identity escapes such as \- or \_), which Python's re.escape would write
    assert not re.search(r"\\[-_a-zA-Z]", root_pattern(roots).replace(r"\.", ""))


def test_no_roots_allows_nothing():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("/anything", {"type": "string", "pattern": root_pattern([])})
