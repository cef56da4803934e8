"""The policy search: stable-baselines3 DDPG with HAQ's settings, or random search, over the env."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecEnv

from hwsearch.agent import HaqDDPG, TruncatedNormalNoise
from hwsearch.checks import check_choice, check_int, check_number
from hwsearch.envs import MixedPrecisionEnv
from hwsearch.errors import ConfigError
from hwsearch.ilp import run_ilp_agent
from hwsearch.io import atomic_write_json, atomic_write_text, atomic_write_with
from hwsearch.policy import Policy
from hwsearch.random_search import random_search
from hwsearch.runtime import set_seed

__all__ = [
    "AGENTS",
    "REWARD_DECIMALS",
    "reward_rank",
    "SearchConfig",
    "adam_kwargs",
    "EpisodeRecord",
    "SearchResult",
    "TruncatedNormalNoise",
    "HaqDDPG",
    "SearchCheckpoint",
    "build_agent",
    "episode_steps",
    "run_search",
]

AGENTS = ("ddpg", "random", "ilp")
REWARD_MODES = ("episode", "sparse")
REWARD_BASELINES = ("none", "moving")
REWARD_DECIMALS = 9  # rewards equal to this many places are a tie (SearchResult.best)


def reward_rank(rec: EpisodeRecord) -> tuple[float, float, int]:
    """Sort key, best first: higher reward to :data:`REWARD_DECIMALS` places, then the cheaper policy on the
    budget's metric (an accuracy-only reward ties every policy that scores the same images right, and of those
    the user wants the fastest), then the earlier episode."""
    return (-round(rec.reward, REWARD_DECIMALS), round(rec.relative_cost, REWARD_DECIMALS), rec.episode)


@dataclass(frozen=True)
class SearchConfig:
    """DDPG settings that worked for HAQ (docs/ARCHITECTURE.md, "The search agent").

    ``noise_sigma`` is in the env's action units ([-1, 1]); HAQ's 0.5 on its [0, 1] actions is 1.0 here.
    The replay buffer holds ``replay_episodes`` episodes. ``reward_mode``: ``episode`` (HAQ: every transition
    gets the episode's reward as its whole target) or ``sparse`` (the env's rewards, 0 until the last step,
    bootstrapped with ``gamma``). ``reward_baseline``: ``none`` stores the episode's reward as paid; ``moving``
    (this project's behaviour before 2026-12-06, kept for comparison) stores it minus a moving average of the
    episodes before, which gives the same policy a different target after a good or a bad predecessor.
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
    noise_min: float = 0.0
    reward_mode: str = "episode"
    reward_baseline: str = "none"
    replay_episodes: int = 128
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_choice(self.reward_mode, "reward_mode", REWARD_MODES)
        check_choice(self.reward_baseline, "reward_baseline", REWARD_BASELINES)
        check_int(self.seed, "seed", 0, 2**31)
        check_choice(self.agent, "agent", AGENTS)
        for what in ("episodes", "batch_size", "replay_episodes"):
            check_int(getattr(self, what), what, 1)
        check_int(self.warmup_episodes, "warmup_episodes", 0)
        for what in ("actor_lr", "critic_lr", "tau", "noise_sigma", "noise_decay"):
            check_number(getattr(self, what), what, positive=True)
        if not 0 <= check_number(self.noise_min, "noise_min", 0) <= self.noise_sigma:
            raise ConfigError(f"noise_min = {self.noise_min!r} must be in [0, noise_sigma = {self.noise_sigma!r}]")
        if check_number(self.gamma, "gamma", 0) > 1:
            raise ConfigError(f"gamma = {self.gamma!r} must be in [0, 1]")
        if not self.hidden:
            raise ConfigError(f"hidden = {self.hidden!r} must list positive layer widths")
        object.__setattr__(self, "hidden", tuple(check_int(h, "hidden layer width", 1) for h in self.hidden))


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
    requested_relative_cost: float | None = (
        None  # as asked, before the wall and the walk (ARCHITECTURE, "The budget walk")
    )
    noise_sigma: float | None = None  # DDPG's exploration sigma for this episode; None: uniform or no exploration

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
            requested_relative_cost=None if c.get("requested_relative") is None else float(c["requested_relative"]),
        )


