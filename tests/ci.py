"""Skips that CI turns into failures: ``HWSEARCH_CI=1`` (set by ``.ci/run``) means data or an optional
dependency a test is meant to check must be there, so its absence fails the run instead of hiding in a skip.

Outside CI (a laptop without ``../shared/reference``) the same tests skip as before.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import pytest

__all__ = ["CI_VAR", "in_ci", "requires", "import_or_skip"]

CI_VAR = "HWSEARCH_CI"
F = TypeVar("F", bound=Callable[..., Any])


def in_ci() -> bool:
    """Whether missing test data must fail the run (``HWSEARCH_CI`` set to anything but ``""``/``0``)."""
    return os.environ.get(CI_VAR, "") not in ("", "0")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} ({CI_VAR}=1: CI must check this, so its absence is a failure, not a skip)")
    pytest.skip(reason)


def requires(ok: bool, reason: str) -> Callable[[F], F]:
    """Decorator: run the test when ``ok``; else skip it, or fail it under CI. Read at run time, not import."""

    def deco(fn: F) -> F:
        if ok:
            return fn

        @functools.wraps(fn)
        def missing(*args: Any, **kwargs: Any) -> None:
            _missing(reason)

        return missing  # type: ignore[return-value]

    return deco


def import_or_skip(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` that fails instead under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(reason)
        raise  # unreachable: _missing raises
