"""What Together's jobs are called, remembered: the duplicate-job guard reads each past job whole once.

Before every create the guard looks for a job already paid for under the key, by the key's tag in a
job's suffix (``keys.job_suffix``). Together's list has no paging, and the spec promises a list entry
only its id, status and timestamps: an entry that shows neither a suffix nor an output name has to be
read whole to be told apart. A job's suffix and output name are set when it is created and never
change, so what one read learned holds forever: it is kept here, one record in the output location
(``ledger/together_jobs.json``), merged by compare-and-swap like every ledger record, and no job is
read whole again, however long the account's history grows. A launch also adds the job it created,
so sibling launches never read it.

The record is a memory, not a source of truth: losing it costs reads, never a second job (the guard
then reads every unnamed entry whole again and remembers it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trait_lora.core.jobs.seed_format import LEDGER_DIR
from trait_lora.core.storage.ledger_io import Record
from trait_lora.core.storage.records import read_versioned, swap
from trait_lora.core.storage.store import Store

KNOWN_JOBS_KEY = f"{LEDGER_DIR}/together_jobs.json"
WHAT = "memory of Together job names"
FORMAT = 1


@dataclass(frozen=True)
class JobNames:
    """A job's suffix and output name as Together reported them when the job was read whole (either
    may be None: a job created without a suffix has none, forever). Matching needs the output name
    only where there is no suffix (``answers.job_matches_tag``), so only then is it kept."""

    suffix: str | None
    output_name: str | None = None

    def kept(self) -> JobNames:
        return JobNames(self.suffix, None) if self.suffix else self

    def fields(self) -> dict[str, str]:
        """The job-object fields these names fill in (the keys Together's answers use)."""
        out = {}
        if self.suffix:
            out["suffix"] = self.suffix
        if self.output_name:
            out["model_output_name"] = self.output_name
        return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse(record: Record | None) -> dict[str, JobNames]:
    """id -> names from the record: ``jobs`` (id -> suffix or null) and ``output_names`` (id -> output
    name, for jobs without a suffix). An entry of another shape (a hand edit) is left out: that job
    is read whole again, which is safe."""
    jobs = (record or {}).get("jobs")
    output_names = (record or {}).get("output_names")
    if not isinstance(jobs, dict):
        return {}
    if not isinstance(output_names, dict):
        output_names = {}
    return {
        str(job_id): JobNames(_text(suffix), _text(output_names.get(job_id)))
        for job_id, suffix in jobs.items()
        if suffix is None or isinstance(suffix, str)
    }


def unparse(names: Mapping[str, JobNames]) -> Record:
    return {
        "format": FORMAT,
        "jobs": {job_id: n.suffix for job_id, n in names.items()},
        "output_names": {job_id: n.output_name for job_id, n in names.items() if n.output_name},
    }


class KnownJobs:
    """The memory of one output location (``store``).

    ``prepare`` runs before the first write: the ledger passes its layout step, so that a local folder
    still holding only the seed's ledger files imports them before ``ledger/`` first exists."""

    def __init__(self, store: Store, prepare: Callable[[], None] | None = None) -> None:
        self.store = store
        self._prepare = prepare

    def read(self) -> dict[str, JobNames]:
        """Every job remembered: id -> names. LedgerError (naming the record) if it is unreadable."""
        record, _ = read_versioned(self.store, KNOWN_JOBS_KEY, what=WHAT)
        return parse(record)

    def remember(self, names: Mapping[str, JobNames]) -> dict[str, JobNames]:
        """Add ``names`` (a job already remembered keeps its names: they never change) and return
        everything remembered now, the other writers' additions included. Nothing new: no write."""
        result: dict[str, JobNames] = {}

        def change(old: Record | None) -> Record | None:
            known = parse(old)
            new = {job_id: n.kept() for job_id, n in names.items() if job_id and job_id not in known}
            result.clear()
            result.update(known)
            if not new:
                return old
            result.update(new)
            return unparse(result)

        if not names:
            return self.read()
        if self._prepare is not None:
            self._prepare()
        swap(self.store, KNOWN_JOBS_KEY, what=WHAT, change=change)
        return dict(result)
