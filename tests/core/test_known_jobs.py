"""The memory of Together job names: merged by every writer, never a reason to skip the seed's import."""

from __future__ import annotations

import json

from trait_lora.core.jobs.known_jobs import KNOWN_JOBS_KEY, JobNames
from trait_lora.core.jobs.ledger import JOBS_FILE, LEDGER_DIR, Ledger


def test_two_writers_merge_and_a_remembered_name_never_changes(tmp_path):
    one, two = Ledger(tmp_path).known_jobs(), Ledger(tmp_path).known_jobs()
    # the output name matters only where there is no suffix: kept only then
    assert one.remember({"ft-1": JobNames("joy-plus-0123", "acct/m-joy-plus-0123")}) == {
        "ft-1": JobNames("joy-plus-0123")
    }
    # the second writer learns the first one's names with its own write
    merged = two.remember(
        {"ft-2": JobNames(None, None), "ft-3": JobNames(None, "acct/m-0123"), "ft-1": JobNames("other")}
    )
    assert merged == {
        "ft-1": JobNames("joy-plus-0123"),
        "ft-2": JobNames(None),
        "ft-3": JobNames(None, "acct/m-0123"),
    }
    assert one.read() == merged
    on_disk = json.loads((tmp_path / KNOWN_JOBS_KEY).read_text())
    assert on_disk["jobs"] == {"ft-1": "joy-plus-0123", "ft-2": None, "ft-3": None}
    assert on_disk["output_names"] == {"ft-3": "acct/m-0123"}


def test_the_first_write_imports_a_seed_format_ledger_first(tmp_path):
    """``ledger/`` appearing is what ends the seed's import: the memory must not create it first."""
    (tmp_path / JOBS_FILE).write_text(json.dumps({"joy_plus": {"job_id": "ft-1", "status": "running"}}))
    ledger = Ledger(tmp_path)
    assert ledger.known_jobs().read() == {}
    assert not (tmp_path / LEDGER_DIR).exists()  # reading changes nothing
    ledger.known_jobs().remember({"ft-9": JobNames("x-1", None)})
    assert json.loads((tmp_path / LEDGER_DIR / "jobs" / "joy_plus.json").read_text())["job_id"] == "ft-1"
