"""Thread choice: the cores this process may use, and the count a probe measures fastest."""

from __future__ import annotations

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


def test_search_and_compare_choose_threads_unless_told(checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``--threads`` unset: the job measures and the summary says what it chose; set: used as given."""
    import pytest

    from hwsearch.cli import main
    from hwsearch.errors import ConfigError
    from hwsearch.job import SearchJobConfig
    from hwsearch.pipelines import CompareConfig, ModelSource

    probed: list[tuple[int, ...]] = []

    def fake_fastest(probe, candidates=None, repeats=2):  # type: ignore[no-untyped-def]
        probe()  # the probe runs the model
        probed.append(tuple(candidates or cores.thread_candidates()))
        return 1

    monkeypatch.setattr(cores, "fastest_threads", fake_fastest)
    before = torch.get_num_threads()
    try:
        args = ["search", "--checkpoint", str(checkpoint), "--episodes", "2", "--warmup", "1", "--quiet"]
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
        assert len(probed) == 1
        assert "Torch threads: 1, the faster of" in (tmp_path / "a" / "summary.md").read_text()
        assert main([*args, "--out", str(tmp_path / "b"), "--threads", "1"]) == 0
        assert len(probed) == 1  # told: nothing measured
        assert "Torch threads: 1, as asked (--threads)." in (tmp_path / "b" / "summary.md").read_text()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        SearchJobConfig(checkpoint=str(checkpoint), threads=0)
    with pytest.raises(ConfigError, match="threads"):
        CompareConfig(source=ModelSource(checkpoint=str(checkpoint)), threads=0)
