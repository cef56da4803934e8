"""What the gradient-free attack costs and finds: ``hwsearch compare`` with and without Square, same command.

Runs ``hwsearch compare --checkpoint CKPT --eps EPS`` (FP32, fixed W8A8 and W4A4, plus any ``--policy``) twice
in this process: once with the report's attack set as shipped (gradient attacks + Square at
``SQUARE_QUERIES`` queries) and once with Square left out, and records the wall time of each and, per policy,
Square's robust accuracy against the lowest gradient attack's (the masking check the report prints).

    python -m benchmarks.square_cost [--checkpoint CKPT] [--policy NAME=policy.json] [--eps 0.1]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import default_checkpoint, provenance, write_results
from hwsearch import robust
from hwsearch.cli import main as cli
from hwsearch.robust import MASKING_MARGIN, SQUARE_QUERIES, is_gradient_free

__all__ = ["main"]


def _compare(argv: list[str], queries: int) -> tuple[float, float, list[dict[str, Any]]]:
    original = robust.report_attacks
    robust.report_attacks = functools.partial(original, queries=queries)  # what `compare` looks up at call time
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            assert cli([*argv, "--out", tmp, "--quiet"]) == 0
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows = json.loads((Path(tmp) / "report.json").read_text())["rows"]
    finally:
        robust.report_attacks = original
    return wall, cpu, rows


def render(data: dict[str, Any]) -> str:
    eps = data["eps"]
    t, c = data["timing_s"], data["cpu_s"]
    lines = [
        f"# Gradient-free Square in `compare`: cost and findings (eps {eps}, {data['images']} test images)",
        "",
        f"`{data['compare']}`: {t['without_square']:.1f} s without Square, {t['with_square']:.1f} s with Square "
        f"({data['queries']} queries per image): {t['with_square'] / t['without_square']:.2f}x wall; process CPU time "
        f"{c['without_square']:.1f} s vs {c['with_square']:.1f} s: {c['with_square'] / c['without_square']:.2f}x.",
        "",
        "| policy | clean % | worst case % | lowest gradient attack % | Square % | gap (points) | masking warning |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['name']} | {100 * r['clean']:.1f} | {100 * r['worst']:.1f} | {100 * r['lowest_gradient']:.1f} "
            f"({r['lowest_gradient_attack']}) | {100 * r['square']:.1f} | {100 * r['gap']:+.1f} | "
            f"{'yes' if r['warning'] else 'no'} |"
        )
    lines += [
        "",
        f"gap = lowest gradient attack minus Square; the report warns of possible gradient masking when it exceeds "
        f"{100 * data['margin']:g} points. Each figure is on {data['images']} images (standard error about "
        f"{100 * (0.25 / data['images']) ** 0.5:.1f} points at 50%); the two timings come from one process on a "
        "shared machine (the CPU-time ratio is the steadier one).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--policy", action="append", default=[], help="NAME=policy.json, as for compare")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--robust-images", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    meta = provenance()
    ckpt = default_checkpoint(args.checkpoint)
    argv = ["compare", "--checkpoint", str(ckpt), "--eps", str(args.eps), "--robust-images", str(args.robust_images)]
    for p in args.policy:
        argv += ["--policy", p]
    wall_without, cpu_without, _ = _compare(argv, 0)
    wall_with, cpu_with, rows = _compare(argv, SQUARE_QUERIES)
    key = f"robust@{args.eps:g}:"
    out_rows = []
    for r in rows:
        figs = {k[len(key) :]: v for k, v in r.items() if k.startswith(key)}
        grad = {k: v for k, v in figs.items() if k not in ("worst", "masking_gap", "masking_warning")}
        grad = {k: v for k, v in grad.items() if not is_gradient_free(k)}
        square = next(v for k, v in figs.items() if is_gradient_free(k))
        low = min(grad, key=grad.__getitem__)
        out_rows.append(
            {
                "name": r["name"],
                "clean": r["accuracy"],
                "worst": figs["worst"],
                "per_attack": {k: v for k, v in figs.items() if k not in ("worst", "masking_gap", "masking_warning")},
                "lowest_gradient_attack": low,
                "lowest_gradient": grad[low],
                "square": square,
                "gap": figs["masking_gap"],
                "warning": figs["masking_warning"],
            }
        )
    payload = {
        "meta": meta,
        "compare": "hwsearch " + " ".join(argv).replace(str(ckpt), Path(ckpt).name),
        "checkpoint": str(ckpt),
        "eps": args.eps,
        "images": args.robust_images,
        "queries": SQUARE_QUERIES,
        "margin": MASKING_MARGIN,
        "timing_s": {"without_square": wall_without, "with_square": wall_with},
        "cpu_s": {"without_square": cpu_without, "with_square": cpu_with},
        "rows": out_rows,
    }
    write_results("square_cost", payload, render)


if __name__ == "__main__":
    main()
