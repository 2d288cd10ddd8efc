"""`trait-lora train` migrates its Airflow metadata DB once: a rerun on the same home starts without the
~4 s no-op `airflow db migrate`, and anything that could make the DB need one (another Airflow version,
a DB at another schema revision, a deleted or emptied DB file, another database) migrates again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from trait_lora import embedded


@pytest.fixture
def migrations(airflow_db, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every `airflow db migrate` the CLI starts (the worker's DB is already at Airflow's head)."""
    seen: list[list[str]] = []

    def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(embedded.subprocess, "run", run)
    return seen


def test_a_rerun_skips_the_migration_until_the_db_or_airflow_changes(migrations, tmp_path: Path) -> None:
    embedded.migrate_db(tmp_path)
    assert [argv[1:] for argv in migrations] == [["db", "migrate"]]
    embedded.migrate_db(tmp_path)
    assert len(migrations) == 1, "the same DB at the same Airflow version was migrated again"

    stamp = tmp_path / embedded.MIGRATED_STAMP
    older = {**json.loads(stamp.read_text()), "airflow": "3.0.0"}
    stamp.write_text(json.dumps(older))
    embedded.migrate_db(tmp_path)
    assert len(migrations) == 2, "an upgraded Airflow must migrate"

    # the DB now records another revision than the stamp (recreated, restored from a backup...)
    other_revision = {**json.loads(stamp.read_text()), "revision": "0000000000"}
    stamp.write_text(json.dumps(other_revision))
    embedded.migrate_db(tmp_path)
    assert len(migrations) == 3

    stamp.write_text("{half a stamp")
    embedded.migrate_db(tmp_path)
    assert len(migrations) == 4
    embedded.migrate_db(tmp_path)
    assert len(migrations) == 4


def test_a_failed_migration_stops_the_run_and_leaves_no_stamp(airflow_db, monkeypatch, tmp_path) -> None:
    def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1, "", "sqlite3.OperationalError: database is locked")

    monkeypatch.setattr(embedded.subprocess, "run", run)
    with pytest.raises(SystemExit, match=r"airflow db migrate failed:\n.*database is locked"):
        embedded.migrate_db(tmp_path)
    assert not (tmp_path / embedded.MIGRATED_STAMP).exists()


def test_an_empty_or_missing_db_file_is_always_migrated(airflow_db, monkeypatch, tmp_path) -> None:
    """A DB file deleted, or recreated empty by another command, has no schema revision to match."""
    from airflow.configuration import conf

    empty = tmp_path / "airflow.db"
    empty.touch()
    real_get = conf.get
    monkeypatch.setattr(
        conf,
        "get",
        lambda *a, **kw: (
            f"sqlite:///{empty}" if a[:2] == ("database", "sql_alchemy_conn") else real_get(*a, **kw)
        ),
    )
    assert embedded._db_identity() is None
    empty.unlink()
    assert embedded._db_identity() is None
