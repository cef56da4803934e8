"""Times policy evaluations in whatever hwsearch tree is first on ``sys.path``; prints one JSON line.

Run as a script (``python benchmarks/_eval_timer.py ...``) with ``PYTHONPATH`` naming the tree under test, so the
same file times an older commit too (it uses only API that both have: prepare, Evaluator, search_attacks).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policies", type=int, default=4)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps of the search's attack pair")
    ap.add_argument("--robust-images", type=int, default=200, help="images the pair attacks")
    ap.add_argument("--shards", type=int, default=1, help="one-thread processes that score each policy together")
    args = ap.parse_args()

    import hwsearch
    from hwsearch.evaluate import Evaluator, EvaluatorConfig
    from hwsearch.policy import Policy
    from hwsearch.robust import search_attacks
    from hwsearch.workflow import prepare

    torch.set_num_threads(args.threads)
    ws = prepare(args.checkpoint)
    x, y = ws.split("val")
    x, y = x[: args.images], y[: args.images]
    rng = random.Random(args.seed)
    policies = [ws.uniform(8)] + [
        Policy({n: (rng.randint(2, 8), rng.randint(2, 8)) for n in ws.layer_names}, {}) for _ in range(args.policies)
    ]
    config = EvaluatorConfig(
        attacks=tuple(search_attacks(args.eps, args.steps)), robust_subset=args.robust_images, cache=False
    )
    ev = Evaluator(ws.model, ws.calibration, x, y, config)
    if args.shards > 1:  # the driver's CPU seconds leave the workers' out: CPU is left unmeasured
        from hwsearch.evaluate_shards import ShardedEvaluator

        ev = ShardedEvaluator.from_evaluator(ev, args.shards, threads=args.threads)
    ev.evaluate(policies[0])  # warm-up (allocator, oneDNN primitives)
    rows = []
    for policy in policies:
        before = ev.timings.copy() if hasattr(ev.timings, "copy") else None
        t0, c0 = time.perf_counter(), time.process_time()
        r = ev.evaluate(policy)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        spent = ev.timings.since(before) if before is not None else None
        rows.append(
            {
                "wall_s": wall,
                "cpu_s": cpu if args.shards == 1 else None,
                "clean_s": None if spent is None else spent.quantize + spent.accuracy,
                "attack_s": None if spent is None else spent.attack,
                "accuracy": r.accuracy,
                "robust_accuracy": r.robust_accuracy,
            }
        )
    if args.shards > 1:
        ev.close()
    print(
        json.dumps(
            {
                "tree": str(hwsearch.__file__),
                "threads": args.threads,
                "median_s": statistics.median(r["wall_s"] for r in rows),
                "median_cpu_s": statistics.median(r["cpu_s"] for r in rows) if args.shards == 1 else None,
                "shards": args.shards,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":  # shards start their workers with forkserver
    main()
