"""The policy search: stable-baselines3 DDPG with HAQ's settings, or random search, over the env."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from hwsearch.envs import MixedPrecisionEnv
from hwsearch.errors import ConfigError
from hwsearch.policy import Policy

__all__ = [
    "AGENTS",
    "SearchConfig",
    "EpisodeRecord",
    "SearchResult",
    "TruncatedNormalNoise",
    "HaqDDPG",
    "run_search",
]

AGENTS = ("ddpg", "random")


@dataclass(frozen=True)
class SearchConfig:
    """DDPG settings that worked for HAQ (DESIGN.md section 5).

    ``noise_sigma`` is in the env's action units ([-1, 1]); HAQ's 0.5 on its [0, 1] actions is 1.0 here.
    The replay buffer holds ``replay_episodes`` episodes.
    """

    episodes: int = 300
    warmup_episodes: int = 20
    agent: str = "ddpg"
    seed: int = 0
    hidden: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch_size: int = 64
    tau: float = 0.01
    gamma: float = 1.0
    noise_sigma: float = 1.0
    noise_decay: float = 0.99
    replay_episodes: int = 128
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ConfigError(f"agent {self.agent!r} is unknown; use one of {', '.join(AGENTS)}")
        for what in ("episodes", "batch_size", "replay_episodes"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} = {v!r} must be an integer >= 1")
        if (
            isinstance(self.warmup_episodes, bool)
            or not isinstance(self.warmup_episodes, int)
            or self.warmup_episodes < 0
        ):
            raise ConfigError(f"warmup_episodes = {self.warmup_episodes!r} must be an integer >= 0")
        for what in ("actor_lr", "critic_lr", "tau", "noise_sigma", "noise_decay"):
            v = getattr(self, what)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{what} = {v!r} must be a positive number")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma = {self.gamma!r} must be in [0, 1]")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden = {self.hidden!r} must list positive layer widths")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


@dataclass(frozen=True)
class EpisodeRecord:
    episode: int
    policy: Policy
    reward: float
    accuracy: float
    robust_accuracy: float | None
    latency_ms: float
    energy_mj: float | None
    size_bits: float
    relative_cost: float
    per_attack: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_info(cls, episode: int, info: dict[str, Any]) -> EpisodeRecord:
        c = info["cost"]
        return cls(
            episode=episode,
            policy=info["policy"],
            reward=float(info["reward"]),
            accuracy=float(info["accuracy"]),
            robust_accuracy=info["robust_accuracy"],
            latency_ms=float(c["latency_ms"]),
            energy_mj=c["energy_mj"],
            size_bits=float(c["size_bits"]),
            relative_cost=float(c["relative"]),
            per_attack=dict(info.get("per_attack", {})),
        )


@dataclass
class SearchResult:
    config: SearchConfig
    episodes: list[EpisodeRecord]
    wall_s: float = 0.0

    @property
    def best(self) -> EpisodeRecord:
        """Highest reward; ties go to the earlier episode, so the result does not depend on list order."""
        if not self.episodes:
            raise ValueError("the search recorded no episode")
        return max(self.episodes, key=lambda r: (r.reward, -r.episode))


class TruncatedNormalNoise(ActionNoise):
    """HAQ's exploration: the action is redrawn from N(action, sigma) truncated to [-1, 1].

    Truncation (not clipping) keeps exploration from piling onto the extreme bit widths. ``sigma`` decays by
    ``decay`` at the end of every episode after ``warmup_episodes`` (SB3 calls :meth:`reset` at episode end).
    """

    def __init__(self, sigma: float, decay: float, warmup_episodes: int, seed: int = 0) -> None:
        super().__init__()
        self.sigma0 = float(sigma)
        self.decay = float(decay)
        self.warmup_episodes = int(warmup_episodes)
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        return self.sigma0 * self.decay ** max(0, self.episodes - self.warmup_episodes)

    def perturb(self, action: np.ndarray, low: float = -1.0, high: float = 1.0) -> np.ndarray:
        out = np.asarray(action, dtype=np.float64).copy()
        todo = np.ones(out.shape, dtype=bool)
        for _ in range(100):  # rejection sampling; acceptance is >= 16% per draw for sigma <= 1
            draw = out + self.rng.normal(0.0, self.sigma, size=out.shape)
            ok = todo & (draw >= low) & (draw <= high)
            out = np.where(ok, draw, out)
            todo &= ~ok
            if not todo.any():
                break
        return out.astype(np.float32)

    def __call__(self) -> np.ndarray:  # additive form, for SB3 code paths that expect it
        return self.rng.normal(0.0, self.sigma, size=(1,)).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1

    def get_state(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.rng.bit_generator.state = state["rng"]


class HaqDDPG(DDPG):
    """SB3's DDPG with HAQ's two changes: its own critic learning rate, and truncated-normal exploration.

    Only hooks are overridden; the algorithm is SB3's.
    """

    def __init__(self, *args: Any, critic_lr: float | None = None, **kwargs: Any) -> None:
        self.critic_lr = critic_lr
        super().__init__(*args, **kwargs)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's update, on one thread: the 300x300 nets gain nothing from more, and lose badly when the
        evaluation or another process holds the other cores (measured: 100 episodes 7 s vs 82 s)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            super().train(gradient_steps, batch_size)
        finally:
            torch.set_num_threads(threads)

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        if self.critic_lr is not None:
            for group in self.critic.optimizer.param_groups:
                group["lr"] = self.critic_lr

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts:  # uniform warm-up, without noise piling onto the bounds
            return super()._sample_action(learning_starts, None, n_envs)
        if isinstance(action_noise, TruncatedNormalNoise):
            _, buffer_action = super()._sample_action(learning_starts, None, n_envs)
            buffer_action = action_noise.perturb(buffer_action)
            return self.policy.unscale_action(buffer_action), buffer_action
        return super()._sample_action(learning_starts, action_noise, n_envs)


class _Recorder(BaseCallback):
    def __init__(self, on_info: Callable[[dict[str, Any]], bool]) -> None:
        super().__init__()
        self.on_info = on_info

    def _on_step(self) -> bool:
        keep_going = True
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if done and "policy" in info:
                keep_going = self.on_info(info) and keep_going
        return keep_going


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_agent(env: MixedPrecisionEnv, config: SearchConfig) -> HaqDDPG:
    steps = env.n_steps
    noise = TruncatedNormalNoise(config.noise_sigma, config.noise_decay, config.warmup_episodes, seed=config.seed)
    return HaqDDPG(
        "MlpPolicy",
        env,
        learning_rate=config.actor_lr,
        critic_lr=config.critic_lr,
        buffer_size=max(config.replay_episodes * steps, config.batch_size),
        learning_starts=config.warmup_episodes * steps,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=(1, "episode"),
        gradient_steps=-1,
        action_noise=noise,
        policy_kwargs={"net_arch": {"pi": list(config.hidden), "qf": list(config.hidden)}},
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def run_search(
    env: MixedPrecisionEnv,
    config: SearchConfig,
    *,
    on_episode: Callable[[EpisodeRecord], bool | None] | None = None,
) -> SearchResult:
    """Run ``config.episodes`` episodes; ``on_episode`` sees each finished one (return False to stop early).

    Same seed, same episodes on CPU: the seed reaches Python, NumPy, torch, the env and SB3.
    """
    _seed_everything(config.seed)
    result = SearchResult(config=config, episodes=[])
    start = time.perf_counter()

    def record(info: dict[str, Any]) -> bool:
        rec = EpisodeRecord.from_info(len(result.episodes), info)
        result.episodes.append(rec)
        stop = on_episode(rec) is False if on_episode else False
        return not stop and len(result.episodes) < config.episodes

    if config.agent == "random":
        rng = np.random.default_rng(config.seed)
        env.reset(seed=config.seed)
        while True:
            env.reset()
            for _ in range(env.n_steps):
                a = rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
                _, _, terminated, _, info = env.step(a)
            assert terminated
            if not record(info):
                break
    else:
        agent = build_agent(env, config)
        agent.learn(total_timesteps=config.episodes * env.n_steps, callback=_Recorder(record))
    result.wall_s = time.perf_counter() - start
    return result


def config_dict(config: SearchConfig) -> dict[str, Any]:
    return asdict(config)
