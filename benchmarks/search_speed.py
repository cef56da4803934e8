"""Seconds per evaluated episode of a robust search, before and after the evaluation speed work, in one run.

A search spends its time scoring policies (quantize, clean pass, the search's attack pair); the agent's share is
small. This times the same policies (fixed W8A8 plus seeded random mixes) with the search's evaluator, for
smallcnn and resnet20 on mnist5k, robustness in the reward (STE + shadow PGD-10 at eps 0.1 on 200 images, clean
accuracy on 1,000), in three configurations, interleaved round by round so that machine noise hits them alike:

- ``before``: the code at ``--base`` (default: the last commit before this work), 1 thread: today's settings;
- ``after, 1 thread``: this tree, 1 thread (the code's own gain);
- ``after, N threads``: this tree with every core this process may use (``os.sched_getaffinity``);
- ``after, N shards``: this tree, each policy scored by N one-thread processes on 1/N of the images each
  (:mod:`hwsearch.evaluate_shards`, what a search chooses when threads scale poorly); its figures must equal
  ``after, 1 thread``'s;
- ``after, N one-thread processes``: N identical one-thread timers at once, the machine's throughput with one
  environment per core (``--n-envs N``), for comparison.

Each run is a fresh process (``benchmarks/_eval_timer.py``) on the tree under test. Wall seconds are what a user
waits; on a machine that other processes load, the process's CPU seconds measure the code's own cost more
steadily (for the one-thread configurations they are the same quantity), so both are recorded and the code's
speed-up is given on each. Figures and their ratios go
to ``benchmarks/results/search_speed.json`` (with command, commit, CPU, load) and ``search_speed.md``.

Then, per model, a real robust search of ``--search-episodes`` (300) episodes with today's defaults is timed end to
end (the issue's bar for resnet20: under 12 minutes on 2 cores).

    python -m benchmarks.search_speed [--rounds 2] [--policies 4] [--base COMMIT] [--search-episodes 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import _cpu_model, _git, faithful_estimate, update_readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TIMER = ROOT / "benchmarks" / "_eval_timer.py"
BASE = "08a29b5"  # main before the evaluation speed work
MODELS = {"smallcnn": 8, "resnet20": 2}  # epochs of `hwsearch train` for each benchmark checkpoint
# the real search's budget: the demo's for smallcnn; resnet20's cheapest policy costs 0.634x of fixed 8-bit on
# bitfusion-edge (its first layer and shortcuts stay costly), so 0.75x leaves the search room to choose
BUDGETS = {"smallcnn": "latency=0.5x", "resnet20": "latency=0.75x"}
BEFORE_ESTIMATE = (10, 200)  # (PGD steps, images) of the search's attack pair before issue 13


def _checkpoint(model: str, epochs: int) -> Path:
    path = ROOT / "runs" / "search_speed" / f"{model}-e{epochs}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        cmd = [sys.executable, "-m", "hwsearch.cli", "train", "--model", model, "--epochs", str(epochs)]
        subprocess.run([*cmd, "--out", str(path), "--quiet"], check=True, cwd=ROOT)
    return path


def _base_tree(commit: str, into: Path) -> Path:
    """The package at ``commit``, laid out so that ``import hwsearch`` (with envs, latency_tables) resolves there."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for sub in ("envs", "latency_tables"):
        shutil.copytree(into / sub, into / "hwsearch" / sub)
    return into


