"""Skips that CI turns into failures: ``HWSEARCH_CI=1`` (set by ``.ci/run``) means data or an optional
dependency a test is meant to check must be there, so its absence fails the run instead of hiding in a skip.

Outside CI (a laptop without ``../shared/reference``) the same tests skip as before.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

__all__ = ["CI_VAR", "in_ci", "requires", "check_requirements", "import_or_skip"]

CI_VAR = "HWSEARCH_CI"


def in_ci() -> bool:
    """Whether missing test data must fail the run (``HWSEARCH_CI`` set to anything but ``""``/``0``)."""
    return os.environ.get(CI_VAR, "") not in ("", "0")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} ({CI_VAR}=1: CI must check this, so its absence is a failure, not a skip)")
    pytest.skip(reason)


def requires(ok: bool, reason: str) -> pytest.MarkDecorator:
    """Marker: run the test when ``ok``; else skip it, or fail it under CI.

    ``tests/conftest.py`` acts on it before any fixture is set up, so a fixture that reads the missing data
    never runs (it would error instead of skipping). Whether CI is on is read at run time.
    """
    return pytest.mark.hwsearch_requires(ok=bool(ok), reason=reason)


def check_requirements(item: pytest.Item) -> None:
    """Skip or fail ``item`` for the first unmet :func:`requires` marker (called from ``pytest_runtest_setup``)."""
    for mark in item.iter_markers("hwsearch_requires"):
        if not mark.kwargs["ok"]:
            _missing(mark.kwargs["reason"])


def import_or_skip(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` that fails instead under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(reason)
        raise  # unreachable: _missing raises
