"""Several search environments at once: their episode-end evaluations run concurrently, DDPG is unchanged.

Three backends behind SB3's ``VecEnv`` interface (``step_async`` / ``step_wait``), so the agent neither knows nor
cares where an episode is scored:

- ``serial``: SB3's ``DummyVecEnv`` (one process; the reference the others must match),
- ``subproc``: SB3's ``SubprocVecEnv`` (one process per env on this machine; forkserver/spawn, so env factories
  must be picklable and scripts need ``if __name__ == "__main__":``),
- ``ray``: :class:`RayVecEnv`, one Ray actor per env, each reserving the CPUs/GPUs its evaluation needs, on a
  local Ray instance or an existing cluster (optional dependency: ``pip install 'hwsearch[ray]'``).

The workers share one evaluation cache (a manager dict, or a Ray actor), consulted before a worker evaluates, so
a policy scored by one worker is not scored again by another. The same seed gives the same episodes on every
backend with the same ``n_envs`` (the envs are deterministic functions of the agent's actions).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.managers import SyncManager
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from hwsearch.checks import check_choice, check_int, check_number
from hwsearch.envs import MixedPrecisionEnv
from hwsearch.errors import ConfigError
from hwsearch.evaluate import Evaluator
from hwsearch.records import EvalResult

__all__ = [
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
_RAY_MISSING = (
    "the ray backend needs Ray, which is not installed: pip install 'hwsearch[ray]' (or use --backend subproc)"
)


@dataclass(frozen=True)
class ParallelConfig:
    """How many envs run at once and where.

    ``cpus_per_env`` / ``gpus_per_env`` are what each Ray actor reserves (fractions allowed, e.g. 0.5 GPU lets
    two workers share one card); ``cpus_per_env`` also sets each worker's torch threads (at least 1), so workers
    do not oversubscribe the cores. ``ray_address`` joins an existing cluster (``auto`` or ``host:port``);
    without it a local Ray instance starts with ``n_envs * cpus_per_env`` CPUs. ``compute_device`` moves each
    worker's evaluator there (``cuda`` on a GPU node) after it is built.
    """

    n_envs: int = 1
    backend: str = "subproc"
    cpus_per_env: float = 1.0
    gpus_per_env: float = 0.0
    ray_address: str | None = None
    compute_device: str | None = None
    shared_cache: bool = True

    def __post_init__(self) -> None:
        check_int(self.n_envs, "n_envs", 1)
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


def require_ray() -> Any:
    """Import Ray or say in one line how to get it (it is an optional dependency)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(_RAY_MISSING) from None
    return ray


# ----------------------------------------------------------------------------------------- shared cache
class _DictCache:
    """Cache client over a dict-like store (a multiprocessing manager proxy, or a plain dict in one process)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get(self, key: tuple) -> EvalResult | None:
        return self.store.get(key)

    def put(self, key: tuple, value: EvalResult) -> None:
        self.store[key] = value

    def items(self) -> list[tuple[tuple, EvalResult]]:
        return list(self.store.items())


class _CacheStore:
    """Body of the Ray cache actor: one dict every worker consults before evaluating."""

    def __init__(self, initial: Mapping[tuple, EvalResult]) -> None:
        self.data = dict(initial)

    def get(self, key: tuple) -> EvalResult | None:
        return self.data.get(key)

    def put(self, key: tuple, value: EvalResult) -> None:
        self.data[key] = value

    def items(self) -> list[tuple[tuple, EvalResult]]:
        return list(self.data.items())


class _RayCache:
    """Cache client over the Ray cache actor; ``put`` does not wait (calls from one worker stay ordered)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def get(self, key: tuple) -> EvalResult | None:
        import ray

        return ray.get(self.handle.get.remote(key))

    def put(self, key: tuple, value: EvalResult) -> None:
        self.handle.put.remote(key, value)

    def items(self) -> list[tuple[tuple, EvalResult]]:
        import ray

        return ray.get(self.handle.items.remote())


