"""The ledger as read once for planning: every hash record, and job records only when asked.

Planning N traits asks about each of them; a trait that skips never needs its job record, so a rerun
with nothing changed reads one record per trait, not two (what object storage charges for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trait_lora.core.storage.ledger_io import Record


@dataclass(frozen=True)
class LedgerView:
    """Both ledgers as read once: planning N traits asks about each of them."""

    output_dir: Path
    jobs: Mapping[str, Record]
    hashes: Mapping[str, Record]

    def job(self, trait: str) -> Record | None:
        return self.jobs.get(trait)

    def hash_record(self, trait: str) -> Record | None:
        return self.hashes.get(trait)


class JobsOnDemand(Mapping[str, Record]):
    """Job records read when first asked for (then kept: the view is a snapshot)."""

    def __init__(self, one: Callable[[str], Record | None], every: Callable[[], dict[str, Record]]) -> None:
        self._one, self._every_record = one, every
        self._seen: dict[str, Record | None] = {}
        self._all: dict[str, Record] | None = None

    def get(self, trait: str, default: Any = None) -> Any:
        if self._all is not None:
            return self._all.get(trait, default)
        if trait not in self._seen:
            self._seen[trait] = self._one(trait)
        found = self._seen[trait]
        return default if found is None else found

    def __getitem__(self, trait: str) -> Record:
        found = self.get(trait)
        if found is None:
            raise KeyError(trait)
        return found

    def _every(self) -> dict[str, Record]:
        if self._all is None:
            self._all = self._every_record()
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._every())

    def __len__(self) -> int:
        return len(self._every())
