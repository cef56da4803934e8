"""The search: SB3 DDPG with HAQ's settings, random search, determinism, exploration noise."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hwsearch.envs import EnvConfig, MixedPrecisionEnv

from hwsearch.budget import Budget
from hwsearch.errors import ConfigError
from hwsearch.search import HaqDDPG, SearchConfig, TruncatedNormalNoise, adam_kwargs, build_agent, run_search
from tests.fakes import FakeCostModel, FakeEvaluator, fake_layers

TINY = {"episodes": 8, "warmup_episodes": 3, "hidden": (16, 16), "batch_size": 8}


def make_env(evaluator: FakeEvaluator | None = None) -> MixedPrecisionEnv:
    return MixedPrecisionEnv(
        fake_layers(), evaluator or FakeEvaluator(), FakeCostModel(), EnvConfig(budget=Budget("latency", 0.4))
    )


@pytest.mark.parametrize("agent", ["ddpg", "random"])
def test_same_seed_gives_identical_episodes(agent: str) -> None:
    cfg = SearchConfig(agent=agent, seed=7, **TINY)
    a = run_search(make_env(), cfg)
    b = run_search(make_env(), cfg)
    assert [e.policy for e in a.episodes] == [e.policy for e in b.episodes]
    assert [e.reward for e in a.episodes] == [e.reward for e in b.episodes]
    c = run_search(make_env(), SearchConfig(agent=agent, seed=8, **TINY))
    assert [e.policy for e in a.episodes] != [e.policy for e in c.episodes]


@pytest.mark.parametrize("agent", ["ddpg", "random"])
def test_runs_the_asked_episodes_and_tracks_the_best(agent: str) -> None:
    ev = FakeEvaluator()
    seen = []
    res = run_search(make_env(ev), SearchConfig(agent=agent, **TINY), on_episode=seen.append)
    assert len(res.episodes) == TINY["episodes"] == len(seen) == ev.calls
    assert [e.episode for e in res.episodes] == list(range(TINY["episodes"]))
    assert res.best.reward == max(e.reward for e in res.episodes)
    assert all(e.relative_cost <= 0.4 + 1e-9 for e in res.episodes)


def test_on_episode_returning_false_stops_early() -> None:
    res = run_search(make_env(), SearchConfig(**TINY), on_episode=lambda rec: rec.episode < 2)
    assert len(res.episodes) == 3


def test_agent_has_haq_settings() -> None:
    env = make_env()
    cfg = SearchConfig(episodes=50)
    agent = build_agent(env, cfg)
    assert isinstance(agent, HaqDDPG)
    assert agent.learning_starts == 20 * env.n_steps
    assert agent.gamma == 1.0 and agent.tau == 0.01 and agent.batch_size == 64
    assert agent.replay_buffer.buffer_size == 128 * env.n_steps
    assert [m.out_features for m in agent.actor.mu if isinstance(m, torch.nn.Linear)] == [300, 300, 1]
    from stable_baselines3.common.logger import configure

    agent.set_logger(configure(None, []))
    agent._update_learning_rate([agent.actor.optimizer, agent.critic.optimizer])
    assert agent.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_truncated_noise_stays_in_bounds_and_decays_after_warmup() -> None:
    noise = TruncatedNormalNoise(sigma=1.0, decay=0.5, warmup_episodes=2, seed=0)
    acts = noise.perturb(np.full((1000, 1), 0.9, dtype=np.float32))
    assert acts.min() >= -1 and acts.max() <= 1
    assert (acts > 0.9).mean() < 0.5 < (acts < 0.9).mean() + 0.2  # truncation, not clipping: no pile at +1
    assert (acts == 1.0).sum() == 0
    noise.episodes = 2
    noise.reset()  # SB3 calls it at learn start and episode ends; the search owns the count
    assert noise.sigma == 1.0
    noise.episodes = 4
    assert noise.sigma == 0.25
    state = noise.get_state()
    x = noise.perturb(np.zeros((4, 1)))
    noise.set_state(state)
    assert np.array_equal(noise.perturb(np.zeros((4, 1))), x)


def test_noise_floor_stops_the_decay_and_reaches_the_agent() -> None:
    noise = TruncatedNormalNoise(sigma=1.0, decay=0.5, warmup_episodes=0, seed=0, floor=0.2)
    noise.episodes = 1
    assert noise.sigma == 0.5
    noise.episodes = 50
    assert noise.sigma == 0.2
    agent = build_agent(make_env(), SearchConfig(noise_min=0.3, **TINY))
    assert isinstance(agent.action_noise, TruncatedNormalNoise) and agent.action_noise.floor == 0.3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent", "ppo"),
        ("episodes", 0),
        ("warmup_episodes", -1),
        ("actor_lr", 0.0),
        ("gamma", 1.5),
        ("hidden", ()),
        ("noise_min", 2.0),
        ("noise_min", -0.1),
    ],
)
def test_bad_search_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        SearchConfig(**{field: value})


@pytest.mark.parametrize(("mode", "baseline"), [("episode", "none"), ("episode", "moving"), ("sparse", "none")])
def test_reward_mode_labels_the_replay_buffer(mode: str, baseline: str) -> None:
    env = make_env()
    agent = build_agent(env, SearchConfig(reward_mode=mode, reward_baseline=baseline, **{**TINY, "episodes": 4}))
    agent.learn(total_timesteps=4 * env.n_steps)
    rb = agent.replay_buffer
    rewards = rb.rewards[: rb.size(), 0].reshape(4, env.n_steps)
    dones = rb.dones[: rb.size(), 0].reshape(4, env.n_steps)
    if mode == "sparse":  # 0 until the last step, bootstrapped
        assert (rewards[:, :-1] == 0).all() and (dones[:, :-1] == 0).all() and (dones[:, -1] == 1).all()
        assert (rewards[:, -1] != 0).any()
        return
    assert np.allclose(rewards, rewards[:, :1]) and (dones == 1).all()  # each step: its episode's reward, a target
    if baseline == "none":  # the episode's own reward: the same (s, a) always gets the same target
        assert rewards[0, 0] != 0.0
    else:  # minus the moving average of the episodes before (the first is its own baseline)
        assert rewards[0, 0] == 0.0 and agent.reward_baseline is not None


@pytest.mark.parametrize("mode", ["episode", "sparse"])
def test_idle_target_nets_leave_every_update_as_it_was(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every transition done (episode mode) the target nets' value is multiplied by 0: skipping them gives the
    same weights bit for bit; in sparse mode they bootstrap, so they run."""
    from stable_baselines3.td3.policies import Actor

    def learn(skip: bool) -> tuple[list[torch.Tensor], int]:
        calls = []
        forward = Actor.forward

        def counted(self: Actor, obs: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return forward(self, obs)

        with monkeypatch.context() as m:
            m.setattr(Actor, "forward", counted)
            if not skip:
                m.setattr(HaqDDPG, "_targets_idle", lambda self: contextlib.nullcontext())
            env = make_env()
            agent = build_agent(env, SearchConfig(reward_mode=mode, **{**TINY, "episodes": 6}))
            agent.learn(total_timesteps=6 * env.n_steps)
        return [p.detach().clone() for p in agent.policy.parameters()], len(calls)

    (fast, fast_calls), (slow, slow_calls) = learn(True), learn(False)
    assert len(fast) == len(slow) and all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
    assert (fast_calls < slow_calls) == (mode == "episode")


@pytest.mark.parametrize("threads", [1, 2])
def test_the_actor_acts_and_learns_on_one_thread_whatever_torch_is_set_to(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A product's rounding may depend on the thread count: the agent's nets run on one thread, so a search's
    episodes do not depend on the threads the evaluation was given."""
    from stable_baselines3.td3.policies import Actor

    seen: list[int] = []
    forward = Actor.forward

    def spied(self: Actor, obs: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return forward(self, obs)

    before = torch.get_num_threads()
    monkeypatch.setattr(Actor, "forward", spied)
    torch.set_num_threads(threads)
    try:
        env = make_env()
        agent = build_agent(env, SearchConfig(**{**TINY, "episodes": 4}))
        agent.learn(total_timesteps=4 * env.n_steps)
        assert torch.get_num_threads() == threads  # given back
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_raw_episode_rewards_give_a_policy_the_same_target_whatever_came_before() -> None:
    """Without a baseline the buffer holds exactly the rewards the env paid; with the store-time moving average the
    same episode would be stored differently after a good or a bad predecessor (the noise that hid the signal)."""
    env = make_env()
    paid: list[float] = []

    class Spy(HaqDDPG):
        def _store_transition(self, rb, buffer_action, new_obs, reward, dones, infos):  # type: ignore[no-untyped-def]
            if np.any(dones):
                paid.append(float(reward[0]))
            super()._store_transition(rb, buffer_action, new_obs, reward, dones, infos)

    base = build_agent(env, SearchConfig(**{**TINY, "episodes": 5}))
    agent = Spy(
        "MlpPolicy",
        env,
        learning_starts=10**6,
        buffer_size=200,
        seed=0,
        policy_kwargs=base.policy_kwargs,
        baseline_kind="none",
        episode_steps=env.n_steps,
    )
    agent.learn(total_timesteps=5 * env.n_steps)
    stored = agent.replay_buffer.rewards[: agent.replay_buffer.size(), 0].reshape(5, env.n_steps)
    assert np.allclose(stored[:, 0], paid) and len(set(np.round(paid, 6))) > 1


@pytest.mark.parametrize("seed", [0, 1])
def test_ddpg_learns_to_beat_random_search(seed: int) -> None:
    """On the fake problem (accuracy rises with bits, under a 0.4x budget), with the default exploration: DDPG's
    best episode comes after its random warm-up, its late episodes beat the warm-up and random search, and its
    best policy beats random search's best with the same episodes."""
    cfg = SearchConfig(episodes=120, warmup_episodes=20, hidden=(64, 64), seed=seed)
    result = run_search(make_env(), cfg)
    ddpg = np.array([e.reward for e in result.episodes])
    rand = np.array(
        [e.reward for e in run_search(make_env(), SearchConfig(episodes=120, agent="random", seed=seed)).episodes]
    )
    assert result.best.episode >= cfg.warmup_episodes
    assert ddpg[-20:].mean() > ddpg[:20].mean() + 0.3
    assert ddpg[-20:].mean() > rand.mean() + 0.3
    assert ddpg.max() > rand.max()


def test_replay_buffer_holds_the_applied_actions_not_the_requested_ones() -> None:
    """The env's action wall moves over-budget requests; DDPG must be taught the value of what was evaluated, so
    the buffer keeps ``info["action"]`` (here: warm-up draws at a 0.4x budget, many of them walled)."""
    env = make_env()
    applied: list[float] = []
    requested: list[float] = []

    class Spy(HaqDDPG):
        def _store_transition(self, rb, buffer_action, new_obs, reward, dones, infos):  # type: ignore[no-untyped-def]
            requested.append(float(buffer_action[0, 0]))
            applied.append(float(infos[0]["action"][0]))
            super()._store_transition(rb, buffer_action, new_obs, reward, dones, infos)

    base = build_agent(env, SearchConfig(**{**TINY, "episodes": 3}))
    agent = Spy("MlpPolicy", env, learning_starts=10**6, buffer_size=100, seed=0, policy_kwargs=base.policy_kwargs)
    agent.learn(total_timesteps=3 * env.n_steps)
    stored = agent.replay_buffer.actions[: agent.replay_buffer.size(), 0, 0]
    assert np.allclose(stored, applied)
    assert not np.allclose(applied, requested)  # the wall moved some of them


@pytest.mark.parametrize(
    ("device", "version", "expected"),
    [
        ("cpu", "2.14.1+cu130", {"fused": True}),
        ("cpu", "2.4.0a0+git1234", {"fused": True}),
        ("cuda", "2.5.1", {"fused": True}),
        ("cpu", "2.3.1", {"foreach": True}),  # torch refuses fused Adam on CPU tensors before 2.4
        ("cuda", "2.2.0+cu121", {"foreach": True}),  # SB3 builds the optimizers before moving the nets to CUDA
        ("mps", "2.14.1", {"foreach": True}),
    ],
)
def test_adam_form_follows_what_this_torch_runs(device: str, version: str, expected: dict) -> None:
    assert adam_kwargs(torch.device(device), version) == expected


def test_the_agent_trains_with_this_machines_adam_form() -> None:
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), FakeCostModel(), EnvConfig(budget=Budget("latency", 0.5)))
    agent = build_agent(env, SearchConfig(episodes=4, warmup_episodes=2))
    want = adam_kwargs(torch.device("cpu"))
    for optimizer in (agent.actor.optimizer, agent.critic.optimizer):
        assert all(bool(g.get(k)) == bool(want.get(k)) for g in optimizer.param_groups for k in ("fused", "foreach"))


@pytest.mark.parametrize("timeout", [False, True])
def test_a_time_limit_end_keeps_the_target_nets_running(timeout: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3 samples ``done * (1 - timeout)``: a transition cut by a time limit bootstraps, so its target needs the
    target nets even though its stored ``done`` is 1."""
    from stable_baselines3.common.logger import configure
    from stable_baselines3.td3.policies import Actor

    calls = []
    forward = Actor.forward
    monkeypatch.setattr(Actor, "forward", lambda self, obs: calls.append(self) or forward(self, obs))
    env = make_env()
    agent = build_agent(env, SearchConfig(**TINY))
    agent.set_logger(configure(None, []))
    rb = agent.replay_buffer
    rb.pos, rb.dones[:] = 8, 1.0
    rb.timeouts[3] = float(timeout)
    agent.train(2, batch_size=4)
    assert any(net is agent.actor_target for net in calls) == timeout
