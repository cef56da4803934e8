"""Thread choice: the cores this process may use, and the count a probe measures fastest."""

from __future__ import annotations

import pytest
import torch

from hwsearch import cores


def test_available_cores_and_candidates() -> None:
    n = cores.available_cores()
    assert n >= 1
    assert cores.thread_candidates(1) == (1,)
    assert cores.thread_candidates(8) == (1, 8)
    assert cores.thread_candidates() == ((1,) if n == 1 else (1, n))


def test_fastest_threads_picks_what_the_probe_measures_and_restores_torch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clock = {"t": 0.0}
    cost = {1: 3.0, 4: 1.0, 8: 2.0}  # seconds a probe takes under each thread count

    def fake_time() -> float:
        return clock["t"]

    def probe() -> None:
        clock["t"] += cost[torch.get_num_threads()]

    monkeypatch.setattr(cores.time, "perf_counter", fake_time)
    before = torch.get_num_threads()
    assert cores.fastest_threads(probe, (1, 4, 8)) == 4
    assert torch.get_num_threads() == before
    cost[4] = 3.0  # a tie goes to fewer threads
    assert cores.fastest_threads(probe, (1, 4)) == 1
    assert cores.fastest_threads(probe, (1,)) == 1


def test_thread_count_changes_no_figure(checkpoint) -> None:  # type: ignore[no-untyped-def]
    """The premise of choosing threads by speed: clean and robust accuracy are the same at 1 and 2 threads."""
    from hwsearch.evaluate import Evaluator, EvaluatorConfig
    from hwsearch.policy import Policy
    from hwsearch.robust import search_attacks
    from hwsearch.workflow import prepare

    ws = prepare(checkpoint)
    x, y = ws.split("val", 300)
    config = EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=3)), robust_subset=100, cache=False)
    policy = Policy({n: (3 + i % 5, 2 + i % 6) for i, n in enumerate(ws.layer_names)}, {})
    before = torch.get_num_threads()
    figures = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            figures.append(Evaluator(ws.model, ws.calibration, x, y, config).evaluate(policy))
    finally:
        torch.set_num_threads(before)
    assert figures[0] == figures[1]


@pytest.mark.parametrize(
    ("cores_n", "probe", "evaluation", "episodes", "expected", "timed"),
    [
        (1, {1: 1.0}, {}, 300, (1, 1, 1), []),  # one core: nothing to choose
        (4, {1: 4.0, 4: 1.05}, {4: 1.0, 1: 3.9}, 300, (1, 4, 1), [4, 1]),  # threads scale almost perfectly
        (2, {1: 1.73, 2: 1.0}, {2: 2.61, 1: 3.95}, 300, (1, 1, 2), [2, 1]),  # the probe overstates them (resnet20)
        (4, {1: 1.0, 4: 0.5}, {4: 1.0, 1: 4.0}, 300, (1, 4, 1), [4, 1]),  # the probe understates the evaluation's
        (4, {1: 1.0, 4: 0.8}, {1: 1.0, 4: 0.8}, 300, (1, 1, 4), [4, 1]),  # threads barely help: a shard per core
        (4, {1: 1.0, 4: 0.8}, {4: 0.8}, 2, (1, 4, 1), [4]),  # ... unless the search is too short to repay workers
        (2, {1: 1.0, 2: 1.3}, {1: 1.0}, 1, (1, 1, 1), [1]),  # two threads slower than one (a loaded machine)
    ],
)
def test_choose_parallelism_follows_what_it_measures(  # type: ignore[no-untyped-def]
    monkeypatch, cores_n, probe, evaluation, episodes, expected, timed
) -> None:
    monkeypatch.setattr(cores, "probe_seconds", lambda fn, counts, repeats=2: {n: probe[n] for n in counts})
    asked: list[int] = []

    def evaluation_s(threads: int) -> float:
        asked.append(threads)
        return evaluation[threads]

    choice = cores.choose_parallelism(lambda: None, evaluation_s, episodes, cores=cores_n)
    assert (choice.n_envs, choice.threads, choice.shards) == expected
    assert choice.reason
    assert asked == timed  # the probe's faster count first; the other only when the choice matters


