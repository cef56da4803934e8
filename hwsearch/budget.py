"""Cost budgets: latency, energy or model size, absolute or relative to fixed 8-bit."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from hwsearch.errors import BudgetError, ConfigError

__all__ = [
    "METRICS",
    "UNITS",
    "MAX_TABLE_ENTRIES",
    "Budget",
    "parse_budget",
    "check_table_size",
    "least_tails",
    "cheapest_choices",
]

METRICS = ("latency", "energy", "size")
UNITS = {"latency": "ms", "energy": "mJ", "size": "bits"}
MAX_TABLE_ENTRIES = 2_000_000
"""Most (layer, w, a) cells a search prices up front: each is a cost-model call and 3 float64s per metric."""
_BYTES_PER_ENTRY = 3 * 8
_PATTERN = re.compile(r"^\s*(latency|energy|size)\s*=\s*([0-9.eE+-]+)\s*(x?)\s*$")


@dataclass(frozen=True)
class Budget:
    """``value`` in the metric's unit, or a fraction of the fixed 8-bit cost when ``relative``."""

    metric: str = "latency"
    value: float = 0.5
    relative: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise BudgetError(f"budget metric {self.metric!r} is unknown; use one of {', '.join(METRICS)}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise BudgetError(f"budget value {v!r} must be a positive number (e.g. latency=0.5x)")
        object.__setattr__(self, "value", float(v))

    def resolve(self, fixed8_cost: float) -> float:
        """Absolute limit in the metric's unit."""
        return self.value * fixed8_cost if self.relative else self.value

    def __str__(self) -> str:
        return (
            f"{self.metric}={self.value:g}x" if self.relative else f"{self.metric}={self.value:g}{UNITS[self.metric]}"
        )

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "relative": self.relative}


def parse_budget(text: str) -> Budget:
    """Parse ``latency=0.5x`` (relative to fixed 8-bit) or ``latency=0.12`` (ms), ``energy=``, ``size=``."""
    m = _PATTERN.match(text)
    if not m:
        raise BudgetError(
            f"budget {text!r} is malformed; write METRIC=VALUE[x] with METRIC in {', '.join(METRICS)}, "
            "e.g. latency=0.5x (half of fixed 8-bit) or latency=0.2 (ms)"
        )
    try:
        value = float(m.group(2))
    except ValueError:
        raise BudgetError(f"budget value {m.group(2)!r} in {text!r} is not a number") from None
    return Budget(metric=m.group(1), value=value, relative=bool(m.group(3)))


def check_table_size(
    n_layers: int, n_w: int, n_a: int, *, limit: int | None = None, what: str = "the search's cost table"
) -> int:
    """The number of cells ``n_layers x n_w x n_a``; a one-line ConfigError with the estimate above ``limit``.

    Called before any cell is priced, so a model too large to search is refused at once rather than after
    minutes of cost-model calls or an out-of-memory kill.
    """
    limit = MAX_TABLE_ENTRIES if limit is None else limit
    entries = int(n_layers) * int(n_w) * int(n_a)
    if entries > limit:
        mib = entries * _BYTES_PER_ENTRY / 2**20
        raise ConfigError(
            f"{what} would hold {n_layers} layers x {n_w} weight x {n_a} activation widths = {entries:,} entries "
            f"(~{mib:.3g} MiB), above the limit of {limit:,}; narrow --min-bits/--max-bits or search a smaller model"
        )
    return entries


def least_tails(cells: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
    """``tail[i, c]``: the least cost of layers ``i+1..`` once layer ``i`` has made choice ``c``, cells
    ``(n_layers, choices)`` plus, where given, ``pairs[i, c, d]`` (the boundary into layer ``i`` between choices
    ``c`` and ``d``); exact, by dynamic programming from the last layer back. The cheapest whole policy costs
    ``(cells[0] + tail[0]).min()``."""
    tail = np.zeros_like(cells, dtype=np.float64)
    for i in range(len(cells) - 2, -1, -1):
        nxt = cells[i + 1] + tail[i + 1]
        tail[i] = nxt.min() if pairs is None else (pairs[i + 1] + nxt[None, :]).min(axis=1)
    return tail


def cheapest_choices(cells: np.ndarray, tail: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
    """The flat choice per layer of the cheapest whole policy, read forward off :func:`least_tails`' ``tail``
    (same ``cells`` and ``pairs``): each layer takes the choice whose cell, boundary in and cheapest completion
    sum least."""
    flat = np.zeros(len(cells), dtype=np.int64)
    for i in range(len(cells)):
        into = 0.0 if pairs is None or i == 0 else pairs[i, flat[i - 1]]
        flat[i] = int(np.argmin(cells[i] + into + tail[i]))
    return flat
