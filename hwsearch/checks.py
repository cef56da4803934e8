"""Value checks for config ``__post_init__``s: one wording for one mistake, and ``True`` is never a number."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import cast

from hwsearch.errors import ConfigError, HwsearchError

__all__ = ["check_int", "check_number", "check_choice"]


def check_int(
    value: object,
    what: str,
    minimum: int | None = None,
    below: int | None = None,
    error: type[HwsearchError] = ConfigError,
) -> int:
    """``value`` as an ``int`` in ``[minimum, below)`` (either end open when ``None``), else ``error``."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and ((minimum is not None and value < minimum) or (below is not None and value >= below)):  # type: ignore[operator]  # value is an Integral here
        ok = False
    if not ok:
        if minimum is not None and below is not None:
            bounds = f" in [{minimum}, {below})"
        elif minimum is not None:
            bounds = f" >= {minimum}"
        else:
            bounds = f" < {below}" if below is not None else ""
        raise error(f"{what} = {value!r} must be an integer{bounds}")
    return int(cast(Integral, value))


def check_number(
    value: object,
    what: str,
    minimum: float | None = None,
    *,
    positive: bool = False,
    error: type[HwsearchError] = ConfigError,
) -> float:
    """``value`` as a finite ``float``, ``> 0`` with ``positive``, ``>= minimum`` with a minimum, else ``error``."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and ((positive and value <= 0) or (minimum is not None and value < minimum)):  # type: ignore[operator]  # value is Real here
        ok = False
    if not ok:
        bounds = " > 0" if positive else (f" >= {minimum:g}" if minimum is not None else "")
        raise error(f"{what} = {value!r} must be a finite number{bounds}")
    return float(value)  # type: ignore[arg-type]  # value is a finite Real here


def check_choice(value: object, what: str, choices: tuple[str, ...], error: type[HwsearchError] = ConfigError) -> str:
    """``value`` if it is one of ``choices``, else ``error`` listing them."""
    if value not in choices:
        raise error(f"{what} = {value!r} is unknown; use one of {', '.join(choices)}")
    return str(value)
