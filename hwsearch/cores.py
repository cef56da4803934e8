"""How a search or comparison uses the cores this process may run on: torch threads in one process, or (a
search) one single-thread environment per core, whichever measures faster for the model at hand.

Convolutions of a small model on a few hundred images gain from a second core on an idle machine, and lose
badly when another process holds it (each intra-op step waits for the slowest thread), so the choice is
measured, not assumed: :func:`fastest_threads` times a probe (one clean pass of the model being searched) at
each candidate count. PyTorch's convolutions split work over outputs, not over the summed inputs, so the thread
count changes speed, not results; the search's rewards, and so its cache, are the same either way.

A search can instead split each evaluation over one single-thread process per core (:func:`choose_parallelism`,
:mod:`hwsearch.evaluate_shards`): N processes each score 1/N of the images, which beats N threads on all of them
unless the threads scale almost perfectly. It is chosen only when the search is long enough to repay starting
the workers (each imports torch: seconds). Shards, unlike parallel environments (``--n-envs``), keep the search
the one-environment search: the same episodes on any number of cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "available_cores",
    "thread_candidates",
    "probe_seconds",
    "fastest_threads",
    "model_probe",
    "use_threads",
    "Parallelism",
    "choose_parallelism",
]

WORKER_START_S = 20.0  # what starting the worker processes costs, at most (each imports torch and gets the model)
#: processes must promise this much more throughput than threads: each shard quantizes the policy again and
#: attacks smaller batches, and the evaluation waits for its slowest shard
PROCESSES_MARGIN = 1.25
PERFECT_SCALING = 0.95  # N threads this close to N times as fast as 1 leave shards nothing to win: not timed


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_candidates(cores: int | None = None) -> tuple[int, ...]:
    """1 and every core (the two ends: a small model rarely gains from a middle count that the ends lack)."""
    n = available_cores() if cores is None else max(1, int(cores))
    return (1,) if n == 1 else (1, n)


def probe_seconds(probe: Callable[[], object], counts: Sequence[int], repeats: int = 2) -> dict[int, float]:
    """Seconds ``probe()`` takes under each thread count (best of ``repeats`` after one warm-up); leaves torch's
    thread count as it found it."""
    before = torch.get_num_threads()
    seconds: dict[int, float] = {}
    try:
        for n in counts:
            torch.set_num_threads(n)
            probe()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                probe()
                times.append(time.perf_counter() - t0)
            seconds[n] = min(times)
    finally:
        torch.set_num_threads(before)
    return seconds


def fastest_threads(probe: Callable[[], object], candidates: Sequence[int] | None = None, repeats: int = 2) -> int:
    """The candidate thread count under which ``probe()`` runs fastest; ties go to the fewer threads."""
    counts = tuple(candidates) if candidates is not None else thread_candidates()
    if len(counts) == 1:
        return counts[0]
    return _fastest(probe_seconds(probe, counts, repeats))


def _fastest(seconds: dict[int, float]) -> int:
    """The thread count with the fewest seconds; ties go to the fewer threads."""
    return min(seconds, key=lambda n: (seconds[n], n))


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


@dataclass(frozen=True)
class Parallelism:
    """What :func:`choose_parallelism` chose: ``n_envs`` environments of ``threads`` torch threads each, each
    evaluation split over ``shards`` one-thread processes when ``shards > 1``, and why."""

    n_envs: int
    threads: int
    reason: str
    shards: int = 1


def choose_parallelism(
    probe: Callable[[], object],
    evaluation_s: Callable[[int], float],
    episodes: int,
    cores: int | None = None,
    worker_start_s: float = WORKER_START_S,
    sharded_s: Callable[[], float] | None = None,
) -> Parallelism:
    """One shard per core, or one process on the faster thread count, for a search of ``episodes`` episodes.

    ``probe`` (cheap) is timed at 1 thread and at every core (N); ``evaluation_s(threads)`` is what one real
    evaluation costs under that thread count, asked first under the probe's faster count, and under the other
    only when the search is long enough for the choice to matter. The choice then follows the real evaluations,
    not the probe: a miniature, it misjudges how the attack's gradient steps scale either way (resnet20 on 2
    cores: the probe ran 1.73x as fast on 2 threads, its evaluations 1.46-1.51x). N one-thread shards score a
    policy in about 1/N of the time one thread takes, so they are chosen when N threads are less than
    N / ``PROCESSES_MARGIN`` times as fast as one, and the search's evaluations, spread over N workers, save more
    than ``worker_start_s``. Given ``sharded_s`` (one evaluation on N shards, timed after they started), the shards
    are timed too unless N threads scale almost perfectly, and the faster of the two wins: the margin is a guess,
    and how well threads scale moves with the machine's load from one run to the next (``benchmarks.search_speed``
    records what each run chose and why).
    """
    counts = thread_candidates(cores)
    if len(counts) == 1:
        return Parallelism(1, 1, "one core")
    n = counts[-1]
    seconds = probe_seconds(probe, counts)
    threads = _fastest(seconds)
    timed = {threads: evaluation_s(threads)}
    saved = episodes * timed[threads] * (1.0 - 1.0 / n)
    if saved < worker_start_s:
        return Parallelism(
            1, threads, f"{n} workers would save about {saved:.0f} s of evaluation, less than starting them costs"
        )
    other = n if threads == 1 else 1
    timed[other] = evaluation_s(other)
    speedup = timed[1] / max(timed[n], 1e-12)
    if sharded_s is not None and speedup < PERFECT_SCALING * n:
        best = min(timed, key=lambda t: (timed[t], t))
        shard_s = sharded_s()
        took = (
            f"an evaluation took {timed[1]:.2f} s on 1 thread, {timed[n]:.2f} s on {n} threads and {shard_s:.2f} s on "
            f"{n} one-thread shards"
        )
        if shard_s < timed[best]:
            speedup = timed[1] / max(shard_s, 1e-12)
            return Parallelism(
                1, 1, f"{took} ({speedup:.2f}x as fast as 1 thread), so {n} processes score each policy", n
            )
        return Parallelism(1, best, took)
    if speedup * PROCESSES_MARGIN >= n:
        return Parallelism(1, n, f"{n} threads evaluate {speedup:.2f}x as fast as 1")
    return Parallelism(
        1,
        1,
        f"{n} threads evaluate only {speedup:.2f}x as fast as 1, so {n} one-thread processes score each policy, "
        f"1/{n} of the images each",
        shards=n,
    )
