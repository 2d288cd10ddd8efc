import json
import multiprocessing as mp

import pytest

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.ledger import HASHES_FILE, JOBS_FILE, LEDGER_DIR, Ledger

SHA = "a" * 64


def _hammer(output_dir: str, worker: int, rounds: int) -> None:
    ledger = Ledger(output_dir)
    for i in range(rounds):
        ledger.update_job(f"w{worker}_plus", job_id=f"ft-{worker}-{i}", status="running", job_key=SHA)
        ledger.record_adapter(
            f"w{worker}_plus", shard_sha256=SHA, config_hash=SHA, job_key=SHA, adapter_sha256=f"{i:064d}"
        )


def test_concurrent_writers_on_different_traits_lose_nothing(tmp_path):
    workers, rounds = 8, 25
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, rounds)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ledger = Ledger(tmp_path)
    jobs, hashes = ledger.jobs(), ledger.hashes()
    assert sorted(jobs) == sorted(f"w{w}_plus" for w in range(workers))
    assert all(jobs[f"w{w}_plus"]["job_id"] == f"ft-{w}-{rounds - 1}" for w in range(workers))
    assert all(hashes[f"w{w}_plus"]["adapter_sha256"] == f"{rounds - 1:064d}" for w in range(workers))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content", [b'{"joy_plus": {"job_id": "ft-1"', b"\xff\xfe", b"[1, 2]", b'{"joy_plus": 3}']
)
def test_corrupt_ledger_is_an_error_and_is_left_untouched(tmp_path, content):
    path = tmp_path / JOBS_FILE
    path.write_bytes(content)
    ledger = Ledger(tmp_path)
    with pytest.raises(LedgerError) as err:
        ledger.jobs()
    assert str(path) in str(err.value)
    with pytest.raises(LedgerError):
        ledger.update_job("joy_plus", job_id="ft-2")
    assert path.read_bytes() == content  # never silently reset
    assert not (tmp_path / LEDGER_DIR).exists()  # nor imported half-way


def test_truncated_ledger_error_names_line_and_remedy(tmp_path):
    (tmp_path / HASHES_FILE).write_text('{\n  "joy_plus": {\n    "shard_sha256": "ab')
    with pytest.raises(
        LedgerError, match=r"file_hashes.json:3: hash ledger is corrupt or truncated.*Restore"
    ):
        Ledger(tmp_path).hashes()


def test_new_job_key_replaces_the_old_job_record(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_key="k1", job_id="ft-1", file_id="file-1", shard_sha256=SHA)
    ledger.update_job("joy_plus", status="running")
    assert ledger.job("joy_plus")["file_id"] == "file-1"
    assert ledger.find_uploaded_file(SHA) == "file-1"
    ledger.update_job("joy_plus", job_key="k2", status="pending")
    assert "job_id" not in ledger.job("joy_plus")
    on_disk = json.loads((tmp_path / LEDGER_DIR / "jobs" / "joy_plus.json").read_text())
    assert on_disk["job_key"] == "k2"


def test_bad_trait_name_never_reaches_the_ledger(tmp_path):
    with pytest.raises(ValueError, match="invalid trait name"):
        Ledger(tmp_path).update_job("../etc_plus", job_id="x")
    assert not (tmp_path / JOBS_FILE).exists()


def test_record_adapter_requires_the_verified_adapter_hash(tmp_path):
    with pytest.raises(LedgerError, match="adapter_sha256"):
        Ledger(tmp_path).record_adapter("joy_plus", shard_sha256=SHA, config_hash=SHA, job_key=SHA)


def _rewrite_big_records(output_dir: str, worker: int, rounds: int) -> None:
    ledger = Ledger(output_dir)
    for i in range(rounds):  # ~20 KB per record: a torn write would be visible to a reader
        ledger.update_job(f"big{worker}_plus", job_key=SHA, status="running", note=f"{i:05d}" * 4000)


def test_readers_without_the_lock_never_see_a_torn_ledger(tmp_path):
    """Readers (the planner, the dashboard) read without the lock: only temp + rename makes that safe."""
    Ledger(tmp_path).update_job("seed_plus", job_key=SHA, status="running")
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_rewrite_big_records, args=(str(tmp_path), w, 40)) for w in range(3)]
    for p in writers:
        p.start()
    reads = torn = 0
    records = tmp_path / LEDGER_DIR / "jobs"
    while any(p.is_alive() for p in writers) or reads < 200:
        for path in [records / "seed_plus.json", *(records / f"big{w}_plus.json" for w in range(3))]:
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                continue  # not written yet
            except ValueError:
                torn += 1
            else:
                assert data["job_key"] == SHA
            reads += 1
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    assert torn == 0, f"{torn} of {reads} unlocked reads saw a partly written ledger record"
    assert len(Ledger(tmp_path).jobs()) == 4