class SharedCacheEvaluator:
    """Wraps a worker's evaluator: the shared cache first, the worker's own evaluation on a miss.

    Two workers that reach the same unseen policy in the same step both evaluate it (no locking); results are
    deterministic, so whichever lands last in the cache is the same figure.
    """

    def __init__(self, inner: Any, cache: Any) -> None:
        self.inner = inner
        self.cache_client = cache

    def evaluate(self, policy: Any) -> EvalResult:
        key = policy.key()
        hit = self.cache_client.get(key)
        if hit is not None:
            if isinstance(self.inner, Evaluator):
                self.inner.count_hit()
            return hit
        result = self.inner.evaluate(policy)
        self.cache_client.put(key, result)
        return result

    def __getattr__(self, name: str) -> Any:  # the inner evaluator's timings, cache, attacks, ...
        if name in ("inner", "cache_client"):
            raise AttributeError(name)
        return getattr(self.inner, name)


# ----------------------------------------------------------------------------------------- worker side
class WorkerEnv(gym.Wrapper):
    """A worker's env, plus :meth:`worker_stats` so the driver can collect what the worker evaluated."""

    def worker_stats(self) -> dict[str, Any]:
        ev = self.env.unwrapped.evaluator  # type: ignore[attr-defined]
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


def _ignore_sigint() -> None:
    """Ctrl-C reaches every process of the terminal's group; only the driver acts on it (a clean stop with a
    checkpoint), so worker and manager processes must survive it until the driver closes them."""
    with contextlib.suppress(ValueError):  # ValueError: not the process's main thread, nothing to protect
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerFactory:
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
            _ignore_sigint()
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


# ----------------------------------------------------------------------------------------- Ray
class _EnvActor:
    """Body of a Ray env actor; auto-resets at episode end as SB3's vec envs do, saving a round trip."""

    def __init__(self, factory: Callable[[], gym.Env]) -> None:
        self.env = factory()

    def spaces(self) -> tuple[gym.Space, gym.Space, dict]:
        return self.env.observation_space, self.env.action_space, dict(self.env.metadata)

    def reset(self, seed: int | None, options: dict[str, Any]) -> tuple[np.ndarray, dict]:
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict, dict | None]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        info["TimeLimit.truncated"] = bool(truncated and not terminated)
        reset_info = None
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, float(reward), done, info, reset_info

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)


