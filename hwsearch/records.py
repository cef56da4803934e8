"""Result types several layers share (the env, the evaluator, the workflow, the reports), defined below them all.

Only plain frozen dataclasses live here, importing nothing of hwsearch but ``policy``, so any module may use them
without pulling in the layer that produces them (see docs/ARCHITECTURE.md, "Module map").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hwsearch.policy import Policy

__all__ = ["EvalResult", "CompareRow"]


@dataclass(frozen=True)
class EvalResult:
    """What an evaluator says of a quantized model: accuracies as fractions in [0, 1]."""

    accuracy: float
    robust_accuracy: float | None = None
    per_attack: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareRow:
    """One entry of a comparison: a policy (None = FP32) scored on a split and priced on a cost model."""

    name: str
    policy: Policy | None  # None = FP32
    accuracy: float
    latency_ms: float | None
    energy_mj: float | None
    size_bits: int
    speedup_vs_8bit: float | None
    energy_saving_vs_8bit: float | None
    robust: Mapping[str, Any] = field(default_factory=dict)  # eps label -> {"worst": f, attack label: f}