def _seed_ledger(out):
    """An output dir as the seed scripts (or this project before ``ledger/``) left it."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = {
        "joy_plus": {
            "job_id": "ft-1",
            "status": "running",
            "job_key": "k1",
            "file_id": "file-1",
            "shard_sha256": SHA,
        },
        "calm_minus": {"job_id": "ft-2", "status": "completed", "job_key": "k2"},
    }
    hashes = {
        "calm_minus": {"shard_sha256": SHA, "config_hash": SHA, "job_key": "k2", "adapter_sha256": "b" * 64}
    }
    (out / JOBS_FILE).write_text(json.dumps(jobs))
    (out / HASHES_FILE).write_text(json.dumps(hashes))
    return jobs, hashes


def test_a_seed_format_ledger_is_read_then_imported_on_the_first_write(tmp_path):
    jobs, hashes = _seed_ledger(tmp_path)
    ledger = Ledger(tmp_path)
    assert ledger.jobs() == jobs and ledger.hash_record("calm_minus") == hashes["calm_minus"]
    assert not (tmp_path / LEDGER_DIR).exists()  # reading changes nothing
    # the running job still holds its slot after the import, and its upload is still reusable
    assert set(ledger.claim_job_slot("new_plus", job_key="k3", cap=1)) == {"joy_plus"}
    assert (tmp_path / LEDGER_DIR / "jobs" / "joy_plus.json").is_file()
    assert ledger.find_uploaded_file(SHA) == "file-1"
    ledger.record_job_end("joy_plus", job_id="ft-1", status="completed")
    assert ledger.claim_job_slot("new_plus", job_key="k3", cap=1) == {}
    assert ledger.jobs()["calm_minus"] == jobs["calm_minus"] and ledger.hashes() == hashes
    assert json.loads((tmp_path / JOBS_FILE).read_text()) == jobs  # a snapshot until the next mapping
    ledger.write_snapshots()
    assert json.loads((tmp_path / JOBS_FILE).read_text()) == ledger.jobs()
    assert json.loads((tmp_path / HASHES_FILE).read_text()) == hashes


def test_a_seed_format_entry_that_is_no_trait_stops_the_import_unchanged(tmp_path):
    (tmp_path / JOBS_FILE).write_text(json.dumps({"../x_plus": {"job_id": "ft-1"}}))
    with pytest.raises(LedgerError, match=r"lora_job_ids.json: entry '../x_plus' is not a trait name"):
        Ledger(tmp_path).update_job("joy_plus", job_id="ft-2")
    assert not (tmp_path / LEDGER_DIR).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_corrupt_record_is_an_error_that_names_it_and_is_left_untouched(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_key="k1", job_id="ft-1", status="running")
    path = tmp_path / LEDGER_DIR / "jobs" / "joy_plus.json"
    path.write_text('{\n  "job_id": "ft-1",\n  "sta')
    with pytest.raises(LedgerError, match=r"joy_plus.json:3: job ledger record is corrupt.*Restore"):
        ledger.job("joy_plus")
    with pytest.raises(LedgerError, match=r"joy_plus\.json"):
        ledger.update_job("joy_plus", status="completed")
    assert path.read_text().endswith('"sta')
    ledger.update_job("calm_minus", job_key="k2", status="pending")  # other traits carry on


def test_an_update_rewrites_only_that_traits_record(tmp_path):
    """One file per ledger rewrote every trait's record on every update: O(traits^2) bytes per run."""
    ledger = Ledger(tmp_path)
    traits = [f"t{i}_plus" for i in range(40)]
    for trait in traits:
        ledger.update_job(trait, job_key="k", job_id=f"ft-{trait}", status="completed")
        ledger.record_adapter(trait, shard_sha256=SHA, config_hash=SHA, job_key="k", adapter_sha256=SHA)
    before = {p: p.stat().st_ino for p in (tmp_path / LEDGER_DIR).rglob("*.json")}
    ledger.update_job("t7_plus", status="cancelled", note="by hand")
    after = {p: p.stat().st_ino for p in (tmp_path / LEDGER_DIR).rglob("*.json")}
    changed = sorted(p.relative_to(tmp_path).as_posix() for p in after if before.get(p) != after[p])
    assert changed == ["ledger/jobs/t7_plus.json"]
    assert not (tmp_path / JOBS_FILE).exists()  # the seed-format snapshot waits for the mapping