class RayVecEnv(VecEnv):
    """SB3 ``VecEnv`` over Ray actors, one env per actor, each reserving ``cpus_per_env`` / ``gpus_per_env``.

    ``step_async`` sends every actor its action, ``step_wait`` gathers them: the episode-end evaluations (the
    only heavy steps) run at the same time on whichever nodes hold the actors.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        cpus_per_env: float = 1.0,
        gpus_per_env: float = 0.0,
        address: str | None = None,
        cache: Mapping[tuple, EvalResult] | None = None,
        threads: int = 1,
        compute_device: str | None = None,
    ) -> None:
        ray = require_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if address is not None:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=max(1, math.ceil(len(env_fns) * cpus_per_env)),
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
        try:
            self._start(ray, env_fns, cpus_per_env, gpus_per_env, cache, threads, compute_device)
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self._pending: list[Any] | None = None
        self.closed = False

    def _start(
        self,
        ray: Any,
        env_fns: Sequence[Callable[[], gym.Env]],
        cpus_per_env: float,
        gpus_per_env: float,
        cache: Mapping[tuple, EvalResult] | None,
        threads: int,
        compute_device: str | None,
    ) -> None:
        have = ray.cluster_resources()
        for what, need in (("CPU", cpus_per_env), ("GPU", gpus_per_env)):
            if need > have.get(what, 0.0):  # an actor that no node can hold would wait forever, silently
                raise ConfigError(
                    f"each worker asks for {need:g} {what}(s) but the Ray cluster has {have.get(what, 0.0):g} in all; "
                    f"lower --{what.lower()}s-per-env or add nodes"
                )
        self._cache_actor = None
        client = None
        if cache is not None:
            self._cache_actor = ray.remote(_CacheStore).options(num_cpus=0).remote(dict(cache))
            client = _RayCache(self._cache_actor)
        actor_cls = ray.remote(_EnvActor).options(num_cpus=cpus_per_env, num_gpus=gpus_per_env)
        self.actors = [actor_cls.remote(_WorkerFactory(fn, threads, compute_device, client)) for fn in env_fns]
        obs_space, act_space, metadata = ray.get(self.actors[0].spaces.remote())
        VecEnv.__init__(self, len(env_fns), obs_space, act_space)
        self.metadata = metadata

    def cache_items(self) -> list[tuple[tuple, EvalResult]]:
        return [] if self._cache_actor is None else _RayCache(self._cache_actor).items()

    def reset(self) -> VecEnvObs:
        futures = [a.reset.remote(self._seeds[i], self._options[i]) for i, a in enumerate(self.actors)]
        results = self._ray.get(futures)
        for i, (_, info) in enumerate(results):
            self.reset_infos[i] = info
        self._reset_seeds()
        self._reset_options()
        return np.stack([obs for obs, _ in results])

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = [a.step.remote(actions[i]) for i, a in enumerate(self.actors)]

    def step_wait(self) -> VecEnvStepReturn:
        assert self._pending is not None, "step_wait() without step_async()"
        results = self._ray.get(self._pending)
        self._pending = None
        obs, rewards, dones, infos = [], [], [], []
        for i, (o, r, d, info, reset_info) in enumerate(results):
            obs.append(o)
            rewards.append(r)
            dones.append(d)
            infos.append(info)
            if reset_info is not None:
                self.reset_infos[i] = reset_info
        return np.stack(obs), np.asarray(rewards, dtype=np.float32), np.asarray(dones, dtype=bool), infos

    def close(self) -> None:
        if self.closed:
            return
        for a in self.actors:
            self._ray.kill(a)
        if self._cache_actor is not None:
            self._ray.kill(self._cache_actor)
        if self._owns_ray:
            self._ray.shutdown()
        self.closed = True

    def _targets(self, indices: VecEnvIndices) -> list[Any]:
        return [self.actors[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._ray.get([a.get_attr.remote(attr_name) for a in self._targets(indices)])

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._ray.get([a.set_attr.remote(attr_name, value) for a in self._targets(indices)])

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any):  # type: ignore[no-untyped-def]
        return self._ray.get([a.call.remote(method_name, method_args, method_kwargs) for a in self._targets(indices)])

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._ray.get([a.is_wrapped.remote(wrapper_class) for a in self._targets(indices)])


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
        store = cache
        client = None if store is None else _DictCache(store)
        vec = _SharedDummyVecEnv(
            [_WorkerFactory(fn, config.threads, device, client, own_process=False) for fn in env_fns]
        )
        vec.cache_store = store
        return vec
    start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    manager = store = client = None
    if cache is not None:
        manager = SyncManager(ctx=mp.get_context(start_method))
        manager.start(_ignore_sigint)
        store = manager.dict(cache)
        client = _DictCache(store)
    try:
        vec = _SharedSubprocVecEnv(
            [_WorkerFactory(fn, threads, device, client) for fn in env_fns], start_method=start_method
        )
    except BaseException:
        if manager is not None:
            manager.shutdown()
        raise
    vec.manager, vec.cache_store = manager, store
    return vec


def parallel_env(env: MixedPrecisionEnv, config: ParallelConfig) -> MixedPrecisionEnv | VecEnv:
    """``env`` itself for one local env (the unchanged path: a subprocess for one env gains nothing); otherwise a
    ``VecEnv`` of ``n_envs`` copies of it, whose shared cache starts from ``env``'s evaluator cache. One Ray env
    is kept: it runs the evaluation where the cluster has the resources (a GPU node)."""
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
