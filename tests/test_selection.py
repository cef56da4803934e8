"""The final pick: the best policies re-scored on fresh images, so the search's winner's curse does not choose."""

from __future__ import annotations

from pathlib import Path

import pytest
from hwsearch.envs import EnvConfig

from hwsearch.errors import ConfigError
from hwsearch.job import SearchJobConfig, run_search_job
from hwsearch.policy import Policy, uniform_policy
from hwsearch.policy_formats import load_policy
from hwsearch.search import EpisodeRecord, SearchConfig, SearchResult
from hwsearch.selection import final_pick, select_policy, top_records
from tests.fakes import fake_layers

NAMES = [ly.name for ly in fake_layers()]


def _record(episode: int, bits: int, reward: float, accuracy: float, robust: float | None = None) -> EpisodeRecord:
    return EpisodeRecord(
        episode=episode,
        policy=uniform_policy(NAMES, bits),
        reward=reward,
        accuracy=accuracy,
        robust_accuracy=robust,
        latency_ms=1.0,
        energy_mj=None,
        size_bits=100.0,
        relative_cost=0.5,
    )


def _result(records: list[EpisodeRecord]) -> SearchResult:
    return SearchResult(SearchConfig(episodes=len(records), warmup_episodes=1), records)


def test_top_records_are_distinct_policies_best_reward_first_ties_to_the_earlier_episode() -> None:
    recs = [_record(0, 4, 0.1, 0.9), _record(1, 5, 0.3, 0.9), _record(2, 4, 0.5, 0.9), _record(3, 6, 0.3, 0.9)]
    assert [r.episode for r in top_records(_result(recs), 3)] == [2, 1, 3]
    # a policy seen twice is one candidate, at its best-reward episode
    assert [r.episode for r in top_records(_result(recs), 10)] == [2, 1, 3]


@pytest.mark.parametrize("top", [1, 2, 3])
def test_the_pick_is_the_best_reward_on_accuracy_pooled_over_both_image_sets(top: int) -> None:
    # search-val (100 images): episode 0 looks best; on 300 fresh images it is 3 points worse than episode 1
    recs = [_record(0, 3, 0.20, 0.97), _record(1, 4, 0.10, 0.96), _record(2, 5, -0.5, 0.90)]
    fresh = {3: 0.93, 4: 0.96, 5: 0.99, 8: 0.95}
    config = EnvConfig(w_acc=10.0, acc_ref=0.95)

    def fresh_accuracy(policy: Policy) -> float:
        return fresh[policy[NAMES[0]].w]

    sel = select_policy(
        _result(recs), config, fresh_accuracy, uniform_policy(NAMES, 8), top=top, val_images=100, fresh_images=300
    )
    assert [c.record.episode for c in sel.candidates] == [0, 1, 2][:top]
    assert sel.reference_pooled_accuracy == pytest.approx((95 + 285) / 400)
    pooled = {0: (97 + 279) / 400, 1: (96 + 288) / 400, 2: (90 + 297) / 400}
    for c in sel.candidates:
        assert c.pooled_accuracy == pytest.approx(pooled[c.record.episode])
        assert c.reward == pytest.approx(10.0 * (pooled[c.record.episode] - (95 + 285) / 400))
    assert sel.pick.record.episode == (0 if top == 1 else 1 if top == 2 else 2)
    assert "picked" in sel.to_markdown()


def test_the_floor_is_charged_against_the_pooled_reference() -> None:
    recs = [_record(0, 3, 0.2, 0.97), _record(1, 4, 0.1, 0.96)]
    config = EnvConfig(w_acc=10.0, acc_ref=0.95, max_acc_drop=0.0, w_floor=100.0)
    sel = select_policy(
        _result(recs),
        config,
        lambda p: {3: 0.90, 4: 0.96, 8: 0.95}[p[NAMES[0]].w],
        uniform_policy(NAMES, 8),
        top=2,
        val_images=100,
        fresh_images=100,
    )
    first = sel.candidates[0]  # pooled 0.935 against 0.95: below the floor by 1.5 points
    assert first.reward == pytest.approx(10.0 * (0.935 - 0.95) - 100.0 * 0.015)
    assert sel.pick.record.episode == 1
    assert sel.floor == pytest.approx(0.95) and not sel.pick_below_floor and "Warning" not in sel.to_markdown()


def test_a_pick_below_the_floor_on_the_pooled_images_is_flagged() -> None:
    recs = [_record(0, 3, 0.2, 0.97), _record(1, 4, 0.1, 0.96)]
    config = EnvConfig(w_acc=10.0, acc_ref=0.95, max_acc_drop=0.005)
    fresh = {3: 0.90, 4: 0.92, 8: 0.95}
    sel = select_policy(
        _result(recs),
        config,
        lambda p: fresh[p[NAMES[0]].w],
        uniform_policy(NAMES, 8),
        top=2,
        val_images=100,
        fresh_images=100,
    )
    # pooled: 0.935 and 0.94 against a floor of 0.95 - 0.005
    assert sel.floor == pytest.approx(0.945) and sel.pick_below_floor
    assert "Warning: the pick's pooled accuracy 94.00% is below the accuracy floor (94.50%" in sel.to_markdown()


@pytest.mark.parametrize(("top", "images"), [(0, 10), (-1, 10), (2, 0)])
def test_bad_pick_settings_are_refused(top: int, images: int) -> None:
    recs = [_record(0, 3, 0.2, 0.97)]
    with pytest.raises(ConfigError):
        select_policy(
            _result(recs),
            EnvConfig(),
            lambda p: 0.5,
            uniform_policy(NAMES, 8),
            top=top,
            val_images=10,
            fresh_images=images,
        )


@pytest.mark.parametrize("kwargs", [{"top": 0}, {"top": 5, "trained_on_train": True}])
def test_without_a_pick_the_best_reward_is_handed_over(kwargs: dict) -> None:
    result = _result([_record(0, 3, 0.2, 0.97), _record(1, 4, 0.1, 0.96)])
    note = final_pick(None, None, result, images=10, **kwargs)  # type: ignore[arg-type]  # neither is read
    assert result.picked is None and result.chosen.episode == 0 and "best search reward" in note


def test_a_search_job_writes_the_pick(checkpoint: Path, tmp_path: Path) -> None:
    search = SearchConfig(episodes=6, warmup_episodes=6, hidden=(16, 16), seed=1)
    job = SearchJobConfig(
        checkpoint=str(checkpoint),
        target="bitfusion-edge",
        budget="latency=0.5x",
        search=search,
        select_top=3,
        select_images=500,
    )
    done = run_search_job(job, tmp_path / "run")
    assert done is not None and done.result.picked is not None
    assert done.best is done.result.picked
    assert load_policy(done.policy_path) == done.best.policy
    top3 = {r.policy.key() for r in top_records(done.result, 3)}
    assert done.best.policy.key() in top3
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "## The pick" in summary and summary.count("| picked |") == 1
    assert done.result.notes["pick"] == {"candidates": 3, "below_floor": False}  # no floor was asked for
