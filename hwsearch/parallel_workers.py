"""The worker side of the parallel backends: how a worker builds its env (threads, device, shared cache) and
reports what it evaluated back to the driver."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import cloudpickle
import gymnasium as gym
import torch

from hwsearch.envs import MixedPrecisionEnv
from hwsearch.evaluate import Evaluator
from hwsearch.parallel_cache import SharedCacheEvaluator

__all__ = ["WorkerEnv", "WorkerFactory", "clone_env_fns", "ignore_sigint"]


class WorkerEnv(gym.Wrapper):
    """A worker's env, plus :meth:`worker_stats` so the driver can collect what the worker evaluated."""

    def worker_stats(self) -> dict[str, Any]:
        ev = getattr(self.env.unwrapped, "evaluator", None)  # a MixedPrecisionEnv's (gym.Env does not declare it)
        inner = ev.inner if isinstance(ev, SharedCacheEvaluator) else ev
        if not isinstance(inner, Evaluator):  # an injected evaluator (a test's fake) keeps no stats
            return {"timings": {}, "cache": {}}
        return {"timings": asdict(inner.timings), "cache": inner.cached()}


class _ClonedEnv:
    """Picklable factory: a frozen copy of a built env; every call unpickles a fresh, independent env."""

    def __init__(self, env: gym.Env) -> None:
        self.payload = cloudpickle.dumps(env)

    def __call__(self) -> gym.Env:
        env = cloudpickle.loads(self.payload)
        evaluator = getattr(env.unwrapped, "evaluator", None)
        if isinstance(evaluator, Evaluator):  # the driver already counted its own work; a worker reports only its
            evaluator.reset_timings()
        return env


def ignore_sigint() -> None:
    """Ctrl-C reaches every process of the terminal's group; only the driver acts on it (a clean stop with a
    checkpoint), so worker and manager processes must survive it until the driver closes them."""
    with contextlib.suppress(ValueError):  # ValueError: not the process's main thread, nothing to protect
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerFactory:
    """Builds one worker's env in the worker: thread count, compute device, shared cache."""

    def __init__(
        self, fn: Callable[[], gym.Env], threads: int, device: str | None, cache: Any, *, own_process: bool = True
    ) -> None:
        self.fn = fn
        self.threads = threads
        self.device = device
        self.cache = cache
        self.own_process = own_process

    def __call__(self) -> gym.Env:
        if self.own_process:
            ignore_sigint()
            torch.set_num_threads(self.threads)
        env = self.fn()
        base = env.unwrapped
        if hasattr(base, "evaluator"):
            if self.device is not None and isinstance(base.evaluator, Evaluator):
                base.evaluator.to(self.device)
            if self.cache is not None:
                base.evaluator = SharedCacheEvaluator(base.evaluator, self.cache)
        return WorkerEnv(env)


def clone_env_fns(env: MixedPrecisionEnv, n: int) -> list[Callable[[], gym.Env]]:
    """``n`` factories for copies of ``env`` (layers, evaluator with its cache, cost model, config)."""
    factory = _ClonedEnv(env)
    return [factory] * n
