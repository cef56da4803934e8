"""Comparison tables and search summaries (Markdown, CSV, JSON); plots come from ``hwsearch.plots``."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwsearch.io import atomic_write_json, atomic_write_text
from hwsearch.records import CompareRow
from hwsearch.robust.attacks import is_gradient_free
from hwsearch.robust.masking import MASKING_MARGIN, masking_gap, masking_warning
from hwsearch.search import EpisodeRecord, SearchResult

__all__ = [
    "EPISODE_FIELDS",
    "episode_row",
    "EpisodeLog",
    "read_episode_log",
    "compare_table",
    "compare_records",
    "write_compare",
    "search_summary",
    "episode_phase",
    "learning_figures",
]

EPISODE_FIELDS = (
    "episode",
    "reward",
    "accuracy",
    "robust_accuracy",
    "latency_ms",
    "energy_mj",
    "size_bits",
    "relative_cost",
    "requested_relative_cost",
    "noise_sigma",
)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def episode_row(rec: EpisodeRecord) -> dict[str, Any]:
    """One CSV row: figures, then one ``w/a`` column per layer, keyed by the layer's qualified name."""
    row: dict[str, Any] = {
        "episode": rec.episode,
        "reward": f"{rec.reward:.6f}",
        "accuracy": f"{rec.accuracy:.4f}",
        "robust_accuracy": "" if rec.robust_accuracy is None else f"{rec.robust_accuracy:.4f}",
        "latency_ms": f"{rec.latency_ms:.6g}",
        "energy_mj": "" if rec.energy_mj is None else f"{rec.energy_mj:.6g}",
        "size_bits": int(rec.size_bits),
        "relative_cost": f"{rec.relative_cost:.4f}",
        "requested_relative_cost": "" if rec.requested_relative_cost is None else f"{rec.requested_relative_cost:.4f}",
        "noise_sigma": "" if rec.noise_sigma is None else f"{rec.noise_sigma:.6g}",
    }
    for name, bits in rec.policy.layers.items():
        row[name] = f"{bits.w}/{bits.a}"
    return row


class EpisodeLog:
    """``episodes.csv``, appended and flushed one finished episode at a time so a crash loses none."""

    def __init__(self, path: Path, layer_names: Sequence[str], keep: int | None = None) -> None:
        """Start a log, or with ``keep`` (resume) rewrite it to its first ``keep`` intact episodes."""
        self.path = Path(path)
        self.fields = [*EPISODE_FIELDS, *layer_names]
        if keep is None or not self.path.exists():
            atomic_write_text(self.path, ",".join(self.fields) + "\n")
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        if lines and lines[0].rstrip("\r\n") == ",".join(self.fields):
            atomic_write_text(self.path, "".join(lines[: 1 + keep]))
            return
        # a log from an older hwsearch lacks columns added since: rewrite its kept rows under today's header (the
        # new cells empty) so that the rows appended next line up with it
        with self.path.open(encoding="utf-8", newline="") as fh:
            rows = list(itertools.islice(csv.DictReader(fh), keep))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def append(self, rec: EpisodeRecord) -> None:
        buf = io.StringIO()
        csv.DictWriter(buf, self.fields, lineterminator="\n").writerow(episode_row(rec))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
            fh.flush()


def read_episode_log(path: Path, layer_names: Sequence[str]) -> list[EpisodeRecord]:
    """Episodes a run finished, read back from its log; a torn last line (killed mid-write) is dropped."""
    from hwsearch.policy import LayerBits, Policy

    path = Path(path)
    if not path.is_file():
        return []
    records: list[EpisodeRecord] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                layers = {}
                for n in layer_names:
                    w, a = row[n].split("/")
                    layers[n] = LayerBits(int(w), int(a))
                rob = row["robust_accuracy"]
                energy = row["energy_mj"]
                requested = row.get("requested_relative_cost") or ""  # absent from logs of older runs
                sigma = row.get("noise_sigma") or ""
                records.append(
                    EpisodeRecord(
                        episode=len(records),
                        policy=Policy(layers),
                        reward=float(row["reward"]),
                        accuracy=float(row["accuracy"]),
                        robust_accuracy=float(rob) if rob else None,
                        latency_ms=float(row["latency_ms"]),
                        energy_mj=float(energy) if energy else None,
                        size_bits=float(row["size_bits"]),
                        relative_cost=float(row["relative_cost"]),
                        requested_relative_cost=float(requested) if requested else None,
                        noise_sigma=float(sigma) if sigma else None,
                    )
                )
            except (KeyError, ValueError, AttributeError, TypeError):
                break
    return records


