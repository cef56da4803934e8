"""How many CPU threads a search or comparison uses: every core this process may run on, or one, whichever
measures faster for the model at hand.

Convolutions of a small model on a few hundred images gain from a second core on an idle machine, and lose
badly when another process holds it (each intra-op step waits for the slowest thread), so the choice is
measured, not assumed: :func:`fastest_threads` times a probe (one clean pass of the model being searched) at
each candidate count. PyTorch's convolutions split work over outputs, not over the summed inputs, so the thread
count changes speed, not results; the search's rewards, and so its cache, are the same either way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["available_cores", "thread_candidates", "fastest_threads", "model_probe", "use_threads"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_candidates(cores: int | None = None) -> tuple[int, ...]:
    """1 and every core (the two ends: a small model rarely gains from a middle count that the ends lack)."""
    n = available_cores() if cores is None else max(1, int(cores))
    return (1,) if n == 1 else (1, n)


def fastest_threads(probe: Callable[[], object], candidates: Sequence[int] | None = None, repeats: int = 2) -> int:
    """The candidate thread count under which ``probe()`` runs fastest (best of ``repeats`` after one warm-up).

    Leaves torch's thread count as it found it; ties go to the fewer threads.
    """
    counts = tuple(candidates) if candidates is not None else thread_candidates()
    if len(counts) == 1:
        return counts[0]
    before = torch.get_num_threads()
    best: tuple[float, int] | None = None
    try:
        for n in counts:
            torch.set_num_threads(n)
            probe()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                probe()
                times.append(time.perf_counter() - t0)
            if best is None or min(times) < best[0]:
                best = (min(times), n)
    finally:
        torch.set_num_threads(before)
    assert best is not None
    return best[1]


def model_probe(model: nn.Module, x: Tensor, y: Tensor, images: int = 256) -> Callable[[], None]:
    """What an evaluation repeats, in miniature: a clean pass over ``images`` images and one input gradient of a
    quarter of them (the attack's step)."""
    xs, ys = x[:images], y[:images]
    xg_src = xs[: max(1, images // 4)]

    def probe() -> None:
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                model(xs)
            xg = xg_src.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xg)
                torch.autograd.grad(nn.functional.cross_entropy(logits, ys[: len(xg)]), xg)
        finally:
            model.train(was)

    return probe


def use_threads(threads: int | None, probe: Callable[[], object]) -> int:
    """Set torch's thread count to ``threads``, or (None) to the fastest of :func:`thread_candidates` for ``probe``;
    returns the count set."""
    n = threads if threads is not None else fastest_threads(probe)
    torch.set_num_threads(n)
    return n
