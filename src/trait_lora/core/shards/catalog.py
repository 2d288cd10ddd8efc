"""Shard discovery: which files in a directory are trainable traits, and which are not.

A trait is the file stem of ``<axis>_plus.jsonl`` / ``<axis>_minus.jsonl``. The same name rule also
guards every place a trait name reaches a path, a Together suffix or a pod's argv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from trait_lora.core.errors import TraitNameError

TRAIT_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}_(plus|minus)$"
TRAIT_RE = re.compile(TRAIT_PATTERN)
SHARD_SUFFIX = ".jsonl"
DIRECTIONS = {"plus": 1, "minus": -1}


def check_trait_name(name: str) -> str:
    """Return ``name`` when it is a valid trait, else raise with what a valid one looks like."""
    if not isinstance(name, str) or not TRAIT_RE.fullmatch(name):
        raise TraitNameError(
            f"invalid trait name {name!r}: expected <axis>_plus or <axis>_minus, lower-case "
            f"letters, digits and '_' only, starting with a letter or digit (pattern {TRAIT_PATTERN})"
        )
    return name


def parse_trait(name: str) -> tuple[str, int]:
    """Split a trait into its axis and direction (+1 for ``_plus``, -1 for ``_minus``)."""
    check_trait_name(name)
    axis, _, direction = name.rpartition("_")
    return axis, DIRECTIONS[direction]


def opposite_trait(name: str) -> str:
    """The other pole of a trait's axis: ``wisdom_plus`` <-> ``wisdom_minus``."""
    axis, direction = parse_trait(name)
    return f"{axis}_{'minus' if direction > 0 else 'plus'}"


@dataclass(frozen=True)
class Shard:
    trait: str
    axis: str
    direction: int
    path: Path  # a local file: the shard itself, or this worker's copy of a shard on object storage
    source: str = ""  # the object's URL when ``path`` is a copy (``remote.discover_remote_shards``)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class IgnoredFile:
    path: Path
    reason: str


@dataclass
class Discovery:
    directory: Path | str  # a folder, or the URL of a location on object storage
    shards: dict[str, Shard] = field(default_factory=dict)
    ignored: list[IgnoredFile] = field(default_factory=list)

    def select(self, traits: list[str] | None) -> list[Shard]:
        """The shards for ``traits`` (all when empty); unknown names are an error listing the known."""
        if not traits:
            return [self.shards[t] for t in sorted(self.shards)]
        for name in traits:
            check_trait_name(name)
        unknown = sorted(set(traits) - set(self.shards))
        if unknown:
            raise TraitNameError(
                f"no shard for trait(s) {', '.join(unknown)} in {self.directory}; "
                f"available: {', '.join(sorted(self.shards)) or '(none)'}"
            )
        return [self.shards[t] for t in dict.fromkeys(traits)]


def discover_shards(directory: str | Path) -> Discovery:
    """Find trait shards in ``directory`` (not recursive); everything else is reported as ignored."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(
            f"shards directory {root} does not exist or is not a directory; "
            "pass --shards-dir or set AIRFLOW__TRAIT_LORA__SHARDS_DIR"
        )
    found = Discovery(directory=root)
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix != SHARD_SUFFIX:
            found.ignored.append(IgnoredFile(path, f"not a {SHARD_SUFFIX} file"))
            continue
        if path.is_symlink() or not path.is_file():
            found.ignored.append(IgnoredFile(path, "not a regular file"))
            continue
        stem = path.stem
        if not TRAIT_RE.fullmatch(stem):
            found.ignored.append(
                IgnoredFile(path, f"name is not a trait ({TRAIT_PATTERN}); rename it to train it")
            )
            continue
        axis, direction = parse_trait(stem)
        found.shards[stem] = Shard(stem, axis, direction, path)
    return found