@pytest.mark.parametrize(
    ("evaluation", "shard_s", "expected", "timed_shards"),
    [
        ({2: 2.60, 1: 4.28}, 2.46, (1, 1, 2), True),  # resnet20: threads 1.65x, shards 1.74x
        ({2: 0.61, 1: 0.86}, 0.64, (1, 2, 1), True),  # smallcnn on a busy machine: shards lose
        ({2: 1.0, 1: 1.95}, 0.1, (1, 2, 1), False),  # threads scale almost perfectly: shards not started
    ],
)
def test_choose_parallelism_times_shards_when_it_can(  # type: ignore[no-untyped-def]
    monkeypatch, evaluation, shard_s, expected, timed_shards
) -> None:
    monkeypatch.setattr(cores, "probe_seconds", lambda fn, counts, repeats=2: {1: 1.0, 2: 0.6})
    asked: list[str] = []

    def sharded_s() -> float:
        asked.append("shards")
        return shard_s

    choice = cores.choose_parallelism(lambda: None, evaluation.__getitem__, 300, cores=2, sharded_s=sharded_s)
    assert (choice.n_envs, choice.threads, choice.shards) == expected
    assert (asked == ["shards"]) == timed_shards
    if timed_shards:
        assert f"{shard_s:.2f} s on 2 one-thread shards" in choice.reason


def test_probe_seconds_times_each_count_and_restores_torch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clock = {"t": 0.0}
    monkeypatch.setattr(cores.time, "perf_counter", lambda: clock["t"])

    def probe() -> None:
        clock["t"] += {1: 2.0, 2: 1.5}[torch.get_num_threads()]

    before = torch.get_num_threads()
    assert cores.probe_seconds(probe, (1, 2)) == {1: 2.0, 2: 1.5}
    assert torch.get_num_threads() == before


def test_search_and_compare_choose_threads_unless_told(checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Nothing set: the job measures shards against threads and the summary and job.json say what it chose;
    ``--threads`` / ``--n-envs`` set: used as given."""
    import json

    from hwsearch import job_compute
    from hwsearch.cli import main
    from hwsearch.errors import ConfigError
    from hwsearch.job import SearchJobConfig
    from hwsearch.pipelines import CompareConfig, ModelSource

    chosen: list[int] = []
    probed: list[tuple[int, ...]] = []

    def fake_choose(probe, evaluation_s, episodes, cores=None, worker_start_s=0.0, sharded_s=None):  # type: ignore[no-untyped-def]
        probe()  # the probe runs the model
        assert evaluation_s(1) >= 0.0 and evaluation_s(2) >= 0.0  # the reference evaluation can be timed
        assert sharded_s is not None and sharded_s() > 0.0  # and timed on shards, which the search then uses
        chosen.append(episodes)
        return cores_mod.Parallelism(1, 1, "fake: shards win", shards=2)

    def fake_fastest(probe, candidates=None, repeats=2):  # type: ignore[no-untyped-def]
        probed.append(tuple(candidates or cores.thread_candidates()))
        return 1

    cores_mod = cores
    monkeypatch.setattr(job_compute, "choose_parallelism", fake_choose)
    monkeypatch.setattr(cores, "fastest_threads", fake_fastest)
    before = torch.get_num_threads()
    try:
        args = ["search", "--checkpoint", str(checkpoint), "--episodes", "4", "--warmup", "2", "--quiet"]
        assert main([*args, "--backend", "serial", "--out", str(tmp_path / "a")]) == 0
        assert chosen == [4]
        assert (
            "Parallelism: 2 shards, 1 torch thread each (fake: shards win)"
            in (tmp_path / "a" / "summary.md").read_text()
        )
        saved = json.loads((tmp_path / "a" / "config" / "job.json").read_text())
        assert json.dumps(saved).count('"shards": 2') == 1  # resolved before it is saved: a resume keeps it
        assert main([*args, "--out", str(tmp_path / "b"), "--threads", "1"]) == 0
        assert chosen == [4] and not probed  # told: nothing measured
        assert "Torch threads: 1, as asked (--threads)." in (tmp_path / "b" / "summary.md").read_text()
        assert main([*args, "--out", str(tmp_path / "c"), "--n-envs", "1"]) == 0
        assert chosen == [4] and len(probed) == 1  # one env asked for: only the thread count is measured
        assert "Torch threads: 1, the faster of" in (tmp_path / "c" / "summary.md").read_text()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        SearchJobConfig(checkpoint=str(checkpoint), threads=0)
    with pytest.raises(ConfigError, match="threads"):
        CompareConfig(source=ModelSource(checkpoint=str(checkpoint)), threads=0)
