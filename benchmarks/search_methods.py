"""Does the agent learn, and does it beat the baselines? uniform vs random vs ILP vs DDPG vs DDPG warm-started
from the ILP, at depth (issue 12).

Per model (trained here on the embedded mnist5k with the project's own ``train``): the budget is the loosest
latency (0.01 grid, fraction of fixed W8A8) at which the best uniform policy loses >= 2 points of **search-val**
accuracy against FP32 (test data is never used to choose); then every method runs as a search job (the CLI's
code path: each run folder holds its ``episodes.csv``, ``summary.md`` and ``learning_curve.png``) with the same
episodes and seeds. Test figures are reported for each run's best policy (chosen on search-val). The ILP is run
first; it and ``uniform`` run once when they cannot depend on the seed (the clean objective has no seeded robust
subset);
``ddpg+ilp`` starts from that run's answer (``--init-policy``), and its record counts the ILP's evaluations and
seconds as its own. Runs go ``--jobs`` at a time, each in its own process on one torch thread. Writes
``OUT/search_methods.json`` (one record per run, with the command, commit, CPU and date), ``OUT/search_methods.md``
and ``OUT/search_methods.png`` (median best-so-far reward vs episode per method).

    python -m benchmarks.search_methods                      # full: 3 models, 3 seeds, 200 episodes
    python -m benchmarks.search_methods --out /tmp/sm --work /tmp/sm/runs --episodes 6 --warmup 3 --seeds 0 \
        --models smallcnn --train-epochs 1 --min-bits 4                 # a smoke run: proves it works, no figures
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import RESULTS, provenance, provenance_md, update_readme
from hwsearch.budget import Budget
from hwsearch.evaluate import clean_accuracy
from hwsearch.hardware import bit_grid, get_cost_model, policy_cost
from hwsearch.io import atomic_write_json, atomic_write_text
from hwsearch.job import SearchJobConfig, run_search_job
from hwsearch.pipelines import BaselineConfig, train_baseline
from hwsearch.policy import Policy, uniform_policy
from hwsearch.policy_formats import save_policy
from hwsearch.quant import apply_policy
from hwsearch.report import learning_figures
from hwsearch.robust import robust_accuracy, search_attacks
from hwsearch.search import SearchConfig, SearchResult
from hwsearch.workflow import Workspace, prepare

#: ``ddpg-walk`` is the ablation: DDPG as HAQ published it (the budget walk alone, ``--enforce walk``)
METHODS = ("uniform", "random", "ilp", "ddpg", "ddpg+ilp", "ddpg-walk")
#: model -> (target, objectives); BitFusion does not speed depthwise layers up, so mobilenet_v2 runs on BISMO
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "smallcnn": ("bitfusion-edge", ("robust",)),
    "resnet20": ("bitfusion-edge", ("clean",)),
    "mobilenet_v2": ("bismo-edge", ("clean",)),
}


@dataclass(frozen=True)
class Problem:
    model: str
    objective: str
    target: str
    budget: float
    checkpoint: Path


#: checkpoints the committed records were measured on: training is not bit-identical across CPUs, so a run on
#: another machine (``--resume``, ``--merge``) uses these rather than training a model its records cannot sit beside
CHECKPOINTS = RESULTS / "checkpoints"


def _checkpoint(model: str, work: Path, epochs: int) -> Path:
    """The committed checkpoint of ``model`` (:data:`CHECKPOINTS`), else one trained here into ``work``."""
    committed = CHECKPOINTS / f"{model}-e{epochs}.pt"
    if committed.exists():
        return committed
    path = work / "checkpoints" / f"{model}-e{epochs}.pt"
    if not path.exists():
        train_baseline(BaselineConfig(model=model, epochs=epochs), path)
    return path


def pick_budget(ws: Workspace, target: str, min_bits: int) -> tuple[float, dict[str, Any]]:
    """The loosest latency budget (0.01 grid) where the best uniform policy meeting it loses >= 2 points of
    search-val accuracy against FP32; search-val only. Without one, the loosest grid budget above the cheapest
    uniform policy (said so in the returned notes)."""
    cost_model = get_cost_model(target)
    x, y = ws.split("val")
    fp32 = clean_accuracy(ws.model, x, y)
    w_bits, a_bits = bit_grid(cost_model, ws.layers, candidates=range(min_bits, 9))
    ref = policy_cost(cost_model, ws.layers, ws.uniform(8)).latency_ms
    uniform = []
    for w, a in itertools.product(w_bits, a_bits):
        pol = uniform_policy(ws.layer_names, w, a)
        rel = policy_cost(cost_model, ws.layers, pol).latency_ms / ref
        uniform.append((rel, clean_accuracy(apply_policy(ws.model, pol, ws.calibration), x, y), f"W{w}A{a}"))
    floor = min(u[0] for u in uniform)
    grid = [b / 100 for b in range(int(floor * 100) + 1, 101)]

    def best_uniform(b: float) -> float:
        return max(u[1] for u in uniform if u[0] <= b + 1e-12)

    ok = [b for b in grid if fp32 - best_uniform(b) >= 0.02]
    rule = "loosest with the best uniform >= 2 points below FP32 (search-val)"
    if not ok:
        ok, rule = grid[:1], "fallback: no budget makes the best uniform lose 2 points; the tightest grid budget"
    budget = ok[-1]
    notes = {"fp32_val_accuracy": fp32, "rule": rule, "best_uniform_val_accuracy": best_uniform(budget)}
    notes["uniform"] = [{"policy": n, "relative_latency": r, "val_accuracy": a} for r, a, n in uniform]
    return budget, notes


def _uniform_files(ws: Workspace, target: str, budget: float, min_bits: int, folder: Path) -> list[str]:
    """Every uniform policy meeting the budget, as files the ``uniform`` method plays as its episodes."""
    cost_model = get_cost_model(target)
    w_bits, a_bits = bit_grid(cost_model, ws.layers, candidates=range(min_bits, 9))
    ref = policy_cost(cost_model, ws.layers, ws.uniform(8)).latency_ms
    files = []
    for w, a in itertools.product(w_bits, a_bits):
        pol = uniform_policy(ws.layer_names, w, a)
        if policy_cost(cost_model, ws.layers, pol).latency_ms <= budget * ref * (1 - 1e-9):
            files.append(str(save_policy(pol, folder / f"uniform-W{w}A{a}.json")))
    return files


class TestScorer:
    """Test accuracy (and, for the robust objective, STE + shadow PGD-20 worst case on 500 test images) of a
    run's best policy, memoised by policy."""

    def __init__(self, ws: Workspace, eps: float) -> None:
        self.ws = ws
        self.x, self.y = ws.split("test")
        self.eps = eps
        self.cache: dict[tuple[Any, bool], tuple[float, float | None]] = {}

    def __call__(self, policy: Policy, robust: bool) -> tuple[float, float | None]:
        key = (policy.key(), robust)
        if key not in self.cache:
            model = apply_policy(self.ws.model, policy, self.ws.calibration)
            acc = clean_accuracy(model, self.x, self.y)
            rob = None
            if robust:
                attacks = search_attacks(self.eps, steps=20)
                rob = float(robust_accuracy(model, self.x[:500], self.y[:500], attacks, seed=0, cascade=True).worst)
            self.cache[key] = (acc, rob)
        return self.cache[key]


