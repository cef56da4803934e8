"""The ILP baseline: the exact optimum of the additive problem it models, and only of that one."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hwsearch.envs import EnvConfig, EvalResult, MixedPrecisionEnv

from hwsearch.budget import Budget
from hwsearch.errors import BudgetError
from hwsearch.ilp import ilp_policy, measure_sensitivity, solve_ilp
from hwsearch.policy import Policy
from hwsearch.search import SearchConfig, run_search
from tests.fakes import FakeCostModel, fake_layers

BITS = (2, 4, 8)


def _brute(scores: np.ndarray, costs: np.ndarray, limit: float, pairs: np.ndarray | None = None) -> float:
    """The best summed score under ``limit`` by enumeration (``pairs[i, c, d]``: boundary costs, choices flat)."""
    n, n_w, n_a = scores.shape
    best = -np.inf
    for cells in itertools.product(range(n_w * n_a), repeat=n):
        c = np.asarray(cells)
        j, k = np.divmod(c, n_a)
        cost = costs[np.arange(n), j, k].sum()
        if pairs is not None:
            cost += sum(pairs[i, c[i - 1], c[i]] for i in range(1, n))
        if cost <= limit:
            best = max(best, float(scores[np.arange(n), j, k].sum()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tightness", [0.3, 0.6])
def test_solve_ilp_returns_the_brute_force_optimum(seed: int, tightness: float) -> None:
    rng = np.random.default_rng(seed)
    scores = -rng.uniform(0, 1, size=(4, 3, 3))
    costs = np.sort(rng.uniform(0.1, 1, size=(4, 3, 3)), axis=1)
    lo, hi = costs.min(axis=(1, 2)).sum(), costs.max(axis=(1, 2)).sum()
    limit = lo + tightness * (hi - lo)
    choice = solve_ilp(scores, costs, limit)
    idx = np.arange(4), choice[:, 0], choice[:, 1]
    assert costs[idx].sum() <= limit
    assert scores[idx].sum() == pytest.approx(_brute(scores, costs, limit), abs=1e-9)


def test_an_infeasible_budget_is_one_line() -> None:
    costs = np.ones((2, 2, 2))
    with pytest.raises(BudgetError, match="below the cost of the cheapest") as exc:
        solve_ilp(np.zeros((2, 2, 2)), costs, 1.5)
    assert "\n" not in str(exc.value)


class AdditiveEvaluator:
    """Accuracy loses a fixed, layer-specific amount per lowered weight or activation choice; with ``pair`` set,
    lowering both layers of the pair to 2-bit weights loses far more than the two single drops (an interaction)."""

    def __init__(self, names: list[str], seed: int = 0, pair: tuple[str, str] | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.names = names
        self.w_drop = {n: dict(zip(BITS, [*rng.uniform(0.01, 0.05, 2), 0.0], strict=True)) for n in names}
        self.a_drop = {n: dict(zip(BITS, [*rng.uniform(0.01, 0.05, 2), 0.0], strict=True)) for n in names}
        self.pair = pair
        if pair:  # alone, lowering either member of the pair is free
            for n in pair:
                self.w_drop[n] = {2: 0.0, 4: 0.0, 8: 0.0}
        self.calls = 0

    def evaluate(self, policy: Policy) -> EvalResult:
        self.calls += 1
        acc = 0.9 - sum(self.w_drop[n][policy[n].w] + self.a_drop[n][policy[n].a] for n in self.names)
        if self.pair and all(policy[n].w == 2 for n in self.pair):
            acc -= 0.3
        return EvalResult(accuracy=acc)


def _env(pair: tuple[str, str] | None = None, seed: int = 0, budget: float = 0.3) -> MixedPrecisionEnv:
    layers = fake_layers()[:4]
    ev = AdditiveEvaluator([ly.name for ly in layers], seed, pair)
    cfg = EnvConfig(budget=Budget("latency", budget), w_bits=BITS, a_bits=BITS, acc_ref=0.9)
    return MixedPrecisionEnv(layers, ev, FakeCostModel(), cfg)


def _best_reward(env: MixedPrecisionEnv) -> float:
    limit, best = env.budget_limit, -np.inf
    for cells in itertools.product(range(9), repeat=env.n_layers):
        choice = np.stack(np.divmod(np.asarray(cells), 3), axis=1)
        if env.cost_of(choice, "latency") <= limit:
            acc = env.evaluator.evaluate(env.policy_of(choice)).accuracy
            best = max(best, env.config.w_acc * (acc - env.config.acc_ref))
    return best


def _reward(env: MixedPrecisionEnv, policy: Policy) -> float:
    return env.config.w_acc * (env.evaluator.evaluate(policy).accuracy - env.config.acc_ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_ilp_policy_is_optimal_on_an_additive_env(seed: int) -> None:
    env = _env(seed=seed)
    sens = measure_sensitivity(env)
    assert sens.evaluations == 4 * (2 + 2) + 1 == env.evaluator.calls
    assert np.allclose(sens.weights[:, -1], 0) and (sens.weights[:, :-1] < 0).all()
    ilp = ilp_policy(env)
    assert env.cost_of(ilp.choice, "latency") <= env.budget_limit
    assert _reward(env, ilp.policy) == pytest.approx(_best_reward(env), abs=1e-9)
    assert ilp.predicted_score == pytest.approx(_reward(env, ilp.policy), abs=1e-9)  # additive: exact


def test_ilp_is_suboptimal_when_two_layers_interact() -> None:
    names = [ly.name for ly in fake_layers()[:4]]
    env = _env(pair=(names[2], names[3]), budget=0.25)
    ilp = ilp_policy(env)
    assert ilp.policy[names[2]].w == ilp.policy[names[3]].w == 2  # it believes lowering both is free
    actual = _reward(env, ilp.policy)
    assert actual < ilp.predicted_score - 2.0  # the interaction it cannot see
    assert actual < _best_reward(env) - 1.0


def test_the_ilp_agent_records_its_answer_as_one_episode() -> None:
    env = _env(seed=1)
    result = run_search(env, SearchConfig(episodes=50, agent="ilp"))
    assert len(result.episodes) == 1
    assert result.episodes[0].policy == ilp_policy(_env(seed=1)).policy
    assert result.notes["ilp"]["sensitivity_evaluations"] == 17
    assert result.episodes[0].reward == pytest.approx(_best_reward(_env(seed=1)), abs=1e-9)


@pytest.mark.slow
def test_the_cli_runs_the_ilp_and_warm_starts_from_it(checkpoint: Path, tmp_path: Path) -> None:
    from hwsearch.cli import main
    from hwsearch.report import read_episode_log
    from hwsearch.workflow import prepare

    argv = ["search", "--checkpoint", str(checkpoint), "--target", "bitfusion-edge", "--budget", "latency=0.95x"]
    argv += ["--min-bits", "6", "--hidden", "16", "16", "--quiet"]
    assert main([*argv, "--agent", "ilp", "--out", str(tmp_path / "ilp")]) == 0
    names = prepare(checkpoint).layer_names
    (ilp,) = read_episode_log(tmp_path / "ilp" / "episodes.csv", names)
    summary = (tmp_path / "ilp" / "summary.md").read_text()
    assert "comes from the ILP's answer" in summary and "sensitivity evaluations" in summary
    assert (tmp_path / "ilp" / "learning_curve.png").stat().st_size > 0
    warm = [*argv, "--episodes", "4", "--warmup", "2", "--init-policy", str(tmp_path / "ilp" / "policy.json")]
    assert main([*warm, "--init-from-ilp", "--out", str(tmp_path / "warm")]) == 0
    first = read_episode_log(tmp_path / "warm" / "episodes.csv", names)
    assert [r.policy for r in first[:2]] == [ilp.policy, ilp.policy] and len(first) == 4
    assert first[0].reward == pytest.approx(ilp.reward, abs=1e-6)
    assert "first 2 episode(s) requested the given policies" in (tmp_path / "warm" / "summary.md").read_text()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tightness", [0.2, 0.5])
def test_solve_ilp_with_boundary_costs_returns_the_brute_force_optimum(seed: int, tightness: float) -> None:
    """Pairwise boundary costs (some negative: integer neighbours that share a layout) enter the budget exactly."""
    rng = np.random.default_rng(seed)
    scores = -rng.uniform(0, 1, size=(4, 2, 2))
    costs = rng.uniform(0.1, 1, size=(4, 2, 2))
    pairs = rng.uniform(-0.3, 0.3, size=(4, 4, 4))
    pairs[0] = 0.0

    def total(c: tuple[int, ...]) -> float:
        j, k = np.divmod(np.asarray(c), 2)
        return float(costs[np.arange(4), j, k].sum() + sum(pairs[i, c[i - 1], c[i]] for i in range(1, 4)))

    totals = [total(c) for c in itertools.product(range(4), repeat=4)]
    limit = min(totals) + tightness * (max(totals) - min(totals))
    choice = solve_ilp(scores, costs, limit, pairs)
    flat = choice[:, 0] * 2 + choice[:, 1]
    cost = costs[np.arange(4), choice[:, 0], choice[:, 1]].sum() + sum(
        pairs[i, flat[i - 1], flat[i]] for i in range(1, 4)
    )
    assert cost <= limit
    assert scores[np.arange(4), choice[:, 0], choice[:, 1]].sum() == pytest.approx(
        _brute(scores, costs, limit, pairs), abs=1e-9
    )
    with pytest.raises(BudgetError, match="below the cost of the cheapest"):
        solve_ilp(scores, costs, min(totals) - 0.01, pairs)
