"""A user sees at a glance whether the agent learned: the learning-curve PNG and the summary's figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from hwsearch.envs import EnvConfig, MixedPrecisionEnv

from hwsearch.budget import Budget
from hwsearch.plots import learning_curve_series, plot_learning_curve
from hwsearch.policy import uniform_policy
from hwsearch.report import EpisodeLog, learning_figures, read_episode_log, search_summary
from hwsearch.search import EpisodeRecord, SearchConfig, SearchResult, run_search
from tests.fakes import FakeCostModel, FakeEvaluator, fake_layers

SERIES = {
    "reward",
    "running best",
    "moving mean (20)",
    "requested cost",
    "enforced cost",
    "exploration sigma",
}
NAMES = [ly.name for ly in fake_layers()]


def _fake_result(
    rewards: list[float], warmup: int, agent: str = "ddpg", costs: list[float] | None = None
) -> SearchResult:
    eps = [
        EpisodeRecord(
            episode=i,
            policy=uniform_policy(NAMES, 2 + i % 7),
            reward=r,
            accuracy=0.9,
            robust_accuracy=None,
            latency_ms=1.0,
            energy_mj=None,
            size_bits=100.0,
            relative_cost=0.5 if costs is None else costs[i],
            requested_relative_cost=0.5 + 0.1 * (i % 3),
            noise_sigma=None if i < warmup else 0.99 ** (i - warmup),
        )
        for i, r in enumerate(rewards)
    ]
    return SearchResult(SearchConfig(episodes=len(eps), warmup_episodes=warmup, agent=agent), eps)


@pytest.mark.parametrize(
    ("rewards", "warmup", "phase", "best", "warm_mean", "last20"),
    [
        ([float(i) for i in range(10)], 4, "learned", 9, 1.5, 8.5),
        ([5.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0], 4, "warm-up", 0, 1.25, 1.5),
        ([1.0, 3.0, 2.0], 0, "learned", 1, None, 2.0),
    ],
)
def test_learning_figures(
    rewards: list[float], warmup: int, phase: str, best: int, warm_mean: float | None, last20: float
) -> None:
    f = learning_figures(_fake_result(rewards, warmup))
    assert (f["best_phase"], f["best_episode"], f["last20_mean"]) == (phase, best, pytest.approx(last20))
    assert f["warmup_mean"] == (None if warm_mean is None else pytest.approx(warm_mean))


@pytest.mark.parametrize(
    ("rewards", "costs", "best"),
    [
        ([1.0, 1.0, 1.0], [0.9, 0.7, 0.7], 1),  # equal reward: the cheaper, then the earlier
        ([1.0, 1.0 + 1e-12, 0.5], [0.9, 0.7, 0.1], 1),  # equal to REWARD_DECIMALS places is a tie
        ([1.0, 0.99, 1.0], [0.9, 0.1, 0.9], 0),  # a higher reward wins at any cost
    ],
)
def test_ties_go_to_the_cheaper_policy_then_the_earlier_episode(
    rewards: list[float], costs: list[float], best: int
) -> None:
    assert _fake_result(rewards, 0, costs=costs).best.episode == best


def test_summary_states_where_the_best_episode_falls() -> None:
    text = search_summary(
        _fake_result([5.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0], 4),
        device="fake",
        budget="latency=0.5x",
        budget_limit=1.0,
        reference={},
        timings={"total": 1.0},
    )
    assert "best episode 0 comes from the random warm-up (episodes 0-3)" in text
    assert "warm-up mean reward: 1.2500 (episodes 0-3)" in text
    assert "last 20% mean reward: 1.5000 (episodes 8-9)" in text


def test_the_curve_draws_every_named_series(tmp_path: Path) -> None:
    result = _fake_result([float(i % 5) for i in range(30)], 10)
    series = learning_curve_series(result.episodes)
    assert set(series) == SERIES
    assert series["running best"][-1] == 4.0 and series["moving mean (20)"][0] == 0.0
    drawn = plot_learning_curve(result.episodes, tmp_path / "curve.png", warmup_episodes=10, budget=0.5)
    assert drawn.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(drawn.series) >= SERIES and "budget" in drawn.series


def test_a_real_search_logs_what_the_curve_needs(tmp_path: Path) -> None:
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), FakeCostModel(), EnvConfig(budget=Budget("latency", 0.3)))
    cfg = SearchConfig(episodes=6, warmup_episodes=3, hidden=(16, 16), batch_size=8)
    log = EpisodeLog(tmp_path / "episodes.csv", NAMES)
    result = run_search(env, cfg, on_episode=log.append)
    assert [r.noise_sigma for r in result.episodes] == [None, None, None, 1.0, 0.99, pytest.approx(0.9801)]
    assert all(r.requested_relative_cost >= r.relative_cost for r in result.episodes)  # the walk only lowers
    assert any(r.requested_relative_cost > r.relative_cost for r in result.episodes)
    back = read_episode_log(tmp_path / "episodes.csv", NAMES)
    assert [r.noise_sigma for r in back] == pytest.approx([r.noise_sigma for r in result.episodes])
    assert [r.requested_relative_cost for r in back] == pytest.approx(
        [r.requested_relative_cost for r in result.episodes], abs=1e-4
    )


@pytest.mark.parametrize(
    ("rewards", "best"),
    [
        # the demo's tie: 10 * 0.005 + 5 * -0.01 and friends sum to neighbouring doubles, not one value
        ([0.5, 1.0800000000000001, 1.0799999999999998], 1),
        ([0.5, 1.0799999999999998, 1.0800000000000001], 1),
        ([1.08, 1.0800001], 1),  # a real difference above the tolerance still wins
        ([2.0, 2.0, 1.0], 0),
    ],
)
def test_best_breaks_float_noise_ties_towards_the_earlier_episode(rewards: list[float], best: int) -> None:
    assert _fake_result(rewards, 0).best.episode == best
