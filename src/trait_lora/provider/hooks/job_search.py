"""The duplicate-job guard's search: Together's jobs whose suffix carries a key's tag, from one list.

Together's list has no paging and the spec promises a list entry only its id, status and timestamps.
An entry that shows a suffix or an output name is matched as it is; one that shows neither is matched
by the names remembered for it (``core.jobs.known_jobs``), and only a job never seen before is read
whole, once ever: what that read learned is remembered for every later launch. So a launch costs one
list plus the reads of jobs nobody has read yet, however long the account's history.

Unread jobs are read in a random order and remembered batch by batch, the memory's newest content
coming back with each write: launches that start side by side on an empty memory (the first run
after an upgrade, many traits at once) share the history between them instead of each reading all
of it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from trait_lora.core.errors import LedgerError
from trait_lora.core.jobs.known_jobs import JobNames, KnownJobs
from trait_lora.provider.hooks.answers import job_matches_tag, output_name

READ_BATCH = 50  # whole reads between two writes of the memory

Job = dict[str, Any]


def names_of(job: Job) -> JobNames:
    return JobNames(job.get("suffix") or None, output_name(job))


def jobs_by_tag(
    entries: Iterable[Job],
    tags: Sequence[str],
    *,
    read: Callable[[str], Job | None],
    known: KnownJobs | None = None,
    log: logging.Logger | Any = None,
) -> dict[str, list[Job]]:
    """tag -> the listed jobs whose suffix (or, failing that, output name) carries it, newest first.

    ``entries``: one answer of ``GET /v1/fine-tunes``. ``read``: a whole job by id, None when Together
    no longer has it (a job deleted since the list cannot be adopted). ``known``: the memory of job
    names; None reads every unnamed entry whole (as before there was one).
    """
    log = log or logging.getLogger(__name__)
    memory = _Memory(known, log)
    names = memory.recall()
    named: list[Job] = []
    unread: list[Job] = []
    for entry in entries:
        job_id = str(entry.get("id") or "")
        if entry.get("suffix") or output_name(entry) or not job_id:
            named.append(entry)
        elif job_id in names:
            named.append({**entry, **names[job_id].fields()})
        else:
            unread.append(entry)
    if unread:
        log.info("reading %d job(s) whole that Together listed without a suffix or output name", len(unread))
    random.shuffle(unread)
    while unread:
        batch, unread = unread[:READ_BATCH], unread[READ_BATCH:]
        learned: dict[str, JobNames] = {}
        for entry in batch:
            job_id = str(entry["id"])
            whole = read(job_id)
            if whole is None:
                continue
            job = {**entry, **whole}
            named.append(job)
            # Together gives every job an output name: an answer with neither name may be cut short,
            # so it is not remembered (read again next time, never trusted to say "not ours" forever)
            if names_of(job).fields():
                learned[job_id] = names_of(job)
        names = memory.add(learned)
        left = []
        for entry in unread:  # read meanwhile by a launch beside this one
            remembered = names.get(str(entry["id"]))
            if remembered is None:
                left.append(entry)
            else:
                named.append({**entry, **remembered.fields()})
        unread = left
    newest_first = sorted(named, key=lambda j: str(j.get("created_at") or ""), reverse=True)
    return {tag: [job for job in newest_first if job_matches_tag(job, tag)] for tag in dict.fromkeys(tags)}


def adoptable(job: Job, log: Any) -> bool:
    """Adopt a job unless it failed or is being cancelled; a status nobody documented is adopted too
    (and said loudly): duplicating a job whose status we cannot read would pay twice."""
    from trait_lora.core.jobs.job_status import JobStatus

    status = JobStatus.of(job.get("status"))
    if not status.is_known:
        log.warning(
            "job %s has status %r, which this version does not know; adopting and polling it "
            "(never starting a duplicate) until Together reports an end",
            job.get("id"),
            status.value,
        )
    if not status.is_adoptable:
        log.info("job %s is %s; not adopting it", job.get("id"), status)
    return status.is_adoptable


class _Memory:
    """The memory, or nothing when it cannot be read: the guard then reads whole (costs requests, never
    a second job) and says where the record is, once."""

    def __init__(self, known: KnownJobs | None, log: Any) -> None:
        self.known = known
        self.log = log

    def _lost(self, exc: Exception) -> dict[str, JobNames]:
        self.log.warning("%s. Until then, jobs are read whole without it (this costs requests only)", exc)
        self.known = None
        return {}

    def recall(self) -> dict[str, JobNames]:
        if self.known is None:
            return {}
        try:
            return self.known.read()
        except LedgerError as exc:
            return self._lost(exc)

    def add(self, names: dict[str, JobNames]) -> dict[str, JobNames]:
        if self.known is None or not names:
            return {}
        try:
            return self.known.remember(names)
        except LedgerError as exc:
            return self._lost(exc)