def compare_records(rows: Sequence[CompareRow]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        rec: dict[str, Any] = {
            "name": r.name,
            "accuracy": r.accuracy,
            "latency_ms": r.latency_ms,
            "energy_mj": r.energy_mj,
            "size_bits": r.size_bits,
            "speedup_vs_8bit": r.speedup_vs_8bit,
            "energy_saving_vs_8bit": r.energy_saving_vs_8bit,
            "policy": None if r.policy is None else {n: [b.w, b.a] for n, b in r.policy.layers.items()},
        }
        for eps, figs in r.robust.items():
            for k, v in figs.items():
                rec[f"robust@{eps}:{k}"] = v
            if any(is_gradient_free(k) for k in figs):  # lowest gradient attack minus gradient-free, and the flag
                rec[f"robust@{eps}:masking_gap"] = masking_gap(figs)
                rec[f"robust@{eps}:masking_warning"] = masking_warning(figs)
        out.append(rec)
    return out


def compare_table(rows: Sequence[CompareRow], device: str) -> str:
    """Markdown: one main table (worst-case robust accuracy per eps when a robustness run produced it), then
    a per-attack breakdown table."""
    eps_list: list[str] = []
    attack_cols: list[tuple[str, str]] = []
    for r in rows:
        for eps, figs in r.robust.items():
            if eps not in eps_list:
                eps_list.append(eps)
            attack_cols += [(eps, k) for k in figs if k != "worst" and (eps, k) not in attack_cols]
    head = ["policy", "accuracy %"] + [f"robust @{eps} %" for eps in eps_list]
    head += [f"latency ms ({device})", "speed-up vs 8-bit", "energy mJ", "energy saving vs 8-bit", "size KiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, f"{100 * r.accuracy:.2f}"]
        for eps in eps_list:
            v = r.robust.get(eps, {}).get("worst")
            cells.append(_fmt(None if v is None else 100 * v, ".2f"))
        cells += [
            _fmt(r.latency_ms, ".5g") if r.latency_ms is not None else "n/a (float)",
            _fmt(r.speedup_vs_8bit, ".2f") + ("x" if r.speedup_vs_8bit else ""),
            _fmt(r.energy_mj, ".4g") if r.policy is not None else "n/a (float)",
            _fmt(r.energy_saving_vs_8bit, ".2f") + ("x" if r.energy_saving_vs_8bit else ""),
            f"{r.size_bits / 8 / 1024:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if attack_cols:
        head = ["policy"] + [f"{k} @{eps}" for eps, k in attack_cols]
        lines = ["", "Robust accuracy (%) per attack:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            vals = [r.robust.get(eps, {}).get(k) for eps, k in attack_cols]
            lines.append(
                "| " + " | ".join([r.name] + [_fmt(None if v is None else 100 * v, ".2f") for v in vals]) + " |"
            )
        text += "\n".join(lines) + "\n" + _masking_note(rows)
    return text


def _masking_note(rows: Sequence[CompareRow]) -> str:
    """The gradient-masking check: gradient-free (Square) against the lowest gradient attack, per policy and eps."""
    checked, flagged = 0, []
    for r in rows:
        for eps, figs in r.robust.items():
            gap = masking_gap(figs)
            if gap is None:
                continue
            checked += 1
            if masking_warning(figs):
                free = min(v for k, v in figs.items() if k != "worst" and is_gradient_free(k))
                flagged.append(f"{r.name} @{eps} (gradient-free {100 * free:.2f}%, {100 * gap:.2f} points below)")
    if not checked:
        return ""
    rule = f"gradient-free robust accuracy more than {100 * MASKING_MARGIN:g} points below the lowest gradient attack's"
    if flagged:
        return f"\nPossible gradient masking ({rule}): " + "; ".join(flagged) + ".\n"
    return f"\nNo gradient-masking warning (none has {rule}).\n"


def write_compare(out_dir: Path, rows: Sequence[CompareRow], device: str, header: str = "") -> dict[str, Path]:
    out_dir = Path(out_dir)
    recs = compare_records(rows)
    md = (header + "\n\n" if header else "") + compare_table(rows, device)
    paths = {
        "md": atomic_write_text(out_dir / "report.md", md),
        "json": atomic_write_json(out_dir / "report.json", {"schema": 1, "device": device, "rows": recs}),
    }
    keys: list[str] = []
    for rec in recs:
        keys += [k for k in rec if k not in keys and k != "policy"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rec in recs:
        w.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in keys})
    paths["csv"] = atomic_write_text(out_dir / "report.csv", buf.getvalue())
    return paths


def episode_phase(index: int, agent: str, warmup_episodes: int, init_episodes: int = 0) -> str:
    """What produced episode ``index``: ``given`` (a warm-start policy), ``warm-up`` (DDPG's uniform draws),
    ``learned`` (DDPG's actor plus exploration), ``random`` or ``ilp``."""
    if index < init_episodes:
        return "given"
    if agent in ("random", "ilp"):
        return agent
    return "warm-up" if index < warmup_episodes else "learned"


def learning_figures(result: SearchResult) -> dict[str, Any]:
    """Did the agent learn? The best episode and its phase, the warm-up's mean reward (its first
    ``warmup_episodes`` episodes, given policies included; None without warm-up), the mean of the last 20% of
    episodes (at least one) and the mean after warm-up."""
    eps = result.episodes
    best = result.best
    cfg = result.config
    warm = [r.reward for r in eps[: cfg.warmup_episodes]] if cfg.agent != "ilp" else []
    tail = [r.reward for r in eps[len(eps) - max(1, -(-len(eps) // 5)) :]]
    after = [r.reward for r in eps[cfg.warmup_episodes :]]
    return {
        "best_episode": best.episode,
        "best_reward": best.reward,
        "best_phase": episode_phase(best.episode, cfg.agent, cfg.warmup_episodes, result.init_episodes),
        "warmup_episodes": min(cfg.warmup_episodes, len(eps)),
        "warmup_mean": sum(warm) / len(warm) if warm else None,
        "last20_first_episode": len(eps) - len(tail),
        "last20_mean": sum(tail) / len(tail),
        "after_warmup_mean": sum(after) / len(after) if after else None,
    }


def _learning_lines(result: SearchResult) -> list[str]:
    f = learning_figures(result)
    n = len(result.episodes)
    where = {
        "given": "a given (warm-start) policy",
        "warm-up": f"the random warm-up (episodes 0-{f['warmup_episodes'] - 1})",
        "learned": "the learned phase (after warm-up)",
        "random": "random search",
        "ilp": "the ILP's answer",
    }[f["best_phase"]]
    lines = [f"- learning: best episode {f['best_episode']} comes from {where}"]
    if f["warmup_mean"] is not None:
        lines.append(f"- warm-up mean reward: {f['warmup_mean']:.4f} (episodes 0-{f['warmup_episodes'] - 1})")
    lines.append(f"- last 20% mean reward: {f['last20_mean']:.4f} (episodes {f['last20_first_episode']}-{n - 1})")
    if result.init_episodes:
        lines.append(f"- warm start: the first {result.init_episodes} episode(s) requested the given policies")
    ilp = result.notes.get("ilp")
    if ilp:
        lines.append(
            f"- ILP: {ilp['sensitivity_evaluations']} sensitivity evaluations in {ilp['sensitivity_s']:.2f} s, "
            f"solved in {ilp['solve_s']:.3f} s, predicted score {ilp['predicted_score']:.4f}"
        )
    return lines


def search_summary(
    result: SearchResult,
    *,
    device: str,
    budget: str,
    budget_limit: float,
    reference: dict[str, Any],
    timings: dict[str, float],
) -> str:
    best = result.best
    lines = [
        "# hwsearch search summary",
        "",
        f"- agent: {result.config.agent}, episodes: {len(result.episodes)}, seed: {result.config.seed}",
        f"- device: {device}, budget: {budget} (limit {budget_limit:.6g})",
        f"- best episode: {best.episode}, reward {best.reward:.4f}",
        f"- best policy: accuracy {100 * best.accuracy:.2f}% (search-val)"
        + ("" if best.robust_accuracy is None else f", robust accuracy {100 * best.robust_accuracy:.2f}%")
        + f", latency {best.latency_ms:.5g} ms ({best.relative_cost:.3f} of fixed 8-bit)",
        f"- fixed 8-bit reference (search-val): {json.dumps(reference)}",
        *(
            []
            if result.chosen is best
            else [
                f"- the pick (re-scored, see below): episode {result.chosen.episode}, reward {result.chosen.reward:.4f}"
            ]
        ),
        *_learning_lines(result),
        f"- wall time of the search: {result.wall_s:.2f} s",
        "",
        "## Where time went",
        "",
        "| part | seconds | share |",
        "|---|---|---|",
    ]
    total = max(timings.get("total", 0.0), 1e-9)
    for k, v in timings.items():
        if k != "total":
            lines.append(f"| {k} | {v:.2f} | {100 * v / total:.1f}% |")
    lines.append(f"| total | {total:.2f} | 100% |")
    chosen = result.chosen
    title = "Best policy" if chosen is best else f"The pick, episode {chosen.episode}"
    lines += ["", f"## {title} (weight / activation bits)", "", "| layer | W | A |", "|---|---|---|"]
    for name, bits in chosen.policy.layers.items():
        lines.append(f"| {name} | {bits.w} | {bits.a} |")
    return "\n".join(lines) + "\n"