def run_method(
    p: Problem,
    method: str,
    seed: int,
    args: argparse.Namespace,
    folder: Path,
    uniform_files: Sequence[str],
    ilp_file: str | None = None,
) -> SearchResult:
    """One run as a search job. ``ddpg+ilp`` is DDPG warm-started from the ILP run's answer (``ilp_file``: the
    same objective's ``ilp`` run, measured once; its evaluations are added to this run's in the record)."""
    robust = p.objective == "robust"
    n = len(uniform_files)
    agent = {"uniform": "random", "ddpg+ilp": "ddpg", "ddpg-walk": "ddpg"}.get(method, method)
    episodes = n if method == "uniform" else args.episodes
    warmup = n if method == "uniform" else min(args.warmup, args.episodes)
    search = SearchConfig(episodes=episodes, warmup_episodes=warmup, agent=agent, seed=seed)
    job = SearchJobConfig(
        checkpoint=str(p.checkpoint),
        target=p.target,
        budget=str(Budget("latency", p.budget)),
        search=search,
        min_bits=args.min_bits,
        robust_weight=args.robust_weight if robust else 0.0,
        attack="pgd" if robust else None,
        eps=args.eps,
        init_policies=tuple(uniform_files) if method == "uniform" else ((ilp_file,) if ilp_file else ()),
        init_from_ilp=method == "ddpg+ilp" and ilp_file is None,
        checkpoint_every=max(10, args.episodes),
        enforce="walk" if method == "ddpg-walk" else "step",
        threads=1 if args.jobs > 1 else None,  # parallel runs: one thread each, as --jobs promises
    )
    done = run_search_job(job, folder, overwrite=True)
    assert done is not None
    return done.result


