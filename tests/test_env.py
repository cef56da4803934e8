"""The Gymnasium environment: API conformance, budget enforcement, reward, determinism."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from hwsearch.envs import ENV_ID, OBS_FEATURES, EnvConfig, MixedPrecisionEnv, action_to_index
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from hwsearch.budget import Budget
from hwsearch.errors import BudgetError, ConfigError
from tests.fakes import FakeCostModel, FakeEvaluator, fake_layers


def make_env(budget: float = 0.5, **kw: object) -> MixedPrecisionEnv:
    cfg = EnvConfig(budget=Budget("latency", budget), **kw)  # type: ignore[arg-type]
    return MixedPrecisionEnv(fake_layers(), FakeEvaluator(), FakeCostModel(), cfg)


def run_episode(env: MixedPrecisionEnv, actions: list[float]) -> tuple[float, dict]:
    env.reset(seed=0)
    for i, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        if i < len(actions) - 1:
            assert reward == 0.0 and not terminated and set(info) == {"action"}
    assert terminated and not truncated
    return reward, info


def test_both_env_checkers_pass_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(make_env(), skip_render_check=True)
        sb3_check_env(make_env(), warn=True)


def test_registered_id_builds_the_env() -> None:
    env = gym.make(ENV_ID, layers=fake_layers(), evaluator=FakeEvaluator(), cost_model=FakeCostModel())
    obs, _ = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape


def test_episode_has_two_steps_per_layer_and_info_of_the_enforced_policy() -> None:
    env = make_env(budget=0.5)
    reward, info = run_episode(env, [1.0] * env.n_steps)
    policy = info["policy"]
    assert policy.names() == [ly.name for ly in fake_layers()]
    assert info["requested_policy"] == env.policy_of(np.full((5, 2), 6))  # all 8-bit asked
    assert info["cost"]["relative"] <= 0.5 + 1e-12
    assert info["cost"]["latency_ms"] <= env.budget_limit + 1e-12
    assert math.isclose(reward, 10.0 * info["accuracy"])  # acc_ref 0, w_rob 0, w_cost 0
    assert 0 <= info["robust_accuracy"] <= info["accuracy"]


def test_budget_enforcement_walks_from_the_last_layer_activation_first() -> None:
    env = make_env(budget=0.9)
    choice = env.enforce_budget(np.full((5, 2), 6))
    # the first layers keep 8 bits; lowering started at the last layer's activation bits
    assert (choice[0] == 6).all()
    assert choice[-1, 1] <= choice[-1, 0]
    assert env.cost_of(choice, "latency") <= env.budget_limit
    # a policy already within budget is left alone
    low = np.zeros((5, 2), dtype=np.int64)
    assert (env.enforce_budget(low) == low).all()


@pytest.mark.parametrize("budget", [0.07, 0.2, 0.5, 0.99])
def test_enforced_cost_meets_any_feasible_budget(budget: float) -> None:
    env = make_env(budget=budget)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, info = run_episode(env, list(rng.uniform(-1, 1, env.n_steps)))
        assert info["cost"]["latency_ms"] <= env.budget_limit * (1 + 1e-12)


def test_budget_below_all_minimum_cost_is_an_error_with_the_fix() -> None:
    with pytest.raises(BudgetError, match="raise it to at least"):
        make_env(budget=0.01)


def test_reward_combines_accuracy_robustness_and_cost() -> None:
    env = make_env(budget=0.5, w_acc=2.0, w_rob=3.0, w_cost=0.5, acc_ref=0.9, rob_ref=0.4)
    reward, info = run_episode(env, [0.0] * env.n_steps)
    expected = 2.0 * (info["accuracy"] - 0.9) + 3.0 * (info["robust_accuracy"] - 0.4) - 0.5 * info["cost"]["relative"]
    assert math.isclose(reward, expected, rel_tol=1e-9)


@pytest.mark.parametrize("drop", [None, 0.0, 0.05, 0.5])
def test_accuracy_floor_charges_only_below_it(drop: float | None) -> None:
    base = {"budget": 0.5, "w_acc": 2.0, "w_rob": 3.0, "acc_ref": 0.99, "rob_ref": 0.4}
    env = make_env(**base)
    plain, info = run_episode(env, [0.0] * env.n_steps)
    floored, _ = run_episode(make_env(**base, max_acc_drop=drop, w_floor=50.0), [0.0] * env.n_steps)
    below = 0.0 if drop is None else max(0.0, 0.99 - drop - info["accuracy"])
    assert math.isclose(floored, plain - 50.0 * below, rel_tol=1e-12, abs_tol=1e-12)
    assert (floored < plain) == (drop is not None and info["accuracy"] < 0.99 - drop)


@pytest.mark.parametrize("bad", [-0.01, math.nan, math.inf])
def test_a_negative_or_non_finite_accuracy_drop_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="max_acc_drop"):
        EnvConfig(budget=Budget(), max_acc_drop=bad)


def test_same_seed_same_episodes_and_no_state_leaks() -> None:
    env = make_env()
    actions = list(np.random.default_rng(3).uniform(-1, 1, env.n_steps))
    r1, i1 = run_episode(env, actions)
    first_obs, _ = env.reset(seed=0)
    r2, i2 = run_episode(env, actions)
    assert r1 == r2 and i1["policy"] == i2["policy"]
    fresh, _ = make_env().reset(seed=0)
    assert np.array_equal(first_obs, fresh)


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("a", [-1.0, -0.999, -0.3, 0.0, 0.42, 0.999, 1.0, 5.0, -5.0, math.inf, -math.inf, math.nan])
def test_action_mapping_is_total_and_in_range(a: float, n: int) -> None:
    i = action_to_index(a, n)
    assert isinstance(i, int) and 0 <= i < n


def test_action_bins_are_equal_width_and_monotone() -> None:
    xs = np.linspace(-1, 1, 7001)
    idx = [action_to_index(x, 7) for x in xs]
    assert idx == sorted(idx)
    counts = np.bincount(idx, minlength=7)
    assert counts.max() - counts.min() <= 2


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="w_bits"):
        EnvConfig(w_bits=(0, 4))
    with pytest.raises(ConfigError, match="w_cost"):
        EnvConfig(w_cost=-1.0)


def test_budgets_are_relative_to_fixed_8_bit_whatever_the_bit_choices() -> None:
    full = make_env(budget=0.5)
    narrow = make_env(budget=0.5, w_bits=(2, 3, 4, 5, 6), a_bits=(2, 3, 4, 5, 6))
    assert (
        narrow.cost_ref
        == full.cost_ref
        == pytest.approx(sum(FakeCostModel().layer_cost(ly, 8, 8).latency_ms for ly in fake_layers()))
    )
    assert narrow.budget_limit == full.budget_limit


def test_observation_tracks_layer_step_kind_and_previous_action() -> None:
    env = make_env()
    obs, _ = env.reset(seed=0)
    w_col, prev_col = OBS_FEATURES.index("is_weight"), OBS_FEATURES.index("previous_action")
    assert obs[w_col] == 1.0 and obs[prev_col] == 0.0
    seen = [obs]
    for a in [0.5, -0.5, 1.0, -1.0]:
        obs, *_ = env.step(np.array([a], dtype=np.float32))
        seen.append(obs)
        assert obs[prev_col] == pytest.approx((a + 1) / 2)
    assert [o[w_col] for o in seen] == [1.0, 0.0, 1.0, 0.0, 1.0]  # weight, activation, weight, ...
    assert np.array_equal(seen[0][:w_col], seen[1][:w_col])  # same layer for its two steps
    assert not np.array_equal(seen[1][:w_col], seen[2][:w_col])  # the next layer after two
    again, _ = env.reset()
    assert np.array_equal(again, seen[0])  # nothing survives the episode


def _play(env: MixedPrecisionEnv, actions: np.ndarray) -> tuple[list[np.ndarray], list[dict]]:
    obs, _ = env.reset(seed=0)
    seen, infos = [obs], []
    for a in actions:
        obs, _, _, _, info = env.step(np.array([a], dtype=np.float32))
        seen.append(obs)
        infos.append(info)
    return seen, infos


@pytest.mark.parametrize("budget", [0.3, 0.45, 0.6, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_action_wall_keeps_each_episode_under_the_budget_by_itself(budget: float, seed: int) -> None:
    """With ``enforce="step"`` the choices made step by step already fit: the final walk has nothing to do, and
    each applied action requests the choice that was made."""
    env = make_env(budget=budget)
    actions = np.random.default_rng(seed).uniform(0.0, 1.0, env.n_steps)  # biased to high bits: over budget
    _, infos = _play(env, actions)
    final = infos[-1]
    assert final["cost"]["relative"] <= budget + 1e-9
    assert np.array_equal(env.enforce_budget(env._choice), env._choice)
    assert final["policy"] == env.policy_of(env._choice)
    applied = np.array([float(i["action"][0]) for i in infos])
    for t, a in enumerate(applied):
        n = len(env.config.a_bits if t % 2 else env.config.w_bits)
        assert action_to_index(a, n) == env._choice[t // 2, t % 2]
    assert (applied <= actions + 1e-6).all()  # the wall only lowers (costs rise with bits here)
    assert final["cost"]["requested_relative"] >= final["cost"]["relative"]


def test_action_wall_leaves_a_request_that_fits_alone() -> None:
    env = make_env(budget=0.6)
    wanted = env.policy_of(np.array([[4, 4], [3, 3], [2, 2], [3, 3], [4, 4]]))
    assert env.cost_of(env.choice_of(wanted), "latency") <= env.budget_limit
    actions = env.actions_for(wanted)
    _, infos = _play(env, actions)
    assert infos[-1]["policy"] == infos[-1]["requested_policy"] == wanted
    assert np.allclose([float(i["action"][0]) for i in infos], actions)


def test_walk_mode_takes_requests_as_asked() -> None:
    env = make_env(budget=0.3, enforce="walk")
    _, infos = _play(env, np.ones(env.n_steps))
    assert all(float(i["action"][0]) == 1.0 for i in infos)
    assert infos[-1]["requested_policy"] == env.policy_of(np.full((5, 2), 6))
    assert infos[-1]["cost"]["relative"] <= 0.3 + 1e-9  # the walk still brings it under


@pytest.mark.parametrize("enforce", ["step", "walk"])
def test_budget_features_track_what_is_left(enforce: str) -> None:
    env = make_env(budget=0.5, enforce=enforce)
    left, rest = OBS_FEATURES.index("budget_left"), OBS_FEATURES.index("budget_rest")
    seen, _ = _play(env, np.random.default_rng(3).uniform(-1, 1, env.n_steps))
    lefts, rests = np.array([o[left] for o in seen]), np.array([o[rest] for o in seen])
    table = env.cost_table().reshape(env.n_layers, -1).min(axis=1)
    assert lefts[0] == pytest.approx(1 - table.sum() / env.budget_limit, abs=1e-6)
    assert rests[0] == pytest.approx(table[1:].sum() / env.budget_limit, abs=1e-6)
    assert (np.diff(lefts) <= 1e-6).all() and (np.diff(rests) <= 1e-6).all()  # choices only use budget up
    assert rests[-1] == 0.0
    if enforce == "step":
        assert lefts[-1] == pytest.approx(1 - env.cost_of(env._choice, "latency") / env.budget_limit, abs=1e-6)


def test_bad_enforce_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="enforce"):
        EnvConfig(enforce="later")


@pytest.mark.parametrize("a", [5.0, -5.0, math.inf, -math.inf, math.nan])
def test_applied_action_of_an_out_of_range_request_is_the_bin_it_chose(a: float) -> None:
    env = make_env(budget=1.0)
    env.reset(seed=0)
    obs, _, _, _, info = env.step(np.array([a], dtype=np.float32))
    applied = float(info["action"][0])
    assert -1.0 <= applied <= 1.0
    assert action_to_index(applied, len(env.config.w_bits)) == action_to_index(a, len(env.config.w_bits))
    assert obs[OBS_FEATURES.index("previous_action")] == pytest.approx((applied + 1) / 2)