@dataclass
class SearchResult:
    """The recorded episodes; ``init_episodes``: how many of the first were given policies (a warm start or the
    ILP's answer); ``notes``: what an agent adds (the ILP's evaluations and times)."""

    config: SearchConfig
    episodes: list[EpisodeRecord]
    wall_s: float = 0.0
    init_episodes: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    picked: EpisodeRecord | None = None  # the final pick (hwsearch.selection), when the job re-scored the best

    @property
    def chosen(self) -> EpisodeRecord:
        """The policy the search hands over: the final pick when one was made, else the best reward."""
        return self.picked if self.picked is not None else self.best

    @property
    def best(self) -> EpisodeRecord:
        """Highest reward; ties go to the cheaper policy, then the earlier episode, so the result does not depend
        on list order.

        Rewards are compared to :data:`REWARD_DECIMALS` places: two policies with the same accuracy and robustness
        counts tie even when float arithmetic summed their terms to neighbouring doubles (1.08 vs 1.0800000000000002).
        """
        if not self.episodes:
            raise ValueError("the search recorded no episode")
        return min(self.episodes, key=reward_rank)


class _Recorder(BaseCallback):
    """Hands each finished episode's info to the search; stops SB3 at the next step when asked.

    A step that ends an episode always returns True, so SB3 stores that episode's last transition (the one
    carrying the reward) before the search stops or checkpoints.
    """

    def __init__(self, on_info: Callable[[dict[str, Any]], None], stop_requested: Callable[[], bool]) -> None:
        super().__init__()
        self.on_info = on_info
        self.stop_requested = stop_requested

    def _on_step(self) -> bool:
        ended = False
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if done and "policy" in info:
                self.on_info(info)
                ended = True
        return ended or not self.stop_requested()