def record(
    p: Problem,
    method: str,
    seed: int,
    res: SearchResult,
    wall_s: float,
    test: TestScorer,
    ilp_run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``ilp_run``: the record of the ILP run a ``ddpg+ilp`` run started from; its evaluations and seconds count
    as this run's too."""
    f = learning_figures(res)
    best = res.best
    acc, rob = test(best.policy, p.objective == "robust")
    ilp = res.notes.get("ilp") or {}
    before = ilp_run or {"evaluations": 0, "wall_s": 0.0}
    return {
        "model": p.model,
        "objective": p.objective,
        "budget": p.budget,
        "method": method,
        "seed": seed,
        "episodes": len(res.episodes),
        "evaluations": len(res.episodes) + int(ilp.get("sensitivity_evaluations", 0)) + int(before["evaluations"]),
        "best_reward": best.reward,
        "best_episode": best.episode,
        "best_phase": f["best_phase"],
        "warmup_mean": f["warmup_mean"],
        "last20_mean": f["last20_mean"],
        "val_accuracy": best.accuracy,
        "val_robust": best.robust_accuracy,
        "test_accuracy": acc,
        "test_robust": rob,
        "relative_latency": best.relative_cost,
        "wall_s": wall_s + float(before["wall_s"]),
        "target": p.target,
        "best_so_far": [max(r.reward for r in res.episodes[: i + 1]) for i in range(len(res.episodes))],
        "policy": best.policy.to_dict(),  # the best policy itself: a warm start from a kept ILP needs no run folder
    }


Pair = tuple[str, str]  # (model, method)


def grid(models: Sequence[str], methods: Sequence[str]) -> set[Pair]:
    """The (model, method) pairs a run over ``models`` x ``methods`` remeasures."""
    return {(m, meth) for m in models for meth in methods}


def kept_runs(
    path: Path, models: Sequence[str], methods: Sequence[str] = METHODS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """What ``--merge`` keeps of an earlier results file: every record this run does not remeasure (a record is
    remeasured when both its model and its method are in this run, whatever its seed or objective), the budgets of
    every model with a kept record (a model this run measures too is checked against its budget:
    :func:`different_problem`), and the provenance of every kept record, as ``earlier`` entries
    ``{"runs": {model: [methods]}, "meta", "settings"}``. A missing file keeps nothing; a file of another schema is
    an error."""
    if not path.exists():
        return [], [], {}
    return kept_from(load_results(path), grid(models, methods))


def load_results(path: Path) -> dict[str, Any]:
    """A results file of this script; ``earlier`` entries of the older ``{"models": [...]}`` form (every method of
    those models) are read as ``{"runs": {model: [methods]}}``."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path} ({exc}); name a search_methods.json this script wrote") from None
    if doc.get("schema") != 1:
        raise SystemExit(f"{path} has schema {doc.get('schema')!r}, not 1; rerun without --merge / --merge-from")
    for e in doc.get("earlier", []):
        if "runs" not in e:
            models = e.pop("models")
            e["runs"] = {
                m: sorted({r["method"] for r in doc["records"] if r["model"] == m}, key=METHODS.index) for m in models
            }
    return doc


def kept_from(
    old: dict[str, Any], remeasured: set[Pair]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """:func:`kept_runs` of a loaded results document (:func:`load_results`), given the pairs remeasured."""
    records = [r for r in old["records"] if (r["model"], r["method"]) not in remeasured]
    kept: dict[str, set[str]] = {}
    for r in records:
        kept.setdefault(r["model"], set()).add(r["method"])
    budgets = {m: b for m, b in old.get("budgets", {}).items() if m in kept}
    owned: dict[str, set[str]] = {}  # (model, method) pairs an earlier entry accounts for
    runs = []
    for e in old.get("earlier", []):
        mine = {m: sorted(set(ms) & kept.get(m, set()), key=METHODS.index) for m, ms in e["runs"].items()}
        for m, ms in mine.items():
            owned.setdefault(m, set()).update(ms)
        runs.append({"runs": mine, "meta": e["meta"], "settings": e["settings"]})
    last = {m: sorted(ms - owned.get(m, set()), key=METHODS.index) for m, ms in kept.items()}
    runs.append({"runs": last, "meta": old["meta"], "settings": old["settings"]})
    for e in runs:
        e["runs"] = {m: ms for m, ms in sorted(e["runs"].items()) if ms}
    return [e for e in runs if e["runs"]], records, budgets


def describe_runs(runs: dict[str, list[str]]) -> str:
    """``{"resnet20": [...every method...], "mobilenet_v2": ["ilp"]}`` as "resnet20, mobilenet_v2 (ilp)"."""
    return ", ".join(m if set(ms) == set(METHODS) else f"{m} ({', '.join(ms)})" for m, ms in runs.items())


def kept_ilp(records: Sequence[dict[str, Any]], p: Problem, work: Path) -> list[dict[str, Any]]:
    """Kept ``ilp`` records of problem ``p`` as the finished runs ``ddpg+ilp`` starts from, so that a rerun of the
    other methods need not measure the ILP again: the answer is the record's own ``policy`` (written into ``work``),
    or, for a record without one, its run folder's ``policy.json`` from a job on the same checkpoint, target and
    budget."""
    out = []
    for r in records:
        if (r["model"], r["objective"], r["method"]) != (p.model, p.objective, "ilp") or abs(
            r["budget"] - p.budget
        ) > 1e-9:
            continue
        folder = work / p.model / p.objective / "ilp" / f"seed{r['seed']}"
        if "policy" in r:
            path = save_policy(Policy.from_dict(r["policy"]), folder / "recorded-policy.json")
            out.append({"record": r, "policy_file": str(path)})
            continue
        try:
            job = json.loads((folder / "config" / "job.json").read_text(encoding="utf-8"))["fields"]
        except (OSError, ValueError, KeyError):
            continue
        same = (job.get("checkpoint"), job.get("target"), job.get("budget")) == (
            str(p.checkpoint),
            p.target,
            str(Budget("latency", p.budget)),
        )
        if same and (folder / "policy.json").exists():
            out.append({"record": r, "policy_file": str(folder / "policy.json")})
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if values else 0.0


def checks(records: Sequence[dict[str, Any]], warmup: int) -> list[dict[str, Any]]:
    """The issue's criteria, computed from the records (never judged by hand)."""
    out = []
    for (model, objective), group in itertools.groupby(
        sorted(records, key=lambda r: (r["model"], r["objective"])), key=lambda r: (r["model"], r["objective"])
    ):
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in group:
            runs.setdefault(r["method"], []).append(r)

        def add(what: str, ok: bool | None, detail: str, model: str = model, objective: str = objective) -> None:
            out.append({"model": model, "objective": objective, "check": what, "ok": bool(ok), "detail": detail})

        ddpg = runs.get("ddpg", [])
        if ddpg:
            after = [r["best_episode"] >= warmup for r in ddpg]
            add(
                "DDPG's best episode after warm-up, every seed",
                all(after),
                f"best episodes {[r['best_episode'] for r in ddpg]}",
            )
            grew = [r["warmup_mean"] is not None and r["last20_mean"] > r["warmup_mean"] for r in ddpg]
            add(
                "DDPG's last-20% mean > its warm-up mean, every seed",
                all(grew),
                ", ".join(f"{r['last20_mean']:.4f} vs {_num(r['warmup_mean'])}" for r in ddpg),
            )
        rand = runs.get("random", [])
        if ddpg and rand:
            d = [r["best_reward"] for r in ddpg]
            q = [r["best_reward"] for r in rand]
            margin = max(_spread(d), _spread(q))
            add(
                "DDPG's median best beats random's by more than the larger seed spread",
                statistics.median(d) - statistics.median(q) > margin,
                f"{statistics.median(d):.4f} vs {statistics.median(q):.4f}, spread {margin:.4f}",
            )
            curve = [statistics.median(c) for c in zip(*(r["best_so_far"] for r in ddpg), strict=False)]
            target = statistics.median(q)
            reach = next((i + 1 for i, v in enumerate(curve) if v >= target), None)
            n = min(len(r["best_so_far"]) for r in ddpg)
            add(
                "DDPG reaches random's final median best within a third of the episodes",
                reach is not None and reach <= n / 3,
                f"reached at episode {reach} of {n}",
            )
        ilp = runs.get("ilp", [])
        for method in ("ddpg", "ddpg+ilp"):
            if runs.get(method) and ilp:
                a = statistics.median(r["best_reward"] for r in runs[method])
                b = statistics.median(r["best_reward"] for r in ilp)
                need = "at least as good as" if objective == "clean" else "better than"
                ok = a >= b if objective == "clean" else a > b
                add(f"{method} {need} the ILP (median best reward)", ok, f"{a:.4f} vs {b:.4f}")
    return out


def markdown(records: Sequence[dict[str, Any]], found: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Search methods: uniform, random, ILP, DDPG, DDPG warm-started from the ILP",
        "",
        "Medians over seeds (min-max); rewards on search-val, test figures for each run's best policy.",
        "",
        "| model | objective | budget | method | seeds | episodes | evaluations | best reward | best episode |"
        " warm-up mean | last-20% mean | val acc % | test acc % | test robust % | latency x W8A8 | wall s |",
        "|" + "---|" * 16,
    ]

    def med(vals: Sequence[Any], spec: str, scale: float = 1.0) -> str:
        v = [scale * x for x in vals if x is not None]
        if not v:
            return "-"
        m = format(statistics.median(v), spec)
        return m if len(v) == 1 else f"{m} ({format(min(v), spec)}-{format(max(v), spec)})"

    key = lambda r: (r["model"], r["objective"], METHODS.index(r["method"]))  # noqa: E731
    for (model, objective, _), group in itertools.groupby(sorted(records, key=key), key=key):
        g = list(group)
        lines.append(
            "| "
            + " | ".join(
                [
                    model,
                    objective,
                    f"{g[0]['budget']:.2f}x",
                    g[0]["method"],
                    str(len(g)),
                    med([r["episodes"] for r in g], ".0f"),
                    med([r["evaluations"] for r in g], ".0f"),
                    med([r["best_reward"] for r in g], ".4f"),
                    med([r["best_episode"] for r in g], ".0f"),
                    med([r["warmup_mean"] for r in g], ".4f"),
                    med([r["last20_mean"] for r in g], ".4f"),
                    med([r["val_accuracy"] for r in g], ".2f", 100),
                    med([r["test_accuracy"] for r in g], ".2f", 100),
                    med([r["test_robust"] for r in g], ".2f", 100),
                    med([r["relative_latency"] for r in g], ".3f"),
                    med([r["wall_s"] for r in g], ".1f"),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## The issue's criteria",
        "",
        "| model | objective | check | ok | figures |",
        "|---|---|---|---|---|",
    ]
    for c in found:
        lines.append(
            f"| {c['model']} | {c['objective']} | {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |"
        )
    return "\n".join(lines) + "\n"


#: the commit that made ``SearchConfig.reward_baseline="none"`` the default (before it: ``moving``)
RAW_REWARD_COMMIT = "7135c55"


def _baseline(settings: dict[str, Any], meta: dict[str, Any]) -> str:
    """The DDPG reward baseline a run's records were measured with: its settings say so since they record it;
    before, the default at the run's commit (``none`` from :data:`RAW_REWARD_COMMIT` on)."""
    if "reward_baseline" in settings:
        return str(settings["reward_baseline"])
    ancestor = subprocess.run(
        ["git", "merge-base", "--is-ancestor", RAW_REWARD_COMMIT, meta.get("commit", "")],
        cwd=RESULTS.parent,
        capture_output=True,
    )
    return {0: "none", 1: "moving"}.get(ancestor.returncode, "unknown")


def readme_block(data: dict[str, Any]) -> str:
    """The README's summary: per problem, each method's median best reward and test figures, then the checks."""
    meta = data["meta"]
    lines = [
        "| model | objective | budget | method | seeds | best reward (median, min-max) | best episode | "
        "test acc % | test robust % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["model"], r["objective"], METHODS.index(r["method"]))  # noqa: E731
    for _, group in itertools.groupby(sorted(data["records"], key=key), key=key):
        g = list(group)
        best = [r["best_reward"] for r in g]
        span = "" if len(g) == 1 else f" ({min(best):.3f} to {max(best):.3f})"
        rob = [r["test_robust"] for r in g if r["test_robust"] is not None]
        lines.append(
            f"| {g[0]['model']} | {g[0]['objective']} | {g[0]['budget']:.2f}x | {g[0]['method']} | {len(g)} | "
            f"{statistics.median(best):.3f}{span} | {statistics.median(r['best_episode'] for r in g):.0f} | "
            f"{100 * statistics.median(r['test_accuracy'] for r in g):.1f} | "
            + (f"{100 * statistics.median(rob):.1f} |" if rob else "- |")
        )
    lines += ["", "| model | objective | the issue's check | met | figures |", "|---|---|---|---|---|"]
    for c in data["checks"]:
        lines.append(
            f"| {c['model']} | {c['objective']} | {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |"
        )
    owned = {(m, meth) for e in data.get("earlier", []) for m, ms in e["runs"].items() for meth in ms}
    top: dict[str, list[str]] = {}
    for r in data["records"]:
        if (r["model"], r["method"]) not in owned and r["method"] not in top.setdefault(r["model"], []):
            top[r["model"]].append(r["method"])
    runs = [{"runs": top, "meta": meta, "settings": data["settings"]}, *data.get("earlier", [])]
    parts = []
    for e in runs:
        st, ddpg = e["settings"], any(m.startswith("ddpg") for ms in e["runs"].values() for m in ms)
        parts.append(
            f"{describe_runs(e['runs'])}: at {e['meta']['commit'][:8]}, {e['meta']['date'][:10]}, "
            f"{e['meta'].get('machine', {}).get('cpu', 'unknown CPU')} ({st['episodes']} episodes, {st['warmup']} "
            f"warm-up, seeds {st['seeds']}" + (f", DDPG reward baseline {_baseline(st, e['meta'])})" if ddpg else ")")
        )
    lines.append(
        "\n`python -m benchmarks.search_methods`; "
        + "; ".join(parts)
        + ". Every run's figures and command are in `benchmarks/results/search_methods.md`."
    )
    return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Median best-so-far reward vs episode per method, one panel per (model, objective)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hwsearch.io import atomic_write_with

    panels = sorted({(r["model"], r["objective"]) for r in records})
    fig = Figure(figsize=(6.5, 3.6 * len(panels)))
    colors = dict(zip(METHODS, ["#7f7f7f", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"], strict=True))
    for i, (model, objective) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        for method in METHODS:
            runs = [r for r in records if (r["model"], r["objective"], r["method"]) == (model, objective, method)]
            if not runs:
                continue
            if method in ("uniform", "ilp"):  # not episodic searches: their best as a line
                best = statistics.median(r["best_reward"] for r in runs)
                ax.axhline(best, color=colors[method], linestyle="--", label=f"{method} (best)")
                continue
            curve = [statistics.median(c) for c in zip(*(r["best_so_far"] for r in runs), strict=False)]
            ax.plot(range(len(curve)), curve, color=colors[method], label=f"{method} (median of {len(runs)})")
        budget = next(r["budget"] for r in records if (r["model"], r["objective"]) == (model, objective))
        ax.set_title(f"{model}, {objective} objective, latency budget {budget:.2f}x W8A8")
        ax.set_xlabel("episode")
        ax.set_ylabel("best-so-far reward (search-val)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def different_problem(kept: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """Why records measured under ``kept`` (a model's ``budgets`` entry) cannot sit beside records measured under
    ``new``, or None: another target or budget, or another checkpoint (FP32's or any uniform policy's search-val
    accuracy differs: training is not bit-identical across CPUs)."""
    if kept is None:
        return None
    for what in ("target", "budget", "fp32_val_accuracy"):
        if kept.get(what) != new.get(what):
            return f"{what} {kept.get(what)!r} vs {new.get(what)!r}"
    old_u = {u["policy"]: u["val_accuracy"] for u in kept.get("uniform", [])}
    new_u = {u["policy"]: u["val_accuracy"] for u in new.get("uniform", [])}
    if old_u != new_u:
        diff = sorted(k for k in old_u.keys() | new_u.keys() if old_u.get(k) != new_u.get(k))
        return f"uniform policies' search-val accuracy differs ({', '.join(diff[:3])}...): another checkpoint"
    return None


def merge_results(
    base: dict[str, Any], new: dict[str, Any], models: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``base`` with ``new``'s records (of ``models``, default all) in place of its records of the same (model,
    method) pairs (both loaded by :func:`load_results`); ``new``'s provenance heads the result, ``base``'s runs move
    under ``earlier``. Where a model's records in the two were measured on different problems
    (:func:`different_problem`: another budget, or another checkpoint), ``new``'s replace every record of that model,
    and the returned lines say which were dropped: records that are not comparable never sit side by side."""
    take = [r for r in new["records"] if models is None or r["model"] in models]
    if not take:
        return base, []
    pairs = {(r["model"], r["method"]) for r in take}
    mine = sorted({m for m, _ in pairs})
    before = base.get("budgets", {})
    stale = {m: why for m in mine if (why := different_problem(before.get(m), new["budgets"][m]))}
    remeasured = pairs | {(r["model"], r["method"]) for r in base["records"] if r["model"] in stale}
    dropped = [
        f"{m}: {', '.join(sorted({meth for mm, meth in remeasured - pairs if mm == m}, key=METHODS.index))} dropped "
        f"({why})"
        for m, why in stale.items()
        if any(mm == m for mm, _ in remeasured - pairs)
    ]
    earlier, records, budgets = kept_from(base, remeasured)
    doc: dict[str, Any] = {"schema": 1, "meta": new["meta"], "settings": new["settings"]}
    doc["budgets"] = {**budgets, **{m: new["budgets"][m] for m in mine}}
    doc["records"] = records + take
    kept_new = [{**e, "runs": {m: ms for m, ms in e["runs"].items() if m in mine}} for e in new.get("earlier", [])]
    doc["earlier"] = [e for e in earlier + kept_new if e["runs"]]
    return doc, dropped


#: one run of a problem: (method, seed, the ILP run's result a ``ddpg+ilp`` run starts from, or None)
Run = tuple[str, int, dict[str, Any] | None]


def _one_run(p: Problem, run: Run, args: argparse.Namespace, folder: Path, files: Sequence[str]) -> dict[str, Any]:
    """A run and its record, in a worker process (one torch thread: runs go in parallel, not threads)."""
    method, seed, ilp = run
    torch.set_num_threads(1)
    ws = prepare(p.checkpoint)
    t0 = time.perf_counter()
    res = run_method(p, method, seed, args, folder, files, ilp["policy_file"] if ilp else None)
    wall = time.perf_counter() - t0
    rec = record(p, method, seed, res, wall, TestScorer(ws, args.eps), ilp["record"] if ilp else None)
    return {"record": rec, "policy_file": str(folder / "policy.json")}


def plan_runs(
    objective: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    known_ilp: Sequence[dict[str, Any]] = (),
    done: Collection[tuple[str, int]] = (),
) -> tuple[list[Run], Callable[[dict[str, Any]], list[Run]]]:
    """The runs to start, and which to queue when one finishes: each ``ddpg+ilp`` run waits for the ILP run it
    starts from (its own seed's on the robust objective; on the clean one, uniform and the ILP cannot depend on the
    seed, so they run once and every seed starts from that ILP). The ILP goes first: others wait on it.
    ``known_ilp``: finished ILP runs (:func:`kept_ilp`) that ``ddpg+ilp`` starts from at once; a seed with none is
    measured. ``done``: (method, seed) runs already recorded (``--resume``), not run again."""
    runs = [(m, s) for m in methods for s in seeds]
    if objective == "clean":
        runs = [(m, s) for m, s in runs if m not in ("ilp", "uniform") or s == seeds[0]]
    ilp_seeds = [s for m, s in runs if m == "ilp"]
    if "ddpg+ilp" in methods and not ilp_seeds:  # measured for the warm start (the caller need not record it)
        ilp_seeds = list(seeds[:1]) if objective == "clean" else list(seeds)
    warm = [s for m, s in runs if m == "ddpg+ilp" and (m, s) not in done]

    def follow(finished: dict[str, Any]) -> list[Run]:
        rec = finished["record"]
        if rec["method"] != "ilp":
            return []
        return [("ddpg+ilp", s, finished) for s in warm if s == rec["seed"] or len(ilp_seeds) == 1]

    known = [k for k in known_ilp if k["record"]["seed"] in ilp_seeds]
    first: list[Run] = [r for k in known for r in follow(k)]
    first += [("ilp", s, None) for s in ilp_seeds if s not in {k["record"]["seed"] for k in known}]
    first += [(m, s, None) for m, s in runs if m not in ("ilp", "ddpg+ilp") and (m, s) not in done]
    return first, follow


def stop_workers(pool: Any, grace_s: float = 5.0) -> None:
    """Cancel what is queued and end the workers of a ``ProcessPoolExecutor``, whose shutdown alone lets each
    worker finish its run (minutes of a core, orphaned when the driver was killed): SIGTERM, and SIGKILL for any
    still there after ``grace_s`` (a worker whose code caught SIGTERM). A second SIGTERM to the driver meanwhile is
    ignored, so every worker is reached."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in procs:
            proc.join(timeout=max(deadline - time.monotonic(), 0.0))
            if proc.exitcode is None:
                proc.kill()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parallel(
    p: Problem,
    runs: Sequence[Run],
    args: argparse.Namespace,
    work: Path,
    files: Sequence[str],
    follow: Callable[[dict[str, Any]], Sequence[Run]] = lambda done: (),
) -> Iterator[dict[str, Any]]:
    """``runs`` on ``args.jobs`` worker processes, each result as soon as it is in (a kill keeps what finished);
    ``follow(result)`` names runs that could not start before it (``ddpg+ilp`` after its ILP), queued then. A failed
    run cancels the queued ones and raises at once."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    def folder(run: Run) -> Path:
        return work / p.model / p.objective / run[0] / f"seed{run[1]}"

    if args.jobs == 1:
        todo = list(runs)
        while todo:
            done = _one_run(p, todo[0], args, folder(todo[0]), files)
            todo = todo[1:] + list(follow(done))
            yield done
        return
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("forkserver"))
    try:
        pending: set[Future[dict[str, Any]]] = {pool.submit(_one_run, p, r, args, folder(r), files) for r in runs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done = fut.result()
                pending |= {pool.submit(_one_run, p, r, args, folder(r), files) for r in follow(done)}
                yield done
    except BaseException:  # a failed run, Ctrl-C or SIGTERM: the workers' runs stop too, not only the queue
        stop_workers(pool)
        raise
    else:
        pool.shutdown(wait=True)


def write_doc(out: Path, doc: dict[str, Any]) -> None:
    """``OUT/search_methods.json`` (records sorted, the issue's checks computed from them), the markdown rendered from
    that file, the plot, and the README block when ``out`` is the project's results folder."""
    doc["records"].sort(key=lambda r: (r["model"], r["objective"], METHODS.index(r["method"]), r["seed"]))
    doc["checks"] = checks(doc["records"], doc["settings"]["warmup"])
    if not doc.get("earlier"):
        doc.pop("earlier", None)
    js = atomic_write_json(out / "search_methods.json", doc)
    data = json.loads(js.read_text(encoding="utf-8"))  # the markdown is rendered from the file just written
    md = markdown(data["records"], data["checks"]) + provenance_md(data["meta"])
    for e in data.get("earlier", []):
        md += f"\nRecords of {describe_runs(e['runs'])} kept from an earlier run:" + provenance_md(e["meta"])
    atomic_write_text(out / "search_methods.md", md)
    if data["records"] and out.resolve() == RESULTS.resolve():  # only the project's own results reach the README
        update_readme("search_methods", readme_block(data))
    if data["records"]:
        plot(data["records"], out / "search_methods.png")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=200, help="episodes of every episodic method")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--robust-everywhere", action="store_true", help="also the robust objective at depth")
    ap.add_argument("--robust-weight", type=float, default=5.0)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--min-bits", type=int, default=2)
    ap.add_argument("--train-epochs", type=int, default=8)
    ap.add_argument("--out", default=str(RESULTS), help="where search_methods.json/.md/.png go")
    ap.add_argument("--work", default="runs/search_methods", help="checkpoints and run folders (git ignores runs/)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process and one torch thread each")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep OUT/search_methods.json's records of the (model, method) pairs this run does not measure (each "
        "keeps its run's command, commit and date under 'earlier'; a pair this run measures loses all its seeds' and "
        "objectives' records); ddpg+ilp then starts from a kept ILP run's answer when --methods leaves ilp out and "
        "its run folder is still under --work",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="go on with OUT/search_methods.json: keep every record in it and run only the (method, seed) runs of "
        "--models x --methods it lacks (a benchmark stopped midway, or one started by older code: each record keeps "
        "its run's provenance); ddpg+ilp starts from a kept ILP answer still under --work",
    )
    ap.add_argument(
        "--merge-from",
        nargs="+",
        metavar="FILE",
        help="measure nothing: put each FILE's records (a search_methods.json this script wrote to another --out, "
        "e.g. a run on other models or methods in parallel; only those of --models when given) into OUT's, in place "
        "of the same (model, method) pairs (of all the model's records when FILE measured it on another checkpoint "
        "or budget, and says which were dropped)",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: run at least 1 at a time")
    out = Path(args.out)
    if args.merge_from:
        doc = load_results(out / "search_methods.json")
        for f in args.merge_from:
            doc, dropped = merge_results(doc, load_results(Path(f)), args.models)
            for line in dropped:
                print(f"--merge-from {f}: {line}")
        write_doc(out, doc)
        return 0
    args.models = args.models or list(MODELS)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwinds, so _parallel stops its workers
    try:
        return _measure(args, out, list(argv) if argv is not None else None)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _measure(args: argparse.Namespace, out: Path, argv: list[str] | None) -> int:
    torch.set_num_threads(1)
    work = Path(args.work)
    meta = provenance(argv)
    records: list[dict[str, Any]] = []
    budgets: dict[str, Any] = {}
    earlier: list[dict[str, Any]] = []
    if args.merge or args.resume:
        remeasured = () if args.resume else args.methods
        earlier, records, budgets = kept_runs(out / "search_methods.json", args.models, remeasured)
    settings = {**vars(args), "reward_baseline": SearchConfig().reward_baseline}  # which DDPG measured these

    def write() -> None:  # after every run: a long benchmark killed midway keeps what it measured
        doc = {"schema": 1, "meta": meta, "settings": settings, "budgets": budgets, "records": records}
        if earlier:
            doc["earlier"] = earlier
        write_doc(out, doc)

    problems = []  # every model's problem first: a kept record from another problem stops the run before any work
    for model in args.models:
        target, objectives = MODELS[model]
        if args.robust_everywhere:
            objectives = ("clean", "robust")
        ckpt = _checkpoint(model, work, args.train_epochs)
        ws = prepare(ckpt)
        budget, notes = pick_budget(ws, target, args.min_bits)
        entry = {"target": target, "budget": budget, **notes}
        why = different_problem(budgets.get(model), entry)
        if why:  # kept records of this model (--merge, other methods) were measured on another problem
            raise SystemExit(f"--merge: {model}'s kept records come from another problem ({why}); rerun all methods")
        files = _uniform_files(ws, target, budget, args.min_bits, work / model / "uniform")
        problems.append((model, entry, files, [Problem(model, o, target, budget, ckpt) for o in objectives]))
        del ws
    for model, entry, files, per_objective in problems:
        budgets[model] = entry
        for p in per_objective:
            known = kept_ilp(records, p, work)
            had = {(r["method"], r["seed"]) for r in records if (r["model"], r["objective"]) == (model, p.objective)}
            had = had if args.resume else set()
            first, follow = plan_runs(p.objective, args.methods, args.seeds, known, had)
            for finished in _parallel(p, first, args, work, files, follow):
                rec = finished["record"]
                # an ILP measured again only for a warm start (its answer was not on disk) is not recorded twice
                if (rec["method"] != "ilp" or "ilp" in args.methods) and (rec["method"], rec["seed"]) not in had:
                    records.append(rec)
                    write()
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
