"""One exception root so the CLI can turn every user mistake into one line and exit code 2."""

from __future__ import annotations

__all__ = [
    "HwsearchError",
    "PolicyError",
    "TableError",
    "DatasetError",
    "ModelError",
    "CheckpointError",
    "BudgetError",
    "ConfigError",
]


class HwsearchError(Exception):
    """Root of every error caused by user input (bad file, bad name, infeasible budget)."""


class PolicyError(HwsearchError):
    """A policy file or object is malformed or does not fit the model."""


class TableError(HwsearchError):
    """A cost table is malformed, or lacks an entry the search needs."""


class DatasetError(HwsearchError):
    """A dataset name or folder cannot be used."""


class ModelError(HwsearchError):
    """A model name or factory cannot be resolved."""


class CheckpointError(HwsearchError):
    """A checkpoint is missing, corrupt, unsafe or for another architecture."""


class BudgetError(HwsearchError):
    """A cost budget is malformed or cannot be met."""


class ConfigError(HwsearchError):
    """A configuration value is out of range."""