class SearchCheckpoint:
    """Resumable search state under ``root``: versioned folders ``ckpt-NNNNNN`` and a ``LATEST`` pointer.

    Each folder holds the SB3 agent (with its exploration noise), its replay buffer and ``state.json``; the
    pointer is rewritten atomically only after a folder is complete, so a kill at any instant leaves the
    previous checkpoint usable. The episode log (``episodes.csv``) is kept by the caller, one flushed row per
    episode, and is the record of what finished.
    """

    def __init__(self, root: str | Path, every: int = 10, keep: int = 2) -> None:
        if every < 1:
            raise ConfigError(f"checkpoint interval {every} must be >= 1 episode")
        if keep < 1:
            raise ConfigError(f"checkpoints to keep = {keep} must be >= 1")
        self.root = Path(root)
        self.every = int(every)
        self.keep = int(keep)

    def latest(self) -> Path | None:
        pointer = self.root / "LATEST"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text(encoding="utf-8").strip()
        return path if (path / "state.json").is_file() else None

    def clear(self) -> None:
        """Forget every checkpoint (a fresh run in a folder that held another)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def save(self, episodes_done: int, agent: DDPG | None, extra: dict[str, Any]) -> Path:
        # a new folder every time: the one LATEST names is never touched until LATEST names another
        folder = self.root / f"ckpt-{episodes_done:06d}-{time.time_ns()}"
        folder.mkdir(parents=True)
        if agent is not None:
            atomic_write_with(folder / "agent.zip", lambda tmp: _save_to(tmp, agent.save))
            atomic_write_with(folder / "replay.pkl", lambda tmp: _save_to(tmp, agent.save_replay_buffer))
        atomic_write_json(folder / "state.json", {"schema": 1, "episodes_done": episodes_done, **extra})
        atomic_write_text(self.root / "LATEST", folder.name + "\n")
        for old in sorted(self.root.glob("ckpt-*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def state(self) -> dict[str, Any] | None:
        path = self.latest()
        return None if path is None else json.loads((path / "state.json").read_text(encoding="utf-8"))

    def load_agent(self, env: MixedPrecisionEnv | VecEnv, config: SearchConfig) -> HaqDDPG | None:
        path = self.latest()
        if path is None or not (path / "agent.zip").is_file():
            return None
        try:
            # this machine's optimizer form, not the saver's (its torch may refuse fused Adam)
            custom = {"policy_kwargs": policy_kwargs(config)}
            agent = HaqDDPG.load(path / "agent.zip", env=env, device=config.device, custom_objects=custom)
        except ValueError as exc:  # SB3: the saved agent's spaces are not the env's (another hwsearch wrote it)
            if "spaces do not match" not in str(exc):
                raise
            raise ConfigError(
                f"the agent in {path} was saved for another observation or action space ({exc}); an older hwsearch "
                "wrote it: start this search afresh with --overwrite"
            ) from None
        _set_adam_form(agent)
        agent.load_replay_buffer(path / "replay.pkl")
        agent.baseline_kind = config.reward_baseline  # the job's settings rule (an older agent.zip has none)
        agent._last_obs = None  # the env is new: SB3 must reset it rather than act on a stale observation
        return agent


def _save_to(tmp: str, save: Callable[[Any], None]) -> None:
    with open(tmp, "wb") as fh:
        save(fh)


def episode_steps(env: MixedPrecisionEnv | VecEnv) -> int:
    """Steps per episode (the same in every env of a ``VecEnv``: they are copies of one env)."""
    if isinstance(env, VecEnv):
        return int(env.get_attr("n_steps", indices=[0])[0])
    return int(env.n_steps)


def adam_kwargs(device: torch.device, version: str | None = None) -> dict[str, bool]:
    """Adam's multi-tensor form for the agent's nets: fused on CPU and CUDA from torch 2.4, else ``foreach``.

    SB3's default is torch's one-tensor-at-a-time loop, which spent a third of a 150-episode resnet20 search's
    agent time (43.7 s) in Adam steps; fused took it to 32.8 s, foreach (the same arithmetic) to 39.0 s. Before
    2.4 torch refuses fused Adam on CPU tensors, and SB3 builds the optimizers before it moves the nets to CUDA.
    """
    parts = (version or torch.__version__).split("+")[0].split(".")[:2]
    major_minor = tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)
    if major_minor >= (2, 4) and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {"foreach": True}


def policy_kwargs(config: SearchConfig) -> dict[str, Any]:
    """SB3's ``policy_kwargs`` for the agent: DDPG's one critic, HAQ's hidden layers, and Adam's form for this
    machine (a loaded agent gets them too, so it builds what this machine runs)."""
    return {
        "n_critics": 1,
        "net_arch": {"pi": list(config.hidden), "qf": list(config.hidden)},
        "optimizer_kwargs": adam_kwargs(get_device(config.device)),
    }


def _set_adam_form(agent: HaqDDPG) -> None:
    """The optimizer form for this machine, on an agent loaded from a checkpoint (its saved groups carry the form
    of the machine that saved it)."""
    kwargs = adam_kwargs(agent.device)
    fused = bool(kwargs.get("fused"))
    for optimizer in (agent.actor.optimizer, agent.critic.optimizer):
        for group in optimizer.param_groups:
            group["fused"] = kwargs.get("fused", None)
            group["foreach"] = kwargs.get("foreach", None)
            for p in group["params"]:  # fused keeps its step counts where the parameters are, the others on the CPU
                state = optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(device=p.device if fused else "cpu", dtype=torch.float32)


def build_agent(env: MixedPrecisionEnv | VecEnv, config: SearchConfig) -> HaqDDPG:
    """HAQ's DDPG. One env trains after every episode on as many gradient steps as it collected transitions.
    SB3 refuses episodic ``train_freq`` with several envs; as they all end episodes on the same step, training
    every ``steps`` vec steps on ``steps * n_envs`` gradient steps is the same schedule (one update per
    transition, after each round of episodes)."""
    steps = episode_steps(env)
    n_envs = env.num_envs if isinstance(env, VecEnv) else 1
    train_freq: tuple[int, str] = (1, "episode") if n_envs == 1 else (steps, "step")
    noise = TruncatedNormalNoise(
        config.noise_sigma, config.noise_decay, config.warmup_episodes, seed=config.seed, floor=config.noise_min
    )
    return HaqDDPG(
        "MlpPolicy",
        env,
        learning_rate=config.actor_lr,
        critic_lr=config.critic_lr,
        reward_mode=config.reward_mode,
        baseline_kind=config.reward_baseline,
        episode_steps=steps,
        buffer_size=max(config.replay_episodes * steps, config.batch_size, n_envs * steps),  # >= a round
        learning_starts=config.warmup_episodes * steps,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=train_freq,
        gradient_steps=-1,
        action_noise=noise,
        policy_kwargs=policy_kwargs(config),
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def run_search(
    env: MixedPrecisionEnv | VecEnv,
    config: SearchConfig,
    *,
    on_episode: Callable[[EpisodeRecord], bool | None] | None = None,
    checkpoint: SearchCheckpoint | None = None,
    history: Sequence[EpisodeRecord] = (),
    should_stop: Callable[[], bool] = lambda: False,
    tensorboard: str | Path | None = None,
    resume: bool = False,
    init_policies: Sequence[Policy] = (),
) -> SearchResult:
    """Run until ``config.episodes`` episodes are recorded; ``on_episode`` sees each new one.

    ``init_policies`` (a warm start) are requested in the first episodes, inside the warm-up (so there must be
    no more of them than ``config.warmup_episodes``), as the actions that request them
    (:meth:`MixedPrecisionEnv.actions_for`); DDPG's replay buffer stores those actions like any other. The
    ``ilp`` agent measures per-layer sensitivity through the env's evaluator, solves the integer program
    (:mod:`hwsearch.ilp`) and records its answer as the one episode it plays, after any ``init_policies``.

    ``tensorboard``: a folder for SB3's logger in TensorBoard format: SB3's own training scalars, plus per
    episode ``episode/reward``, ``episode/accuracy``, ``episode/robust_accuracy``, ``episode/relative_cost``
    and ``episode/best_reward`` (needs the ``tensorboard`` package).

    ``history`` holds episodes a previous, interrupted run already finished (from its log). With ``resume``,
    DDPG goes on from the agent in ``checkpoint`` (episodes that finished after that checkpoint stay in the log
    and the evaluation cache; the agent has not learnt from them), and the random agent from its stream as if
    never interrupted. Without ``resume``, ``checkpoint`` is cleared first: a fresh run never inherits an agent.
    ``on_episode`` returning False or ``should_stop()`` turning true (a signal handler) stops at the next step,
    after a checkpoint that leaves out the unfinished episode's transitions.
    Same seed, same episodes on CPU: the seed reaches Python, NumPy, torch, the env and SB3.

    ``env`` may be a ``VecEnv`` of copies of one env (:mod:`hwsearch.parallel`): its envs finish episodes on the
    same step, recorded in env order; a round that overshoots ``config.episodes`` has its extra episodes
    evaluated but not recorded. The random agent draws the same actions as with one env (same seed, same
    episodes); DDPG does not (it acts on a batch and trains after each round), but any backend with the same
    ``n_envs`` and seed gives the same episodes. Resume with the ``n_envs`` the run started with.
    """
    set_seed(config.seed + len(history))
    n_scripted = len(init_policies)
    if config.agent != "ilp" and n_scripted > config.warmup_episodes:
        raise ConfigError(
            f"{n_scripted} initial policies need at least {n_scripted} warm-up episodes (they are played as the "
            f"first ones); got warmup_episodes = {config.warmup_episodes}: raise --warmup"
        )
    result = SearchResult(config=config, episodes=list(history), init_episodes=n_scripted)
    init_actions = _init_actions(env, init_policies)
    start = time.perf_counter()
    agent: HaqDDPG | None = None
    n_envs = env.num_envs if isinstance(env, VecEnv) else 1
    steps = episode_steps(env)
    rng = np.random.default_rng(config.seed)
    rng.uniform(-1.0, 1.0, size=len(history) * steps)  # the random agent's draws for the finished episodes
    if checkpoint is not None and not resume:
        checkpoint.clear()
    state = checkpoint.state() if checkpoint is not None else None
    if state is not None and int(state.get("n_envs", 1)) != n_envs and config.agent != "random":
        raise ConfigError(
            f"the checkpoint was written with {state.get('n_envs', 1)} env(s); resume with n_envs = "
            f"{state.get('n_envs', 1)} (got {n_envs}): its replay buffer is laid out per env"
        )
    saved_at = [len(result.episodes) if state is None else int(state["episodes_done"])]
    partial = [0]  # transitions stored since the last finished round of episodes
    logger = _tensorboard_logger(tensorboard) if tensorboard is not None else None

    def save() -> None:
        if checkpoint is None or (saved_at[0] == len(result.episodes) and checkpoint.latest() is not None):
            return
        if agent is not None and partial[0]:  # an unfinished episode's transitions are not a valid episode
            rb = agent.replay_buffer
            assert rb is not None  # built with the agent
            rb.pos = (rb.pos - partial[0]) % rb.buffer_size
            partial[0] = 0
        extra = {"config": asdict(config), "n_envs": n_envs}
        checkpoint.save(len(result.episodes), agent, extra)
        saved_at[0] = len(result.episodes)

    stop_asked = [False]

    def stop_requested() -> bool:
        return stop_asked[0] or should_stop()

    def record(info: dict[str, Any]) -> None:
        if len(result.episodes) >= config.episodes:  # the overshoot of a last round of several envs
            return
        rec = EpisodeRecord.from_info(len(result.episodes), info)
        if agent is not None and agent.last_sigma is not None:
            rec = replace(rec, noise_sigma=float(agent.last_sigma))
        result.episodes.append(rec)
        if logger is not None:
            logger.record("episode/reward", rec.reward)
            logger.record("episode/accuracy", rec.accuracy)
            if rec.robust_accuracy is not None:
                logger.record("episode/robust_accuracy", rec.robust_accuracy)
            logger.record("episode/relative_cost", rec.relative_cost)
            logger.record("episode/best_reward", max(r.reward for r in result.episodes))
            logger.dump(step=len(result.episodes))
        if agent is not None and isinstance(agent.action_noise, TruncatedNormalNoise):
            agent.action_noise.episodes = len(result.episodes)
        if on_episode is not None and on_episode(rec) is False:
            stop_asked[0] = True

    def episode_stored(ended: bool) -> None:
        """After each stored transition; once an episode's last one is in the replay buffer, checkpoint when
        due (an interval boundary was crossed: several envs add several episodes at once)."""
        partial[0] = 0 if ended else partial[0] + 1
        if checkpoint is None or not ended:
            return
        n = len(result.episodes)
        if n // checkpoint.every > saved_at[0] // checkpoint.every or n >= config.episodes or stop_requested():
            save()

    remaining = config.episodes - len(result.episodes)
    try:
        if config.agent == "ilp":
            run_ilp_agent(env, init_policies, init_actions, len(history), record, episode_stored, result.notes)
        elif remaining > 0 and config.agent == "random":
            random_search(
                env,
                config.seed,
                config.episodes,
                rng,
                steps,
                n_envs,
                len(history),
                record,
                episode_stored,
                stop_requested,
                recorded=lambda: len(result.episodes),
                init_actions=init_actions,
            )
        elif remaining > 0:
            agent = checkpoint.load_agent(env, config) if checkpoint is not None and resume else None
            resumed = agent is not None
            if agent is not None:
                agent.set_random_seed(config.seed + len(history))  # SB3 reseeds from config.seed when it loads
            agent = agent or build_agent(env, config)
            if isinstance(agent.action_noise, TruncatedNormalNoise):
                agent.action_noise.episodes = len(result.episodes)
            agent.after_store = episode_stored
            agent.init_actions = init_actions
            if logger is not None:
                agent.set_logger(logger)
            agent.learn(
                total_timesteps=remaining * steps,
                callback=_Recorder(record, stop_requested),
                reset_num_timesteps=not resumed,
            )
            agent.after_store = None
            agent.init_actions = None
    finally:
        if logger is not None:
            logger.close()
    if stop_requested() and checkpoint is not None:
        save()
    result.wall_s = time.perf_counter() - start
    return result


def _tensorboard_logger(folder: str | Path) -> Any:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'hwsearch[tensorboard]'") from None
    from stable_baselines3.common.logger import configure

    return configure(str(folder), ["tensorboard"])


def _init_actions(env: MixedPrecisionEnv | VecEnv, policies: Sequence[Policy]) -> np.ndarray | None:
    """``(len(policies), steps)`` actions requesting each policy; a PolicyError for one the env cannot choose."""
    if not policies:
        return None
    if isinstance(env, VecEnv):
        rows = [env.env_method("actions_for", p, indices=[0])[0] for p in policies]
    else:
        rows = [env.actions_for(p) for p in policies]
    return np.stack(rows).astype(np.float32)
