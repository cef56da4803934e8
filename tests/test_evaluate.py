"""The Evaluator: cached by policy, fixed robust subset, optional per-episode fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwsearch.errors import ConfigError
from hwsearch.evaluate import CPU_BATCH, Evaluator, EvaluatorConfig, correct_mask, default_batch
from hwsearch.quant import apply_policy
from hwsearch.robust import search_attacks
from hwsearch.workflow import prepare


@pytest.fixture(scope="module")
def ws(checkpoint: Path):  # type: ignore[no-untyped-def]
    return prepare(checkpoint)


def test_cache_returns_the_same_result_without_reevaluating(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 300)
    ev = Evaluator(ws.model, ws.calibration, x, y)
    a = ev.evaluate(ws.uniform(4))
    spent = ev.timings.accuracy
    b = ev.evaluate(ws.uniform(4))
    assert a == b and ev.timings.hits == 1 and ev.timings.calls == 2 and ev.timings.accuracy == spent
    assert ev.evaluate(ws.uniform(8)).accuracy >= ev.evaluate(ws.uniform(2)).accuracy
    assert a.robust_accuracy is None


def test_robust_figure_is_worst_case_on_a_fixed_subset(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 300)
    cfg = EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=3)), robust_subset=50, seed=1)
    ev1 = Evaluator(ws.model, ws.calibration, x, y, cfg)
    ev2 = Evaluator(ws.model, ws.calibration, x, y, cfg)
    r1, r2 = ev1.evaluate(ws.uniform(3)), ev2.evaluate(ws.uniform(3))
    assert r1 == r2  # same images, same random starts
    assert ev1.x_rob.shape[0] == 50
    assert 0.0 <= r1.robust_accuracy <= min(r1.per_attack.values()) + 1e-9


def test_episode_finetune_recovers_low_bit_accuracy(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 500)
    plain = Evaluator(ws.model, ws.calibration, x, y).evaluate(ws.uniform(2, 2))
    cfg = EvaluatorConfig(finetune_steps=30, seed=0)
    tuned_ev = Evaluator(ws.model, ws.calibration, x, y, cfg, train_data=ws.split("train"))
    tuned = tuned_ev.evaluate(ws.uniform(2, 2))
    assert tuned.accuracy > plain.accuracy
    assert not any(p.grad is not None for p in ws.model.parameters())  # the float model is untouched
    with pytest.raises(ConfigError, match="train_data"):
        Evaluator(ws.model, ws.calibration, x, y, cfg)


@pytest.mark.parametrize("batch", [None, 1, 37, 1000])
def test_clean_verdicts_do_not_depend_on_the_batch(ws, batch: int | None) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 300)
    q = apply_policy(ws.model, ws.uniform(4), ws.calibration)
    one_batch = correct_mask(q, x, y, 300)
    assert bool((correct_mask(q, x, y, batch) == one_batch).all())
    assert default_batch("cpu") == CPU_BATCH and default_batch("cuda") > CPU_BATCH


@pytest.mark.parametrize("steps,images", [(2, 40), (5, 100)])
def test_search_estimate_equals_the_report_attack_configured_alike(ws, steps: int, images: int) -> None:  # type: ignore[no-untyped-def]
    from hwsearch.robust import robust_accuracy

    x, y = ws.split("val", 300)
    attacks = tuple(search_attacks(0.1, steps=steps))
    ev = Evaluator(ws.model, ws.calibration, x, y, EvaluatorConfig(attacks=attacks, robust_subset=images, seed=3))
    policy = ws.uniform(4)
    got = ev.evaluate(policy)
    q = apply_policy(ws.model, policy, ws.calibration).eval()
    ref = robust_accuracy(
        q, ev.x_rob, ev.y_rob, list(attacks), source_model=ws.model, seed=3, cascade=True, sample_ids=ev.robust_ids
    )
    assert got.robust_accuracy == ref.worst and got.per_attack == ref.per_attack
    again = Evaluator(ws.model, ws.calibration, x, y, EvaluatorConfig(attacks=attacks, robust_subset=images, seed=3))
    assert again.evaluate(policy) == got  # a fresh evaluator, the same seed: the same reward inputs


def test_seconds_to_evaluate_recomputes_and_keeps_the_cached_result(checkpoint) -> None:  # type: ignore[no-untyped-def]
    """The parallelism choice times a cached policy again; the cache must keep the result it had."""
    from hwsearch.evaluate import Evaluator, EvaluatorConfig
    from hwsearch.workflow import prepare

    ws = prepare(checkpoint)
    x, y = ws.split("val", 200)
    ev = Evaluator(ws.model, ws.calibration, x, y, EvaluatorConfig())
    policy = ws.uniform(4)
    first = ev.evaluate(policy)
    calls = ev.timings.calls
    assert ev.seconds_to_evaluate(policy) > 0.0
    assert ev.timings.calls == calls + 1 and ev.timings.hits == 0  # computed, not answered from the cache
    assert ev.cached()[policy.key()] == first == ev.evaluate(policy)
