"""The Ray backend: :class:`RayVecEnv`, one Ray actor per env, each reserving the CPUs/GPUs its evaluation needs,
on a local Ray instance or an existing cluster (optional dependency: ``pip install 'hwsearch[ray]'``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from hwsearch.errors import ConfigError
from hwsearch.parallel_cache import CacheStore, RayCache
from hwsearch.parallel_workers import WorkerFactory
from hwsearch.records import EvalResult

__all__ = ["RayVecEnv", "require_ray"]

_RAY_MISSING = (
    "the ray backend needs Ray, which is not installed: pip install 'hwsearch[ray]' (or use --backend subproc)"
)


def require_ray() -> Any:
    """Import Ray or say in one line how to get it (it is an optional dependency)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(_RAY_MISSING) from None
    return ray


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
            self._cache_actor = ray.remote(CacheStore).options(num_cpus=0).remote(dict(cache))
            client = RayCache(self._cache_actor)
        actor_cls = ray.remote(_EnvActor).options(num_cpus=cpus_per_env, num_gpus=gpus_per_env)
        self.actors = [actor_cls.remote(WorkerFactory(fn, threads, compute_device, client)) for fn in env_fns]
        obs_space, act_space, metadata = ray.get(self.actors[0].spaces.remote())
        VecEnv.__init__(self, len(env_fns), obs_space, act_space)
        self.metadata = metadata

    def cache_items(self) -> list[tuple[tuple, EvalResult]]:
        return [] if self._cache_actor is None else RayCache(self._cache_actor).items()

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

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return self._ray.get([a.call.remote(method_name, method_args, method_kwargs) for a in self._targets(indices)])

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._ray.get([a.is_wrapped.remote(wrapper_class) for a in self._targets(indices)])