def _time(
    tree: Path,
    ckpt: Path,
    threads: int,
    policies: int,
    estimate: tuple[int, int],
    processes: int = 1,
    shards: int = 1,
) -> dict:
    """One timer process (whose evaluator may split each policy over ``shards`` worker processes), or
    ``processes`` identical one-thread timers at once (what one environment per core does): then a policy's
    seconds are the slowest process's median over ``processes``, the machine's throughput."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(TIMER), "--checkpoint", str(ckpt), "--threads", str(threads), "--policies"]
    cmd += [str(policies), "--steps", str(estimate[0]), "--robust-images", str(estimate[1])]
    if shards > 1:
        cmd += ["--shards", str(shards)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tree)
        for _ in range(processes)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate()
            if p.returncode:
                raise subprocess.CalledProcessError(p.returncode, cmd, stdout, stderr)
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if processes == 1:
        return outs[0]
    slowest = max(outs, key=lambda o: o["median_s"])
    return {
        **slowest,
        "median_s": slowest["median_s"] / processes,
        "median_cpu_s": slowest["median_cpu_s"],
        "processes": [{"median_s": o["median_s"], "median_cpu_s": o["median_cpu_s"]} for o in outs],
    }


def _search(ckpt: Path, episodes: int, folder: Path, estimate: tuple[int, int], budget: str) -> dict:
    """A real robust search with today's defaults (the demo's settings on ``ckpt``, the model's faithful estimate):
    its wall time, where it went and how it used the cores, read from the summary it writes."""
    cmd = [sys.executable, "-m", "hwsearch.cli", "search", "--checkpoint", str(ckpt), "--target", "bitfusion-edge"]
    cmd += ["--budget", budget, "--robust-weight", "5", "--eps", "0.1", "--episodes", str(episodes)]
    cmd += ["--steps", str(estimate[0]), "--robust-images", str(estimate[1])]
    cmd += ["--out", str(folder), "--overwrite", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - t0
    text = (folder / "summary.md").read_text(encoding="utf-8")
    parts = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([a-z0-9 ,:+]+) \| ([0-9.]+) \|", text, re.M)}
    cache = re.search(r"Evaluation cache: (\d+) hits of (\d+) evaluations", text)
    threads = re.search(r"^Torch threads: (\d+)", text, re.M) or re.search(
        r"^Parallelism: .*?(\d+) torch thread", text, re.M
    )
    compute = re.search(r"^(Parallelism: .*|Torch threads: .*)$", text, re.M)
    return {
        "episodes": episodes,
        "wall_s": wall,
        "parts_s": parts,
        "cache_hits": int(cache.group(1)) if cache else None,
        "evaluations": int(cache.group(2)) if cache else None,
        "torch_threads": int(threads.group(1)) if threads else None,
        "parallelism": compute.group(1) if compute else None,
        "estimate": f"pgd{estimate[0]}x{estimate[1]}",
        "budget": budget,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--policies", type=int, default=4, help="random policies per run (plus fixed W8A8)")
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument(
        "--search-episodes",
        type=int,
        default=300,
        help="also time a real robust search of this many episodes per model with today's defaults (0: skip)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep search_speed.json's records of the models not measured now (each names the run that measured it)",
    )
    ap.add_argument(
        "--rerender", action="store_true", help="rewrite search_speed.md and the README block from the JSON"
    )
    args = ap.parse_args()
    if args.rerender:
        print(write_outputs(json.loads((RESULTS / "search_speed.json").read_text(encoding="utf-8"))))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()[0]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        base = _base_tree(args.base, Path(tmp))
        for model in args.models:
            now = faithful_estimate(model)
            configs = [
                ("before", base, 1, BEFORE_ESTIMATE, 1, 1),
                ("after, 1 thread", ROOT, 1, now, 1, 1),
                (f"after, {cores} threads", ROOT, cores, now, 1, 1),
            ]
            if cores > 1:  # one shard per core (cores.choose_parallelism's other answer); one env per core
                configs.append((f"after, {cores} shards", ROOT, 1, now, 1, cores))
                configs.append((f"after, {cores} one-thread processes", ROOT, 1, now, cores, 1))
            ckpt = _checkpoint(model, MODELS[model])
            runs: dict[str, list[dict]] = {name: [] for name, *_ in configs}
            for _ in range(args.rounds):
                for name, tree, threads, estimate, processes, shards in configs:
                    runs[name].append(_time(tree, ckpt, threads, args.policies, estimate, processes, shards))
                    last = runs[name][-1]
                    cpu_s = "-" if last["median_cpu_s"] is None else f"{last['median_cpu_s']:.2f}"
                    print(
                        f"{model:9s} {name:18s} {last['median_s']:.2f} s wall, {cpu_s} s CPU per evaluation", flush=True
                    )
            same = all(  # the clean figure must not move; the robust one is the estimate robust_fidelity proves
                [r["accuracy"] for r in runs[name][0]["rows"]] == [r["accuracy"] for r in runs["before"][0]["rows"]]
                for name in runs
            )
            search = (
                _search(ckpt, args.search_episodes, Path(tmp) / f"search-{model}", now, BUDGETS[model])
                if args.search_episodes
                else None
            )
            if search:
                print(
                    f"{model:9s} a {search['episodes']}-episode robust search: {search['wall_s']:.0f} s wall",
                    flush=True,
                )
            sharded = [name for name in runs if name.endswith(" shards")]
            figures = {  # (clean, robust) per policy, first round: shards must give one process's figures
                name: [(r["accuracy"], r["robust_accuracy"]) for r in runs[name][0]["rows"]] for name in runs
            }
            same_as_one_process = all(figures[name] == figures["after, 1 thread"] for name in sharded)
            seconds = {name: statistics.median(r["median_s"] for r in rs) for name, rs in runs.items()}
            cpu = {
                name: statistics.median(r["median_cpu_s"] for r in rs)
                for name, rs in runs.items()
                if rs[0]["median_cpu_s"] is not None
            }
            before = seconds["before"]
            records.append(
                {
                    "model": model,
                    "estimate": f"pgd{now[0]}x{now[1]}",
                    "seconds_per_evaluation": seconds,
                    "cpu_seconds_per_evaluation": cpu,
                    "speedup_vs_before": {name: before / s for name, s in seconds.items()},
                    "cpu_speedup_vs_before": {name: cpu["before"] / c for name, c in cpu.items()},
                    "shards_same_figures_as_one_process": same_as_one_process if sharded else None,
                    "projected_300_episode_search_s": {name: 300 * s for name, s in seconds.items()},
                    "same_clean_accuracy_as_before": same,
                    "search": search,
                    "robust_estimates": {
                        name: [r["robust_accuracy"] for r in rs[0]["rows"]] for name, rs in runs.items()
                    },
                    "runs": runs,
                }
            )
    if args.merge and (RESULTS / "search_speed.json").is_file():
        old = json.loads((RESULTS / "search_speed.json").read_text(encoding="utf-8"))
        run = {k: old[k] for k in ("command", "commit", "date", "load_average_1min")}
        kept = [{**r, "kept_from": r.get("kept_from", run)} for r in old["records"] if r["model"] not in args.models]
        records = sorted(kept + records, key=lambda r: list(MODELS).index(r["model"]))
    result = {
        "command": "python -m benchmarks.search_speed " + " ".join(sys.argv[1:]),
        "commit": _git("rev-parse", "HEAD"),
        "base": _git("rev-parse", args.base),
        "cpu": _cpu_model(),
        "cores": cores,
        "date": started,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "setting": "robust search evaluation: clean accuracy on 1,000 search-val images, the STE + shadow PGD pair "
        f"at eps 0.1 (cascade): before PGD-{BEFORE_ESTIMATE[0]} on {BEFORE_ESTIMATE[1]} images (the search's "
        "default then), after the cheapest estimate benchmarks.robust_fidelity found faithful for the model ("
        + ", ".join(f"{r['model']} {r['estimate']}" for r in records)
        + "); "
        "W8A8 + seeded random W2-8/A2-8 policies; median over policies, then over rounds; 'shards': each policy "
        "scored by that many one-thread processes, 1/N of the images each (a search's default when threads scale "
        "poorly); 'one-thread processes': that many identical timers at once, the slowest one's seconds divided "
        "by their number (the throughput of one environment per core)",
        "records": records,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(write_outputs(result))


def clean_drift(rec: dict) -> tuple[float, int, int]:
    """How far each configuration's clean accuracy moved from before's, policy by policy (first round): the
    largest difference in points, how many (configuration, policy) pairs differ, and how many were compared."""
    before = [r["accuracy"] for r in rec["runs"]["before"][0]["rows"]]
    diffs = [
        abs(r["accuracy"] - b)
        for name, rs in rec["runs"].items()
        if name != "before"
        for r, b in zip(rs[0]["rows"], before, strict=True)
    ]
    return 100 * max(diffs, default=0.0), sum(d > 0 for d in diffs), len(diffs)


def render(result: dict) -> str:
    """search_speed.md from the results file."""
    records, load = result["records"], result["load_average_1min"]
    lines = [
        f"# Search speed ({result['date']}, {result['cpu']}, {result['cores']} cores, commit {result['commit'][:10]})",
        "",
        f"`{result['command']}`; before = commit {result['base'][:10]}. {result['setting']}. "
        f"1-min load average {load['start']:.1f} at start, {load['end']:.1f} at end.",
        "",
        "| model | configuration | wall s / evaluation | speed-up (wall) | CPU s / evaluation | speed-up (CPU) "
        "| 300 evaluated episodes (wall s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        cpu, cpu_up = rec["cpu_seconds_per_evaluation"], rec["cpu_speedup_vs_before"]
        for name, s in rec["seconds_per_evaluation"].items():
            lines.append(
                f"| {rec['model']} | {name} | {s:.2f} | {rec['speedup_vs_before'][name]:.2f}x | "
                + (f"{cpu[name]:.2f} | {cpu_up[name]:.2f}x | " if name in cpu else "- | - | ")
                + f"{rec['projected_300_episode_search_s'][name]:.0f} |"
            )
    checked = [r for r in records if r.get("shards_same_figures_as_one_process") is not None]
    if checked:
        lines += [
            "",
            "Shards' CPU seconds are not measured (the workers' are not the timer's). Their clean and robust "
            "figures, policy by policy, against one process's: "
            + ", ".join(
                f"{r['model']} {'identical' if r['shards_same_figures_as_one_process'] else 'DIFFERENT'}"
                for r in checked
            )
            + ".",
        ]
    searches = [r for r in records if r["search"]]
    if searches:
        summed = any("summed over" in k for r in searches for k in r["search"]["parts_s"])
        lines += [
            "",
            "A real robust search with today's defaults (`hwsearch search --target bitfusion-edge --robust-weight 5 "
            "--eps 0.1`, the model's faithful estimate, budget "
            + ", ".join(f"{r['model']} {r['search']['budget']}" for r in searches)
            + "), timed end to end in a fresh process"
            + (
                ". With one environment per core a summary sums the workers' evaluation seconds (CPU seconds, more "
                "than the wall time) and has no agent figure:"
                if summed
                else ":"
            ),
            "",
            "| model | episodes | wall s | evaluations (cache hits) | quantize + accuracy s | attack s | agent and other s "
            "| cores used |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in searches:
            sr = r["search"]
            parts = {
                re.sub(r"^evaluation, summed over \d+ workers: ", "evaluation: ", k): v
                for k, v in sr["parts_s"].items()
            }
            lines.append(
                f"| {r['model']} | {sr['episodes']} | {sr['wall_s']:.0f} | {sr['evaluations']} ({sr['cache_hits']}) | "
                + " | ".join(
                    f"{parts[k]:.0f}" if k in parts else "-"
                    for k in ("evaluation: quantize + accuracy", "evaluation: attack", "agent and other")
                )
                + f" | {sr.get('parallelism') or sr['torch_threads']} |"
            )
    lines += [
        "",
        "Clean accuracy of the same policies, after against before. Before calibrated the activation ranges on "
        "the first 512 training images, all zeros and ones until the splits were shuffled (d17214d), so its grids "
        "differ; the other changes (channels-last convolutions, folded batch norms) move values by float rounding "
        "only, which at 2-3 bits can still flip a rounding that every later layer inherits:",
        "",
    ]
    for r in records:
        worst, n_diff, n = clean_drift(r)
        lines.append(
            f"- {r['model']}: {n_diff} of {n} (configuration, policy) pairs differ; largest {worst:.1f} points"
        )
    lines += kept_lines(records)
    return "\n".join(lines) + "\n"


def write_outputs(result: dict) -> str:
    """search_speed.md and the README block from ``result`` (what the run wrote, or the file for --rerender)."""
    text = render(result)
    (RESULTS / "search_speed.md").write_text(text)
    update_readme("search_speed", readme_block(result))
    return text


def kept_lines(records: list[dict]) -> list[str]:
    """Where records kept by ``--merge`` come from (their own run, not this one)."""
    return [
        f"\n{r['model']}: kept from `{k['command']}` at {k['commit'][:8]}, {k['date'][:10]} (1-min load "
        f"{k['load_average_1min']['start']:.1f} at start)."
        for r in records
        if (k := r.get("kept_from"))
    ]


def readme_block(data: dict) -> str:
    """The README's summary, rendered from the results file: per model, seconds per robust evaluation before and
    after and the speed-up, and the real search's wall time."""
    after = list(dict.fromkeys(n for r in data["records"] for n in r["seconds_per_evaluation"] if n != "before"))
    labels = " / ".join(n.removeprefix("after, ") for n in after)
    lines = [
        f"| model | before: s / evaluation | after: s / evaluation ({labels}) | speed-up (same order) | "
        "real search: episodes, wall s |",
        "|---|---|---|---|---|",
    ]
    for r in data["records"]:
        sec, up = r["seconds_per_evaluation"], r["speedup_vs_before"]
        names = [n for n in after if n in sec]
        sr = r.get("search")
        lines.append(
            f"| {r['model']} | {sec['before']:.2f} | {' / '.join(f'{sec[n]:.2f}' for n in names)} | "
            f"{' / '.join(f'{up[n]:.2f}x' for n in names)} | "
            + (f"{sr['episodes']}, {sr['wall_s']:.0f} |" if sr else "- |")
        )
    lines.append(
        f"\n`{data['command']}` at {data['commit'][:8]}, {data['date'][:10]}, {data['cpu']} ({data['cores']} cores, "
        f"1-min load {data['load_average_1min']['start']:.1f} at start); {data['setting']}."
    )
    lines += kept_lines(data["records"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
