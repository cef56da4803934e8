"""Sharded evaluation: one policy scored by several processes, each on its share of the images, exactly as one
process scores it; and a sharded search is the one-process search."""

from __future__ import annotations

import csv
import pickle
import random
from pathlib import Path

import pytest
import torch

from hwsearch.errors import ConfigError, HwsearchError, PolicyError
from hwsearch.evaluate import Counts, Evaluator, EvaluatorConfig
from hwsearch.evaluate_shards import ShardedEvaluator, shard_positions
from hwsearch.policy import Policy
from hwsearch.robust import AttackConfig, robust_accuracy, search_attacks
from hwsearch.robust.attacks import image_starts
from hwsearch.workflow import prepare


@pytest.fixture(scope="module")
def ws(checkpoint: Path):  # type: ignore[no-untyped-def]
    return prepare(checkpoint)


def _policies(ws, n: int, seed: int = 0) -> list[Policy]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    mixes = [Policy({name: (rng.randint(2, 8), rng.randint(2, 8)) for name in ws.layer_names}, {}) for _ in range(n)]
    return [ws.uniform(8), ws.uniform(2), *mixes]


@pytest.mark.parametrize(("n", "robust", "shards"), [(10, 4, 2), (11, 5, 3), (7, 7, 4), (5, 0, 2)])
def test_shard_positions_partition_the_images_and_deal_the_attacked_ones_evenly(
    n: int, robust: int, shards: int
) -> None:
    rob = torch.randperm(n, generator=torch.Generator().manual_seed(n))[:robust]
    parts = shard_positions(n, rob, shards)
    assert len(parts) == shards
    assert sorted(torch.cat(parts).tolist()) == list(range(n))  # every image once
    per_shard = [int(torch.isin(p, rob).sum()) for p in parts]
    assert sum(per_shard) == robust and max(per_shard) - min(per_shard) <= 1


def test_image_starts_depend_only_on_the_image_id_and_stay_in_the_ball() -> None:
    cfg = AttackConfig("pgd", 0.1, 3)
    ids = torch.tensor([5, 2, 9, 7])
    all_four = image_starts(ids, 2, (1, 4, 4), cfg, seed=3)
    assert all_four.shape == (2, 4, 1, 4, 4)
    assert all_four.abs().max() <= 0.1
    # the same image gets the same start alone, in another batch, in another order
    assert torch.equal(image_starts(ids[[2]], 2, (1, 4, 4), cfg, seed=3)[:, 0], all_four[:, 2])
    assert torch.equal(image_starts(ids.flip(0), 2, (1, 4, 4), cfg, seed=3).flip(1), all_four)
    assert not torch.equal(image_starts(ids, 2, (1, 4, 4), cfg, seed=4), all_four)  # the seed matters
    assert not torch.equal(all_four[:, 0], all_four[:, 1])  # and so does the id
    l2 = AttackConfig("pgd", 0.5, 3, norm="l2")
    assert image_starts(ids, 1, (1, 4, 4), l2, seed=3).flatten(2).norm(dim=2).max() <= 0.5 + 1e-6


def test_robust_accuracy_of_a_split_adds_up_to_the_whole(ws) -> None:  # type: ignore[no-untyped-def]
    """Any split of the images, scored with their ids, gives the same per-image verdicts as all at once."""
    from hwsearch.quant import apply_policy

    x, y = ws.split("val", 120)
    q = apply_policy(ws.model, ws.uniform(3), ws.calibration).eval()
    attacks = list(search_attacks(0.1, steps=3))
    whole = robust_accuracy(q, x, y, attacks, seed=2, cascade=True)
    ids = torch.arange(len(x))
    halves = [ids[::2], ids[1::2]]
    parts = [robust_accuracy(q, x[h], y[h], attacks, seed=2, cascade=True, sample_ids=h, batch_size=17) for h in halves]
    assert sum(round(p.worst * p.n) for p in parts) == round(whole.worst * whole.n)
    for label in whole.per_attack:
        assert sum(round(p.per_attack[label] * p.n) for p in parts) == round(whole.per_attack[label] * whole.n)


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_evaluator_gives_the_one_process_figures(ws, shards: int) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 300)
    config = EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=3)), robust_subset=60, seed=1)
    one = Evaluator(ws.model, ws.calibration, x, y, config)
    many = ShardedEvaluator(ws.model, ws.calibration, x, y, config, shards=shards)
    try:
        for policy in _policies(ws, 3):
            assert many.evaluate(policy) == one.evaluate(policy), policy
        assert many.timings.calls == 5 and many.timings.hits == 0
        assert many.evaluate(ws.uniform(8)) == one.evaluate(ws.uniform(8)) and many.timings.hits == 1  # cached
        assert many.timings.attack > 0 and many.timings.accuracy > 0
    finally:
        many.close()
    assert not many._procs
    clean_only = ShardedEvaluator(ws.model, ws.calibration, x, y, EvaluatorConfig(), shards=shards)
    try:
        got = clean_only.evaluate(ws.uniform(4))
        assert got == Evaluator(ws.model, ws.calibration, x, y).evaluate(ws.uniform(4))
        assert got.robust_accuracy is None
    finally:
        clean_only.close()


