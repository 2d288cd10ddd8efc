"""One exception type per failure a user must act on; every message says what to fix."""

from __future__ import annotations


class TraitLoraError(Exception):
    """Base for every error this project raises on purpose."""


class TraitNameError(TraitLoraError, ValueError):
    """A trait name that cannot be a shard stem (also guards paths and pod argv)."""


class ShardError(TraitLoraError):
    """A shard that fails validation; ``problems`` holds every ``path:line: message``."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class ConfigError(TraitLoraError, ValueError):
    """A training-config value out of range; the message names the field."""


class LedgerError(TraitLoraError):
    """A ledger file that cannot be trusted (corrupt, truncated, wrong shape)."""


class AdapterError(TraitLoraError):
    """An adapter (directory or archive) that must not be installed."""


class MappingError(TraitLoraError):
    """A hypernetwork mapping that would not satisfy its schema."""


class IntakeError(TraitLoraError):
    """A mapping whose adapters cannot become a stage-3 dataset; ``traits`` names the bad ones."""

    def __init__(self, message: str, traits: list[str] | None = None) -> None:
        super().__init__(message)
        self.traits = list(traits or [])
