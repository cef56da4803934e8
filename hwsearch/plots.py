"""PNG plots of policies and comparisons, readable on their own (titles, axis labels with units, legends).

Figures are drawn on matplotlib's Agg canvas without pyplot, so plotting never touches global GUI state and
works in threads and headless runs. Files are written atomically. The error-amplification plot lives with its
probe in ``hwsearch.robust.amplification``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hwsearch.errors import ConfigError
from hwsearch.io import atomic_write_with
from hwsearch.policy import FLOAT_BITS, Policy

__all__ = ["plot_policy_bits", "plot_tradeoff", "LearningCurve", "learning_curve_series", "plot_learning_curve"]

_FLOAT_BAR = 9  # float layers are drawn just above the 8-bit line, hatched, instead of a bar 4x taller
_DPI = 120


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))


def plot_policy_bits(
    policy: Policy,
    per_layer_latency_share: Mapping[str, float] | None,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Grouped bars of weight and activation bits per layer (forward order); latency share (0..1) on a twin axis.

    Float (32-bit) sides are drawn as hatched bars at the top of the axis, labelled ``float``.
    """
    if not isinstance(policy, Policy) or len(policy) == 0:
        raise ConfigError("plot_policy_bits needs a policy with at least one layer")
    names = policy.names()
    if per_layer_latency_share is not None:
        if len(per_layer_latency_share) == 0:
            raise ConfigError("latency shares are empty; pass None to plot bits only")
        missing = [n for n in names if n not in per_layer_latency_share]
        if missing:
            raise ConfigError(f"latency shares miss layer(s) {missing}; give one share per policy layer")
    width = max(6.0, 0.6 * len(names) + 2.5)
    fig = Figure(figsize=(min(width, 40.0), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    bar_w = 0.38
    for offset, side, color, label in (
        (-bar_w / 2, "w", "#1f77b4", "weight bits"),
        (bar_w / 2, "a", "#ff7f0e", "activation bits"),
    ):
        heights = [getattr(policy[n], side) for n in names]
        shown = [_FLOAT_BAR if h == FLOAT_BITS else h for h in heights]
        bars = ax.bar(
            [x + offset for x in xs], shown, bar_w, color=color, label=label, edgecolor="black", linewidth=0.5
        )
        for bar, h in zip(bars, heights, strict=True):
            if h == FLOAT_BITS:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks([*range(0, 9), _FLOAT_BAR])
    ax.set_yticklabels([*map(str, range(0, 9)), "float"])
    ax.set_ylim(0, _FLOAT_BAR + 2.2)  # headroom for the legend row
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("bit width")
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(FLOAT_BITS in (policy[n].w, policy[n].a) for n in names):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="float (32-bit)"))
        labels.append("float (32-bit)")
    if per_layer_latency_share is not None:
        twin = ax.twinx()
        shares = [100.0 * float(per_layer_latency_share[n]) for n in names]
        (line,) = twin.plot(xs, shares, color="#2ca02c", marker="o", linewidth=1.5, label="latency share")
        twin.set_ylabel("share of model latency (%)")
        twin.set_ylim(0, max(max(shares), 1.0) * (_FLOAT_BAR + 2.2) / _FLOAT_BAR)
        handles.append(line)
        labels.append("latency share (%)")
    ax.legend(handles, labels, loc="upper center", ncol=len(handles), fontsize=8, framealpha=0.9)
    kind = policy.meta.get("kind") if isinstance(policy.meta, Mapping) else None
    ax.set_title(title or f"Per-layer bit widths{f' ({kind})' if kind else ''}")
    return _save(fig, path)


def _robust_series(rows: Sequence[Any]) -> list[str]:
    """The eps labels that appear in any row's ``robust`` figures, in first-seen order."""
    out: list[str] = []
    for r in rows:
        for eps in getattr(r, "robust", {}) or {}:
            if eps not in out:
                out.append(eps)
    return out


def _robust_at(row: Any, eps: str) -> float | None:
    return _robust_value((row.robust or {}).get(eps, {}))


def _robust_value(figs: Mapping[str, Any]) -> float | None:
    """The worst case when present, else the lowest attack figure (robust accuracy is a worst case)."""
    if not isinstance(figs, Mapping) or not figs:
        return None
    if figs.get("worst") is not None:
        return float(figs["worst"])
    vals = [float(v) for v in figs.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return min(vals) if vals else None


def plot_tradeoff(
    rows: Sequence[Any], path: str | os.PathLike[str], *, device: str | None = None, title: str | None = None
) -> Path:
    """Accuracy (and robust accuracy per eps, when present) against latency, one labelled point per entry.

    ``rows`` are :class:`hwsearch.records.CompareRow`. Entries without a latency (FP32) become horizontal
    reference lines in the colour of their series.
    """
    rows = list(rows)
    if not rows:
        raise ConfigError("plot_tradeoff needs at least one comparison row")
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    series: list[tuple[str, str, str, Callable[[Any], float | None]]] = [
        ("clean accuracy", "#1f77b4", "o", lambda r: r.accuracy)
    ]
    palette = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    markers = ["s", "^", "D", "v", "P"]
    for i, eps in enumerate(_robust_series(rows)):
        series.append(
            (
                f"robust accuracy @ eps {eps}",
                palette[i % len(palette)],
                markers[i % len(markers)],
                functools.partial(_robust_at, eps=eps),
            )
        )
    priced = [r for r in rows if r.latency_ms is not None]
    for label, color, marker, get in series:
        pts = [(float(r.latency_ms), 100.0 * v, r.name) for r in priced if (v := get(r)) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, label=label, zorder=3)
            for x, y, name in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        for r in rows:
            if r.latency_ms is None and (v := get(r)) is not None and math.isfinite(v):
                ax.axhline(
                    100.0 * v, color=color, linestyle="--", linewidth=1.0, label=f"{r.name} {label} (no latency)"
                )
    unit = f"latency (ms/image{', ' + device if device else ''})"
    ax.set_xlabel(unit)
    ax.set_ylabel("top-1 accuracy (%)")
    if not priced:
        ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.9)
    ax.set_title(title or "Accuracy vs latency" + (" (robust where measured)" if len(series) > 1 else ""))
    return _save(fig, path)


