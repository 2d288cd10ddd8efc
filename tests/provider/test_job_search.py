"""The duplicate-job guard on an account with a history listed without names (real SDK, fake server).

The whole-DAG view (one list per launch, no job read whole twice over two runs, one job per key) is in
``test_launch_idempotency``; here, what the memory of job names must never do: hide a job when it is
lost or unreadable, or make launches that start together each read the whole history.
"""

from __future__ import annotations

from trait_lora.core.jobs.known_jobs import KNOWN_JOBS_KEY, JobNames
from trait_lora.core.jobs.ledger import Ledger
from trait_lora.provider.hooks.job_search import READ_BATCH, jobs_by_tag
from trait_lora.provider.hooks.together import TogetherHook

TAG = "0123456789abcdef"


def test_an_unreadable_memory_costs_reads_never_a_second_job(together_conn, tmp_path, capfd):
    fake = together_conn
    fake.list_shows_names = False
    fake.add_past_jobs(20)
    ours = fake.add_job(suffix=f"joy-plus-{TAG}", status="running")
    memory = tmp_path / KNOWN_JOBS_KEY
    memory.parent.mkdir(parents=True)
    memory.write_text('{"format": 1, "jobs": {')  # a torn write, or a bad hand edit
    found = TogetherHook().find_existing_job(TAG, known=Ledger(tmp_path).known_jobs())
    assert found is not None and found["id"] == ours
    assert fake.count("GET", r"^/v1/fine-tunes/ft-[^/]+$") == 21  # every job read whole, as before
    assert memory.read_text() == '{"format": 1, "jobs": {'  # left for the user to look at
    said = capfd.readouterr().out
    assert "ledger/together_jobs.json:1: memory of Together job names is corrupt" in said
    assert "move it aside" in said


def test_launches_that_start_together_share_the_history_instead_of_each_reading_it(together_conn, tmp_path):
    fake = together_conn
    fake.list_shows_names = False
    ids = [*fake.add_past_jobs(3 * READ_BATCH), fake.add_job(suffix=f"joy-plus-{TAG}", status="running")]
    hook = TogetherHook()
    beside = Ledger(tmp_path).known_jobs()
    reads: list[str] = []

    def read(job_id: str) -> dict | None:
        if not reads:  # meanwhile, a launch beside this one reads the whole history and remembers it
            beside.remember(
                {j: JobNames(fake.jobs[j]["suffix"], fake.jobs[j]["model_output_name"]) for j in ids}
            )
        reads.append(job_id)
        return hook.get_job(job_id)

    found = jobs_by_tag(hook.list_jobs(), [TAG], read=read, known=Ledger(tmp_path).known_jobs())
    assert len(reads) == READ_BATCH  # its first batch; the memory named the rest
    assert [job["id"] for job in found[TAG]] == [ids[-1]]
