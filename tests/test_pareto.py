"""Pareto fronts and the budget sweep."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hwsearch.cli import main
from hwsearch.pareto import pareto_front


def _dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
    return p[0] <= q[0] and p[1] >= q[1] and p != q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_is_non_dominated_and_complete(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = [(float(c), float(a)) for c, a in rng.integers(0, 8, size=(60, 2))]
    front = pareto_front(pts)
    for i in front:
        assert not any(_dominates(q, pts[i]) for q in pts)
    for j in set(range(len(pts))) - set(front):  # everything left out is dominated or a duplicate of a front point
        assert any(_dominates(pts[i], pts[j]) or pts[i] == pts[j] for i in front)
    costs = [pts[i][0] for i in front]
    assert costs == sorted(costs)


def test_sweep_writes_one_search_per_budget_and_a_non_dominated_front(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--checkpoint",
        str(checkpoint),
        "--budgets",
        "0.6x,0.9x",
        "--out",
        str(out),
        "--episodes",
        "5",
        "--warmup",
        "2",
        "--hidden",
        "16",
        "16",
        "--quiet",
    ]
    assert main(argv) == 0
    for sub in ("latency-0.6x", "latency-0.9x"):
        assert (out / sub / "policy.json").is_file() and (out / sub / "episodes.csv").is_file()
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    front = [(float(r["latency_ms"]), float(r["accuracy"])) for r in rows if r["front"] == "accuracy"]
    evaluated = []
    for sub in ("latency-0.6x", "latency-0.9x"):
        for r in csv.DictReader((out / sub / "episodes.csv").open()):
            evaluated.append((float(r["latency_ms"]), float(r["accuracy"])))
    assert front
    for p in front:
        assert not any(_dominates(q, p) for q in evaluated)
    assert (out / "pareto.png").stat().st_size > 1000