@dataclass(frozen=True)
class LearningCurve:
    """The PNG written and the labels of the series drawn in it (read back from the figure's legends)."""

    path: Path
    series: tuple[str, ...]


def learning_curve_series(episodes: Sequence[Any], window: int = 20) -> dict[str, list[float | None]]:
    """Per episode: reward, running best, moving mean over the last ``window`` episodes, requested and enforced
    cost (fraction of fixed 8-bit's budget metric) and DDPG's exploration sigma (None: uniform warm-up, random
    search, a given policy or the ILP). ``episodes`` are :class:`hwsearch.search.EpisodeRecord`."""
    rewards = [float(r.reward) for r in episodes]
    best: list[float | None] = []
    mean: list[float | None] = []
    top = -math.inf
    for i, v in enumerate(rewards):
        top = max(top, v)
        best.append(top)
        chunk = rewards[max(0, i + 1 - window) : i + 1]
        mean.append(sum(chunk) / len(chunk))
    return {
        "reward": list(rewards),
        "running best": best,
        f"moving mean ({window})": mean,
        "requested cost": [getattr(r, "requested_relative_cost", None) for r in episodes],
        "enforced cost": [float(r.relative_cost) for r in episodes],
        "exploration sigma": [getattr(r, "noise_sigma", None) for r in episodes],
    }


def plot_learning_curve(
    episodes: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    warmup_episodes: int = 0,
    init_episodes: int = 0,
    budget: float | None = None,
    window: int = 20,
    title: str | None = None,
) -> LearningCurve:
    """Did the agent learn? Reward per episode with its running best and moving mean (warm-up shaded), the
    requested vs the enforced cost (the action wall's and the walk's work), and the exploration sigma, on one episode axis.

    ``budget``: the limit as a fraction of fixed 8-bit, drawn as a line on the cost panel.
    """
    episodes = list(episodes)
    if not episodes:
        raise ConfigError("plot_learning_curve needs at least one episode")
    series = learning_curve_series(episodes, window)
    xs = [int(r.episode) for r in episodes]
    fig = Figure(figsize=(8.0, 7.5))
    ax_r, ax_c, ax_s = (fig.add_subplot(3, 1, i) for i in (1, 2, 3))
    styles: dict[str, dict[str, Any]] = {
        "reward": {"ax": ax_r, "kind": "scatter", "color": "#1f77b4"},
        "running best": {"ax": ax_r, "kind": "step", "color": "#2ca02c"},
        f"moving mean ({window})": {"ax": ax_r, "kind": "line", "color": "#d62728"},
        "requested cost": {"ax": ax_c, "kind": "scatter", "color": "#ff7f0e"},
        "enforced cost": {"ax": ax_c, "kind": "scatter", "color": "#1f77b4"},
        "exploration sigma": {"ax": ax_s, "kind": "line", "color": "#9467bd"},
    }
    for label, values in series.items():
        style = styles[label]
        pts = [(x, float(v)) for x, v in zip(xs, values, strict=True) if v is not None]
        if not pts:
            continue
        ax, color = style["ax"], style["color"]
        px, py = [p[0] for p in pts], [p[1] for p in pts]
        if style["kind"] == "scatter":
            ax.scatter(px, py, s=9, color=color, label=label, alpha=0.7, zorder=3)
        elif style["kind"] == "step":
            ax.step(px, py, where="post", color=color, label=label, linewidth=1.5)
        else:
            ax.plot(px, py, color=color, label=label, linewidth=1.5)
    for ax in (ax_r, ax_c, ax_s):
        if warmup_episodes > 0:
            ax.axvspan(-0.5, warmup_episodes - 0.5, color="#cccccc", alpha=0.35, lw=0)
        if init_episodes > 0:
            ax.axvspan(-0.5, init_episodes - 0.5, color="#ffd54f", alpha=0.45, lw=0)
        ax.grid(alpha=0.3)
    if budget is not None:
        ax_c.axhline(budget, color="black", linestyle="--", linewidth=1.0, label="budget")
    if not series["exploration sigma"] or all(v is None for v in series["exploration sigma"]):
        ax_s.text(
            0.5,
            0.5,
            "no Gaussian exploration (warm-up, random, given or ILP episodes)",
            ha="center",
            va="center",
            transform=ax_s.transAxes,
            fontsize=8,
        )
    ax_r.set_ylabel("reward")
    ax_c.set_ylabel("cost (x fixed 8-bit)")
    ax_s.set_ylabel("exploration sigma")
    ax_s.set_xlabel("episode (grey: warm-up" + (", yellow: given policies)" if init_episodes else ")"))
    labels: list[str] = []
    for ax in (ax_r, ax_c, ax_s):
        _, names = ax.get_legend_handles_labels()
        if names:
            ax.legend(fontsize=7, loc="best", framealpha=0.9)
        labels += names
    ax_r.set_title(title or "Learning curve")
    return LearningCurve(_save(fig, path), tuple(labels))