def test_shards_score_the_kernels_export_s_roundings_as_one_process_does(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 200)
    config = EvaluatorConfig(export_style="kernels")
    one = Evaluator(ws.model, ws.calibration, x, y, config, range_images=ws.split("train", 128)[0])
    many = ShardedEvaluator.from_evaluator(one, 2)
    try:
        for policy in _policies(ws, 1):
            assert many.evaluate(policy) == one.evaluate(policy), policy
    finally:
        many.close()


def test_the_deal_splits_the_hard_images_evenly_and_learns_from_each_evaluation(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 200)
    config = EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=3)), robust_subset=40, seed=1)
    many = ShardedEvaluator(ws.model, ws.calibration, x, y, config, shards=2)
    candidates = torch.arange(40)
    assert [d.tolist() for d in many.deal(candidates)] == [list(range(0, 40, 2)), list(range(1, 40, 2))]
    many._hardness[torch.tensor([1, 3, 5, 7])] = 2.0  # four hard images, all at odd positions
    deals = many.deal(candidates)
    assert sorted(torch.cat(deals).tolist()) == list(range(40))  # every candidate once
    assert [len(set(d.tolist()) & {1, 3, 5, 7}) for d in deals] == [2, 2]  # dealing by position gave one all four
    try:
        many.evaluate(ws.uniform(4))
    finally:
        many.close()
    assert float(many._hardness.max()) > 0.0  # the evaluation's survivors rank first next time


def test_from_evaluator_keeps_the_cache_and_the_subset(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 200)
    config = EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=2)), robust_subset=40, seed=5)
    one = Evaluator(ws.model, ws.calibration, x, y, config)
    known = one.evaluate(ws.uniform(6))
    many = ShardedEvaluator.from_evaluator(one, 2)
    try:
        assert many.evaluate(ws.uniform(6)) is known and not many._procs  # a cache hit starts no worker
        assert torch.equal(many.robust_ids, one.robust_ids)
        assert many.evaluate(ws.uniform(5)) == one.evaluate(ws.uniform(5))
    finally:
        many.close()


def test_counts_add_up_to_fractions_over_all_images() -> None:
    a = Counts(correct=7, images=10, robust=2, robust_images=4, per_attack={"p": 3})
    b = Counts(correct=5, images=10, robust=1, robust_images=4, per_attack={"p": 2})
    r = (a + b).result()
    assert (r.accuracy, r.robust_accuracy, dict(r.per_attack)) == (0.6, 3 / 8, {"p": 5 / 8})
    assert Counts(3, 4).result().robust_accuracy is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": EvaluatorConfig(finetune_steps=2)}, "fine-tuning"),
        ({"config": EvaluatorConfig(attacks=(AttackConfig("square", 0.1, 10),))}, "square"),
        ({"shards": 0}, "shards"),
    ],
)
def test_what_shards_cannot_run_is_refused_up_front(ws, kwargs, message: str) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 50)
    args = {"shards": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        ShardedEvaluator(ws.model, ws.calibration, x, y, **args)


def test_a_bad_policy_fails_in_the_driver_and_the_workers_are_not_pickled(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 50)
    many = ShardedEvaluator(ws.model, ws.calibration, x, y, shards=2)
    with pytest.raises(PolicyError):
        many.evaluate(Policy({"no.such.layer": (4, 4)}, {}))
    assert not many._procs  # refused before any worker started
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(many)


def test_a_worker_that_dies_is_reported_in_one_line(ws) -> None:  # type: ignore[no-untyped-def]
    x, y = ws.split("val", 50)
    many = ShardedEvaluator(ws.model, ws.calibration, x, y, shards=2)
    try:
        many.evaluate(ws.uniform(8))
        many._procs[1].kill()
        many._procs[1].join()
        with pytest.raises(HwsearchError, match="shard 1 stopped.*--shards 1"):
            many.evaluate(ws.uniform(4))
        assert not many._procs  # the rest were stopped; the next evaluation starts afresh
        assert many.evaluate(ws.uniform(4)) == Evaluator(ws.model, ws.calibration, x, y).evaluate(ws.uniform(4))
    finally:
        many.close()


@pytest.mark.slow
def test_a_sharded_search_plays_the_one_process_episodes(checkpoint: Path, tmp_path: Path) -> None:
    from hwsearch.cli import main

    args = ["search", "--checkpoint", str(checkpoint), "--episodes", "6", "--warmup", "3", "--quiet"]
    args += ["--robust-weight", "1", "--steps", "2", "--robust-images", "40", "--budget", "latency=0.6x"]
    assert main([*args, "--shards", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--shards", "2", "--out", str(tmp_path / "two")]) == 0

    def rows(folder: str) -> list[dict[str, str]]:
        with open(tmp_path / folder / "episodes.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    assert rows("one") == rows("two")
    assert (
        "Parallelism: 2 shards, 1 torch thread each, as asked (--shards)."
        in (tmp_path / "two" / "summary.md").read_text()
    )
