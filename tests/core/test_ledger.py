import json
import multiprocessing as mp

import pytest

from trait_lora.core.errors import LedgerError
from trait_lora.core.ledger import HASHES_FILE, JOBS_FILE, Ledger

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
    on_disk = json.loads((tmp_path / JOBS_FILE).read_text())
    assert on_disk["joy_plus"]["job_key"] == "k2"


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
    path = tmp_path / JOBS_FILE
    while any(p.is_alive() for p in writers) or reads < 200:
        try:
            data = json.loads(path.read_text())
        except ValueError:
            torn += 1
        else:
            assert "seed_plus" in data
        reads += 1
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    assert torn == 0, f"{torn} of {reads} unlocked reads saw a partly written ledger"
    assert len(json.loads(path.read_text())) == 4
