"""A short search with evaluation (accuracy and PGD attacks) on CUDA vs CPU: time per episode, and agreement.

Run: ``python benchmarks/gpu_episode.py [--checkpoint CKPT] [--episodes 10] [--steps 10]``; without a checkpoint
it trains the embedded default for 2 epochs first. Exits 0 with a message where no CUDA device is present.

Both runs use the random agent with the same seed, so they score the same policies; the figures may still
differ slightly: cuDNN picks non-deterministic kernels, and float sums in another order can move an activation
or an adversarial input across a quantization bin edge, which flips a prediction now and then. Attack random
starts are drawn on the CPU generator in both runs, so they are the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from hwsearch.budget import parse_budget
from hwsearch.evaluate import EvaluatorConfig
from hwsearch.hardware import get_cost_model
from hwsearch.robust import AttackConfig
from hwsearch.search import SearchConfig, run_search
from hwsearch.workflow import build_env, prepare

__all__ = ["main"]


def _search(ckpt: str, device: str, args: argparse.Namespace) -> tuple[list[float], list]:
    ws = prepare(ckpt, device=device)
    attacks = tuple(AttackConfig(method="pgd", eps=0.1, steps=args.steps, grad=g) for g in ("ste", "shadow"))
    env, _ = build_env(
        ws,
        get_cost_model("bitfusion-edge"),
        parse_budget("latency=0.5x"),
        evaluator_config=EvaluatorConfig(attacks=attacks, robust_subset=args.robust_subset),
    )
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(_rec: object) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = SearchConfig(agent="random", episodes=args.episodes, warmup_episodes=0, seed=0)
    res = run_search(env, cfg, on_episode=tick)
    return times, [(e.accuracy, e.robust_accuracy) for e in res.episodes]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--robust-subset", type=int, default=200)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_episode: no CUDA device here (torch.cuda.is_available() is False); nothing to compare")
        return 0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from hwsearch.pipelines import BaselineConfig, train_baseline

            ckpt = str(train_baseline(BaselineConfig(epochs=2), Path(tmp) / "fp32.pt").path)
        print(
            f"# {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {args.episodes} episodes, PGD-{args.steps}"
        )
        results = {}
        for device in ("cpu", "cuda"):
            times, figures = _search(ckpt, device, args)
            results[device] = figures
            per = " ".join(f"{t:.2f}" for t in times)
            mean = sum(times[1:]) / max(len(times) - 1, 1)  # the first includes CUDA start-up on the GPU
            print(f"{device:<5} episode s: {per}")
            print(f"{device:<5} mean after the first: {mean:.3f} s/episode")
        same = sum(a == b for a, b in zip(results["cpu"], results["cuda"], strict=True))
        diff = max(
            max(abs(a[0] - b[0]), abs((a[1] or 0) - (b[1] or 0)))
            for a, b in zip(results["cpu"], results["cuda"], strict=True)
        )
        print(
            f"identical accuracy and robust accuracy in {same}/{args.episodes} episodes; largest difference {diff:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
