"""The random-search agent: uniform actions through the same env, budget walk and log as DDPG (the baseline
that says whether learning helps). See docs/ARCHITECTURE.md, "The search agent"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from hwsearch.envs import MixedPrecisionEnv

__all__ = ["random_search"]


def random_search(
    env: MixedPrecisionEnv | VecEnv,
    seed: int,
    episodes: int,
    rng: np.random.Generator,
    steps: int,
    n_envs: int,
    done_before: int,
    record: Callable[[dict[str, Any]], None],
    episode_stored: Callable[[bool], None],
    stop_requested: Callable[[], bool],
    *,
    recorded: Callable[[], int],
    init_actions: np.ndarray | None = None,
) -> None:
    """Uniform actions. A round of ``n_envs`` episodes draws ``(n_envs, steps)`` actions in one call: the same
    numbers, in the same episode order, as ``n_envs`` episodes drawn one after another with one env."""
    if isinstance(env, VecEnv):
        env.seed(seed + done_before)
        env.reset()
    else:
        env.reset(seed=seed + done_before)
    while not stop_requested() and recorded() < episodes:
        actions = rng.uniform(-1.0, 1.0, size=(n_envs, steps, 1)).astype(np.float32)
        for i in range(n_envs):  # a warm start replaces the first draws (the stream after it is unchanged)
            if init_actions is not None and recorded() + i < len(init_actions):
                actions[i, :, 0] = init_actions[recorded() + i]
        if isinstance(env, VecEnv):
            for t in range(steps):
                _, _, dones, infos = env.step(actions[:, t])
            assert bool(np.all(dones)), "the envs of a VecEnv must share one episode length"
        else:
            env.reset()
            for t in range(steps):
                _, _, terminated, _, info = env.step(actions[0, t])
            assert terminated
            infos = [info]
        for info in infos:
            record(info)
        episode_stored(True)
