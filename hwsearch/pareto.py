"""Pareto fronts of evaluated policies: cost against accuracy and against robust accuracy."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from hwsearch.io import atomic_write_text, atomic_write_with
from hwsearch.search import EpisodeRecord

__all__ = ["pareto_front", "write_pareto"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal cost and higher or equal score, one strictly).

    Sorted by cost; among equal points only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_pareto(out_dir: Path, episodes: Sequence[tuple[str, EpisodeRecord]]) -> dict[str, Path]:
    """``pareto.csv`` (front vs accuracy and vs robust accuracy, one policy per row) and ``pareto.png``."""
    out_dir = Path(out_dir)
    unique: dict[tuple, tuple[str, EpisodeRecord]] = {}
    for budget, rec in episodes:  # a policy evaluated under several budgets is one point
        unique.setdefault(rec.policy.key(), (budget, rec))
    items = list(unique.values())
    fronts = {"accuracy": pareto_front([(r.latency_ms, r.accuracy) for _, r in items])}
    if items and all(r.robust_accuracy is not None for _, r in items):
        fronts["robust_accuracy"] = pareto_front([(r.latency_ms, r.robust_accuracy or 0.0) for _, r in items])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["front", "budget", "latency_ms", "relative_cost", "accuracy", "robust_accuracy", "policy"])
    for name, idx in fronts.items():
        for i in idx:
            budget, r = items[i]
            bits = " ".join(f"{n}={b.w}/{b.a}" for n, b in r.policy.layers.items())
            rob = "" if r.robust_accuracy is None else f"{r.robust_accuracy:.4f}"
            writer.writerow(
                [name, budget, f"{r.latency_ms:.6g}", f"{r.relative_cost:.4f}", f"{r.accuracy:.4f}", rob, bits]
            )
    paths = {"csv": atomic_write_text(out_dir / "pareto.csv", buf.getvalue())}
    paths["png"] = atomic_write_with(out_dir / "pareto.png", lambda tmp: _plot(tmp, items, fronts))
    return paths


def _plot(path: str, items: list[tuple[str, EpisodeRecord]], fronts: dict[str, list[int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fronts), figsize=(6.5 * len(fronts), 4.5), squeeze=False)
    budgets = sorted({b for b, _ in items})
    for ax, (metric, idx) in zip(axes[0], fronts.items(), strict=True):
        for budget in budgets:
            pts = [(r.relative_cost, getattr(r, metric)) for b, r in items if b == budget]
            ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=10, alpha=0.35, label=f"evaluated ({budget})")
        front = sorted((items[i][1].relative_cost, getattr(items[i][1], metric)) for i in idx)
        ax.plot([p[0] for p in front], [100 * p[1] for p in front], "k-o", ms=4, label="Pareto front")
        ax.set_xlabel("latency / fixed 8-bit latency")
        ax.set_ylabel(("robust " if metric == "robust_accuracy" else "") + "accuracy on search-val (%)")
        ax.set_title(f"{metric.replace('_', ' ')} vs latency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