def test_a_stale_in_flight_entry_left_by_a_dead_worker_frees_its_slot_at_the_cap(tmp_path):
    """The in-flight index is written before a record enters flight and after it leaves; a worker that
    died between the two leaves an entry for a job that ended, which must not hold a slot forever."""
    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_key="k1", job_id="ft-1", status="running")
    index = tmp_path / LEDGER_DIR / "in_flight.json"
    left = index.read_text()
    ledger.record_job_end("joy_plus", job_id="ft-1", status="completed")
    assert json.loads(index.read_text()) == {}
    index.write_text(left)  # as if the worker died after the record write
    assert ledger.claim_job_slot("calm_minus", job_key="k2", cap=1) == {}
    assert set(json.loads(index.read_text())) == {"calm_minus"}


def test_the_dashboard_skips_an_unreadable_record_that_every_writer_is_told_about(tmp_path):
    from trait_lora.core.handoff.report import trait_rows

    ledger = Ledger(tmp_path)
    ledger.update_job("joy_plus", job_id="ft-1", status="running", job_key=SHA)
    ledger.update_job("calm_minus", job_id="ft-2", status="running", job_key=SHA)
    broken = tmp_path / LEDGER_DIR / "jobs" / "calm_minus.json"
    broken.write_text('{"job_id": "ft-2", "sta')  # a hand edit gone wrong
    with pytest.raises(LedgerError, match=r"calm_minus\.json"):
        ledger.jobs()
    with pytest.raises(LedgerError, match=r"calm_minus\.json"):
        ledger.update_job("calm_minus", status="completed")
    assert list(ledger.jobs(tolerant=True)) == ["joy_plus"]
    assert [(row.trait, row.state) for row in trait_rows(tmp_path)] == [("joy_plus", "in flight")]
    assert broken.read_text() == '{"job_id": "ft-2", "sta'  # nothing rewrote it


def test_the_uploaded_file_index_has_one_shape_however_it_was_written(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / JOBS_FILE).write_text(json.dumps({"joy_plus": {"file_id": "file-1", "file_sha256": "b" * 64}}))
    Ledger(seed).update_job("calm_minus", file_id="file-2", file_sha256="c" * 64, job_key=SHA)
    entries = {
        p.stem[:1]: json.loads(p.read_text()) for p in (seed / LEDGER_DIR / "files").glob("*.json")
    }
    assert entries == {
        "b": {"file_id": "file-1", "trait": "joy_plus"},  # imported from the seed file
        "c": {"file_id": "file-2", "trait": "calm_minus"},  # written by an upload
    }
    assert Ledger(seed).find_uploaded_file("b" * 64) == "file-1"


def test_the_dashboard_reads_what_it_can_of_a_seed_file_and_skips_a_record_it_cannot_open(tmp_path):
    from trait_lora.core.handoff.report import trait_rows

    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / JOBS_FILE).write_text(
        json.dumps({"joy_plus": {"job_id": "ft-1", "status": "running"}, "calm_minus": 3, "../x": {}})
    )
    with pytest.raises(LedgerError, match="calm_minus"):
        Ledger(seed).jobs()  # a writer is told which entry to fix
    assert Ledger(seed).jobs(tolerant=True) == {"joy_plus": {"job_id": "ft-1", "status": "running"}}
    assert [row.trait for row in trait_rows(seed)] == ["joy_plus"]

    ledger = Ledger(tmp_path / "out")
    ledger.update_job("joy_plus", job_id="ft-1", status="running", job_key=SHA)
    (tmp_path / "out" / LEDGER_DIR / "jobs" / "calm_minus.json").mkdir()  # not a file at all
    with pytest.raises(IsADirectoryError):
        ledger.job("calm_minus")  # whoever reads or writes that trait is told
    with pytest.raises(IsADirectoryError):
        ledger.update_job("calm_minus", status="running")
    assert list(ledger.jobs(tolerant=True)) == ["joy_plus"]
