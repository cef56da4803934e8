"""Episodes per minute with 1 and 2 workers: serial, SubprocVecEnv and local Ray, as ratios to one serial env.

Run: ``python benchmarks/scale.py [--checkpoint CKPT] [--episodes 16] [--attack pgd|none]``. Without
``--checkpoint`` it trains the embedded default (``hwsearch train --epochs 2``) into a temporary folder first.
Every configuration searches the same episodes (random agent, same seed) with a fresh evaluator, so no
configuration profits from another's cache; worker start-up is timed apart from the episodes. With robustness
in the reward (the default, PGD-10 on 200 images, STE and shadow gradients) the episode-end evaluation
dominates, which is what parallel workers speed up. Measure ratios within one run: other jobs share the cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from hwsearch.budget import parse_budget
from hwsearch.evaluate import EvaluatorConfig
from hwsearch.hardware import get_cost_model
from hwsearch.parallel import ParallelConfig, clone_env_fns, make_vec_env
from hwsearch.search import SearchConfig, run_search
from hwsearch.workflow import Workspace, build_env, prepare

__all__ = ["main"]

CASES = [("serial", 1), ("serial", 2), ("subproc", 1), ("subproc", 2), ("ray", 1), ("ray", 2)]


def _attacks(kind: str, steps: int) -> tuple:
    if kind == "none":
        return ()
    from hwsearch.robust import AttackConfig

    return tuple(AttackConfig(method=kind, eps=0.1, steps=steps, grad=g) for g in ("ste", "shadow"))


def _one(ws: Workspace, backend: str, n: int, args: argparse.Namespace) -> tuple[float, float, list]:
    ev_cfg = EvaluatorConfig(attacks=_attacks(args.attack, args.steps), seed=0)
    env, _ = build_env(ws, get_cost_model("bitfusion-edge"), parse_budget("latency=0.5x"), evaluator_config=ev_cfg)
    t0 = time.perf_counter()
    if backend == "serial" and n == 1:
        vec = env  # the plain path: no VecEnv at all
    else:  # one worker too (parallel_env would keep a lone local env in-process): its overhead is a figure
        par = ParallelConfig(n_envs=n, backend=backend, cpus_per_env=1)
        vec = make_vec_env(clone_env_fns(env, n), par, initial_cache=env.evaluator.cache)
    startup = time.perf_counter() - t0
    try:
        cfg = SearchConfig(agent="random", episodes=args.episodes, warmup_episodes=0, seed=0)
        result = run_search(vec, cfg)
    finally:
        if vec is not env:
            vec.close()
    return startup, result.wall_s, [e.policy.key() for e in result.episodes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="FP32 checkpoint (default: train the embedded default)")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--attack", default="pgd", choices=["pgd", "fgsm", "none"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--backends", default="serial,subproc,ray")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from hwsearch.pipelines import BaselineConfig, train_baseline

            ckpt = str(train_baseline(BaselineConfig(epochs=2), Path(tmp) / "fp32.pt").path)
        ws = prepare(ckpt)
        wanted = set(args.backends.split(","))
        print(
            f"# {os.cpu_count()} CPUs; {args.episodes} episodes per case; attack {args.attack}; torch {torch.__version__}"
        )
        print("backend   workers   start-up s   search s   episodes/min   vs 1 serial   vs 1 same backend")
        rate: dict[tuple[str, int], float] = {}
        reference = None
        for backend, n in CASES:
            if backend not in wanted:
                continue
            if backend == "ray":
                try:
                    import ray  # noqa: F401
                except ImportError:
                    print("ray       -         (not installed: pip install 'hwsearch[ray]')")
                    continue
            startup, wall, keys = _one(ws, backend, n, args)
            reference = keys if reference is None else reference
            same = "same episodes" if keys == reference else "DIFFERENT episodes"
            rate[backend, n] = 60 * args.episodes / wall
            base = rate.get(("serial", 1))
            own = rate.get((backend, 1), rate[backend, n])
            vs_serial = f"{rate[backend, n] / base:10.2f}x" if base else f"{'-':>11}"
            print(
                f"{backend:<9} {n:>7}   {startup:10.2f}   {wall:8.2f}   {rate[backend, n]:12.1f}   "
                f"{vs_serial}   {rate[backend, n] / own:16.2f}x   ({same})",
                flush=True,
            )


if __name__ == "__main__":
    main()
