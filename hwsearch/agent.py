"""The DDPG agent: stable-baselines3's DDPG with HAQ's changes, as subclass hooks only (no hand-written RL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise

__all__ = ["TruncatedNormalNoise", "HaqDDPG"]


class TruncatedNormalNoise(ActionNoise):
    """HAQ's exploration: the action is redrawn from N(action, sigma) truncated to [-1, 1].

    Truncation (not clipping) keeps exploration from piling onto the extreme bit widths. ``sigma`` decays by
    ``decay`` per finished episode after ``warmup_episodes``, down to ``floor``. The search sets :attr:`episodes`
    from its log: SB3 also calls :meth:`reset` when ``learn`` starts, so counting resets would skew a resumed run.
    """

    def __init__(self, sigma: float, decay: float, warmup_episodes: int, seed: int = 0, floor: float = 0.0) -> None:
        super().__init__()
        self.floor = float(floor)
        self.sigma0 = float(sigma)
        self.decay = float(decay)
        self.warmup_episodes = int(warmup_episodes)
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        return max(
            getattr(self, "floor", 0.0), self.sigma0 * self.decay ** max(0, self.episodes - self.warmup_episodes)
        )

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

    def reset(self, indices: Any = None) -> None:
        """Nothing to reset: the decay follows the episode count the search sets (SB3 passes ``indices`` when
        it steps several envs)."""

    def get_state(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.rng.bit_generator.state = state["rng"]


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block, then back to what it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HaqDDPG(DDPG):
    """SB3's DDPG with HAQ's changes: its own critic learning rate, truncated-normal exploration, and (with
    ``reward_mode="episode"``) every transition of an episode relabelled with the episode's reward as its whole
    target (a done flag on each), so the critic learns E[reward | s, a] directly instead of bootstrapping it back
    through 2N steps.

    HAQ's code stores that reward as paid and, at each update, shifts the whole sampled batch by one moving
    average of batch means: the same shift for every sample, which leaves the actor's gradient of Q unchanged.
    ``baseline_kind="moving"`` keeps what this project did before instead (each episode stored minus a moving
    average of the episodes before it, ``baseline_alpha`` 0.5): a policy's target then depends on its
    predecessors (README, "Does the agent learn?").

    Only hooks are overridden; the algorithm is SB3's.
    """

    def __init__(
        self,
        *args: Any,
        critic_lr: float | None = None,
        reward_mode: str = "episode",
        baseline_kind: str = "none",
        episode_steps: int = 1,
        baseline_alpha: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self.critic_lr = critic_lr
        self.reward_mode = reward_mode
        self.baseline_kind = baseline_kind  # SearchConfig.reward_baseline (self.reward_baseline is its value)
        self.episode_steps = int(episode_steps)
        self.baseline_alpha = float(baseline_alpha)
        self.reward_baseline: float | None = None
        self.after_store: Callable[[bool], None] | None = None
        self.init_actions: np.ndarray | None = None  # (episodes, steps): played first, during warm-up
        self.last_sigma: float | None = None  # the exploration sigma of the last sampled action (None: warm-up)
        super().__init__(*args, **kwargs)

    def _relabel_episode(self, replay_buffer: Any, dones: np.ndarray) -> None:
        """HAQ: the transitions of a finished episode all get its reward (minus the moving average of the rewards
        before it, with ``baseline_kind="moving"``)."""
        idx = (replay_buffer.pos - 1 - np.arange(self.episode_steps)) % replay_buffer.buffer_size
        for env_i in np.flatnonzero(dones):
            reward = float(replay_buffer.rewards[idx[0], env_i])
            if self.baseline_kind == "moving":
                base = reward if self.reward_baseline is None else self.reward_baseline
                replay_buffer.rewards[idx, env_i] = reward - base
                self.reward_baseline = base + (1.0 - self.baseline_alpha) * (reward - base)
            else:
                replay_buffer.rewards[idx, env_i] = reward
            replay_buffer.dones[idx, env_i] = 1.0

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "after_store", "init_actions"]

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        """SB3 wraps the noise in one copy per env when ``n_envs > 1``; the truncated noise already perturbs a
        batch of actions, and the search must keep setting its episode count, so it stays unwrapped."""
        noise = self.action_noise
        out = super()._setup_learn(*args, **kwargs)
        if isinstance(noise, TruncatedNormalNoise) and isinstance(self.action_noise, VectorizedActionNoise):
            self.action_noise = noise
        return out

    def _store_transition(
        self, replay_buffer: Any, buffer_action: Any, new_obs: Any, reward: Any, dones: Any, infos: Any
    ) -> None:
        """Stores the action the env applied (``info["action"]``: after its action wall, see ``EnvConfig.enforce``)
        rather than the one requested, so the critic is taught the value of what was evaluated."""
        applied = [info.get("action") for info in infos]
        if any(a is not None for a in applied):
            buffer_action = np.array(buffer_action, copy=True)
            for i, a in enumerate(applied):
                if a is not None:  # the env's units; the buffer holds SB3's scaled [-1, 1] ones
                    buffer_action[i] = self.policy.scale_action(np.asarray(a, dtype=np.float32))
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if self.reward_mode == "episode" and np.any(dones):
            self._relabel_episode(replay_buffer, np.asarray(dones))
        if self.after_store is not None:
            self.after_store(bool(np.any(dones)))

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's update, on one thread: the 300x300 nets gain nothing from more, and lose badly when the
        evaluation or another process holds the other cores (measured: 100 episodes 7 s vs 82 s)."""
        with _one_thread(), self._targets_idle():
            super().train(gradient_steps, batch_size)

    @contextmanager
    def _targets_idle(self) -> Iterator[None]:
        """While every stored transition ends an episode (``done`` 1: ``reward_mode="episode"`` relabels them all),
        the critic's target is the reward alone, yet SB3 runs both target nets on each batch and multiplies their
        value by ``1 - done = 0``. They return zeros meanwhile: the same target, so the same update bit for bit,
        without two of a gradient step's five forward passes. Polyak averaging still keeps the target nets
        current, for a resumed run in ``sparse`` mode."""
        rb = self.replay_buffer
        stored = 0 if rb is None else rb.buffer_size if rb.full else rb.pos
        if rb is None or stored == 0:
            yield
            return
        done = rb.dones[:stored]
        if rb.handle_timeout_termination:  # what SB3 samples: a time-limit end is not done, it bootstraps
            done = done * (1 - rb.timeouts[:stored])
        if not np.all(done == 1.0):
            yield
            return
        actor, critic = self.actor_target, self.critic_target
        n_critics = len(critic.q_networks)
        action_shape = tuple(self.action_space.shape or ())

        def no_action(obs: torch.Tensor) -> torch.Tensor:
            return torch.zeros((obs.shape[0], *action_shape), device=obs.device)

        def no_value(obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(torch.zeros((obs.shape[0], 1), device=obs.device) for _ in range(n_critics))

        actor.forward, critic.forward = no_action, no_value  # type: ignore[method-assign]  # shadow the class's
        try:
            yield
        finally:
            del actor.forward, critic.forward

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        if self.critic_lr is not None:
            for group in self.critic.optimizer.param_groups:
                group["lr"] = self.critic_lr

    @_one_thread()
    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The actor acts on one thread too, whatever the evaluation uses: a matrix product's rounding may depend
        on the thread count, and an action one ulp over a bin boundary is another policy (the demo's search at 1
        and at 2 threads parted midway), so a search's episodes would depend on the cores it was given."""
        if self.num_timesteps < learning_starts:  # uniform warm-up, without noise piling onto the bounds
            self.last_sigma = None
            action, buffer_action = super()._sample_action(learning_starts, None, n_envs)
            return self._warm_start(action, buffer_action, n_envs)
        if isinstance(action_noise, TruncatedNormalNoise):
            self.last_sigma = action_noise.sigma
            _, buffer_action = super()._sample_action(learning_starts, None, n_envs)
            buffer_action = action_noise.perturb(buffer_action)
            return self.policy.unscale_action(buffer_action), buffer_action
        self.last_sigma = None
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _warm_start(self, action: np.ndarray, buffer_action: np.ndarray, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
        """During warm-up, the first ``len(init_actions)`` episodes play the given actions instead of uniform draws
        (env ``i`` of round ``r`` plays episode ``r * n_envs + i``); SB3 stores them as any other action."""
        if self.init_actions is None:
            return action, buffer_action
        round_, t = divmod(self.num_timesteps // n_envs, self.episode_steps)
        action, buffer_action = np.array(action, copy=True), np.array(buffer_action, copy=True)
        for i in range(n_envs):
            episode = round_ * n_envs + i
            if episode < len(self.init_actions):
                action[i] = buffer_action[i] = self.init_actions[episode, t]
        return action, buffer_action
