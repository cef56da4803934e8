"""Several search environments at once: their episode-end evaluations run concurrently, DDPG is unchanged.

Three backends behind SB3's ``VecEnv`` interface (``step_async`` / ``step_wait``), so the agent neither knows nor
cares where an episode is scored:

- ``serial``: SB3's ``DummyVecEnv`` (one process; the reference the others must match),
- ``subproc``: SB3's ``SubprocVecEnv`` (one process per env on this machine; forkserver/spawn, so env factories
  must be picklable and scripts need ``if __name__ == "__main__":``),
- ``ray``: :class:`~hwsearch.parallel_ray.RayVecEnv`, one Ray actor per env, each reserving the CPUs/GPUs its evaluation needs, on a
  local Ray instance or an existing cluster (optional dependency: ``pip install 'hwsearch[ray]'``).

The workers share one evaluation cache (a manager dict, or a Ray actor), consulted before a worker evaluates, so
a policy scored by one worker is not scored again by another. The same seed gives the same episodes on every
backend with the same ``n_envs`` (the envs are deterministic functions of the agent's actions).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.managers import SyncManager
from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from hwsearch.checks import check_choice, check_int, check_number
from hwsearch.envs import MixedPrecisionEnv
from hwsearch.errors import ConfigError
from hwsearch.evaluate import Evaluator
from hwsearch.parallel_cache import DictCache, SharedCacheEvaluator
from hwsearch.parallel_ray import RayVecEnv, require_ray
from hwsearch.parallel_workers import WorkerEnv, WorkerFactory, clone_env_fns, ignore_sigint
from hwsearch.records import EvalResult

__all__ = [  # the backends' own modules: parallel_cache, parallel_workers, parallel_ray
    "BACKENDS",
    "ParallelConfig",
    "SharedCacheEvaluator",
    "WorkerEnv",
    "RayVecEnv",
    "require_ray",
    "clone_env_fns",
    "make_vec_env",
    "parallel_env",
    "merge_worker_stats",
]

BACKENDS = ("serial", "subproc", "ray")


@dataclass(frozen=True)
class ParallelConfig:
    """How many envs run at once and where.

    ``cpus_per_env`` / ``gpus_per_env`` are what each Ray actor reserves (fractions allowed, e.g. 0.5 GPU lets
    two workers share one card); ``cpus_per_env`` also sets each worker's torch threads (at least 1), so workers
    do not oversubscribe the cores. ``ray_address`` joins an existing cluster (``auto`` or ``host:port``);
    without it a local Ray instance starts with ``n_envs * cpus_per_env`` CPUs. ``compute_device`` moves each
    worker's evaluator there (``cuda`` on a GPU node) after it is built. ``n_envs=None`` leaves the count to the
    search job, which measures whether one-thread processes beat threads (:func:`hwsearch.cores.choose_parallelism`).
    ``shards > 1`` keeps one env and scores each of its policies on that many one-thread processes, each on its share
    of the images (:class:`~hwsearch.evaluate_shards.ShardedEvaluator`); local only, and not with several envs.
    """

    n_envs: int | None = 1
    backend: str = "subproc"
    cpus_per_env: float = 1.0
    gpus_per_env: float = 0.0
    ray_address: str | None = None
    compute_device: str | None = None
    shared_cache: bool = True
    shards: int = 1

    def __post_init__(self) -> None:
        if self.n_envs is not None:
            check_int(self.n_envs, "n_envs", 1)
        check_int(self.shards, "shards", 1)
        if self.shards > 1 and (self.n_envs or 1) > 1:
            raise ConfigError(
                f"--shards {self.shards} splits one env's evaluations; it cannot go with --n-envs {self.n_envs}: pick one"
            )
        if self.shards > 1 and self.backend == "ray":
            raise ConfigError(f"--shards {self.shards} runs local processes; with --backend ray use --n-envs instead")
        check_choice(self.backend, "backend", BACKENDS)
        check_number(self.cpus_per_env, "cpus_per_env", positive=True)
        check_number(self.gpus_per_env, "gpus_per_env", 0)
        if self.ray_address is not None and self.backend != "ray":
            raise ConfigError(f"ray_address {self.ray_address!r} needs backend 'ray' (got {self.backend!r})")
        if self.gpus_per_env > 0 and self.backend != "ray":
            raise ConfigError(f"gpus_per_env = {self.gpus_per_env} is a Ray reservation; use backend 'ray'")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_env))


# ----------------------------------------------------------------------------------------- local backends
class _LocalCacheItems:
    """``cache_items`` of a local VecEnv whose shared cache is a mapping (a dict or a manager's dict proxy)."""

    cache_store: Any = None

    def cache_items(self) -> list[tuple[tuple, EvalResult]]:
        return [] if self.cache_store is None else list(self.cache_store.items())


class _SharedSubprocVecEnv(_LocalCacheItems, SubprocVecEnv):
    """SB3's ``SubprocVecEnv`` that also owns the manager process holding the shared cache."""

    manager: Any = None

    def close(self) -> None:
        was_closed = self.closed
        super().close()
        if not was_closed and self.manager is not None:
            self.manager.shutdown()


class _SharedDummyVecEnv(_LocalCacheItems, DummyVecEnv):
    """SB3's ``DummyVecEnv`` whose envs share one in-process cache."""


def make_vec_env(
    env_fns: Sequence[Callable[[], gym.Env]],
    config: ParallelConfig,
    *,
    initial_cache: Mapping[tuple, EvalResult] | None = None,
) -> VecEnv:
    """A ``VecEnv`` of ``len(env_fns)`` envs on ``config.backend``; factories must be picklable (not lambdas
    for ``subproc``: use top-level functions, ``functools.partial`` or :func:`clone_env_fns`).

    Close it when done (workers, manager, Ray actors and a Ray instance it started all go with it).
    """
    if not env_fns:
        raise ConfigError("make_vec_env needs at least one env factory")
    cache = dict(initial_cache or {}) if config.shared_cache else None
    threads, device = config.threads, config.compute_device
    if config.backend == "ray":
        return RayVecEnv(
            env_fns,
            cpus_per_env=config.cpus_per_env,
            gpus_per_env=config.gpus_per_env,
            address=config.ray_address,
            cache=cache,
            threads=threads,
            compute_device=device,
        )
    if config.backend == "serial":
        local = None if cache is None else DictCache(cache)
        vec = _SharedDummyVecEnv(
            [WorkerFactory(fn, config.threads, device, local, own_process=False) for fn in env_fns]
        )
        vec.cache_store = cache
        return vec
    start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    manager: SyncManager | None = None
    store: Any = None
    client: DictCache | None = None
    if cache is not None:
        manager = SyncManager(ctx=mp.get_context(start_method))
        manager.start(ignore_sigint)
        store = manager.dict(cache)
        client = DictCache(store)
    try:
        procs = _SharedSubprocVecEnv(
            [WorkerFactory(fn, threads, device, client) for fn in env_fns], start_method=start_method
        )
    except BaseException:
        if manager is not None:
            manager.shutdown()
        raise
    procs.manager, procs.cache_store = manager, store
    return procs


def parallel_env(env: MixedPrecisionEnv, config: ParallelConfig) -> MixedPrecisionEnv | VecEnv:
    """``env`` itself for one local env (the unchanged path: a subprocess for one env gains nothing); otherwise a
    ``VecEnv`` of ``n_envs`` copies of it, whose shared cache starts from ``env``'s evaluator cache. One Ray env
    is kept: it runs the evaluation where the cluster has the resources (a GPU node)."""
    if config.n_envs is None:
        raise ConfigError("n_envs = None (auto) must be resolved by the search job before its envs are made")
    if config.n_envs == 1 and config.backend != "ray":
        return env
    initial = env.evaluator.cached() if isinstance(env.evaluator, Evaluator) else None
    return make_vec_env(clone_env_fns(env, config.n_envs), config, initial_cache=initial)


def merge_worker_stats(vec: VecEnv, evaluator: Evaluator) -> None:
    """Fold what the workers evaluated into the driver's ``evaluator``: cache entries and timings.

    Timings are summed over workers, so with concurrent workers the evaluation seconds exceed the wall time.
    Call before ``vec.close()``.
    """
    for stats in vec.env_method("worker_stats"):
        evaluator.prime_cache(stats["cache"])
        evaluator.timings.add(stats["timings"])
    if hasattr(vec, "cache_items"):
        evaluator.prime_cache(vec.cache_items())
