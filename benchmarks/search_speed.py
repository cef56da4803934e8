"""Where a default search spends its time: wall time, and total / evaluation time with and without the cache.

Target: total search time <= 1.25 x the time spent evaluating policies (the agent's own share stays small),
and the default demo search under 10 minutes on 2 cores.

    python benchmarks/search_speed.py [--checkpoint CKPT] [--episodes 300]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import default_checkpoint
from hwsearch.budget import parse_budget
from hwsearch.evaluate import EvaluatorConfig
from hwsearch.hardware import get_cost_model
from hwsearch.search import SearchConfig, run_search
from hwsearch.workflow import build_env, prepare


def one_run(ws, episodes: int, cache: bool) -> dict[str, float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    env, ev = build_env(
        ws,
        get_cost_model("bitfusion-edge"),
        parse_budget("latency=0.5x"),
        evaluator_config=EvaluatorConfig(cache=cache),
    )
    result = run_search(env, SearchConfig(episodes=episodes, seed=0))
    total = time.perf_counter() - t0
    t = ev.timings
    evaluation = t.quantize + t.accuracy + t.attack
    return {
        "total_s": total,
        "eval_s": evaluation,
        "ratio": total / evaluation,
        "hits": t.hits,
        "calls": t.calls,
        "best_reward": result.best.reward,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--episodes", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ws = prepare(default_checkpoint(args.checkpoint))
    rows = {name: one_run(ws, args.episodes, cache) for name, cache in (("with cache", True), ("without cache", False))}
    print(f"default search: {args.episodes} episodes, smallcnn on mnist5k, bitfusion-edge, latency=0.5x, 1 thread\n")
    print("| run | wall s | evaluation s | total / evaluation | cache hits / evaluations | best reward |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['total_s']:.1f} | {r['eval_s']:.1f} | {r['ratio']:.3f} | {r['hits']:.0f} / {r['calls']:.0f} "
            f"| {r['best_reward']:.4f} |"
        )
    w, wo = rows["with cache"], rows["without cache"]
    print(f"\ncache speed-up of the whole search: {wo['total_s'] / w['total_s']:.2f}x (same run, same seed)")


if __name__ == "__main__":
    main()
