"""The benchmarks' shared helpers that choose settings from results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks._common import faithful_estimate, search_estimate


def _fidelity(tmp_path: Path, estimates: dict[str, dict]) -> Path:
    path = tmp_path / "robust_fidelity.json"
    path.write_text(json.dumps({"records": [{"model": "m", "estimates": estimates}]}))
    return path


@pytest.mark.parametrize(
    ("estimates", "expected"),
    [
        (  # the cheapest faithful one wins
            {
                "pgd10x200": {"spearman": 0.97, "strong_best_in_top5": True, "seconds_per_policy": 5.0},
                "pgd5x100": {"spearman": 0.95, "strong_best_in_top5": True, "seconds_per_policy": 2.0},
            },
            (5, 100),
        ),
        (  # cheaper but below the bar: not taken
            {
                "pgd10x200": {"spearman": 0.93, "strong_best_in_top5": True, "seconds_per_policy": 8.0},
                "pgd5x100": {"spearman": 0.79, "strong_best_in_top5": True, "seconds_per_policy": 4.0},
            },
            (10, 200),
        ),
        (  # good rank correlation, but the strong set's best policy would be missed
            {"pgd3x50": {"spearman": 0.95, "strong_best_in_top5": False, "seconds_per_policy": 1.0}},
            None,
        ),
    ],
)
def test_faithful_estimate_is_the_cheapest_that_meets_the_bar(tmp_path, estimates, expected) -> None:  # type: ignore[no-untyped-def]
    path = _fidelity(tmp_path, estimates)
    assert faithful_estimate("m", path) == (expected or search_estimate())
    assert faithful_estimate("other", path) == search_estimate()  # a model the file does not hold
    assert faithful_estimate("m", tmp_path / "missing.json") == search_estimate()


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ([0.95, 0.50], (0.0, 0, 4)),
        ([0.95, 0.559], (5.9, 2, 4)),  # both after-configurations moved the second policy by 5.9 points
    ],
)
def test_search_speed_reports_how_far_clean_accuracy_moved(after: list[float], expected: tuple) -> None:
    from benchmarks.search_speed import clean_drift

    rows = lambda accs: [{"rows": [{"accuracy": a} for a in accs]}]  # noqa: E731
    rec = {"runs": {"before": rows([0.95, 0.50]), "after, 1 thread": rows(after), "after, 2 threads": rows(after)}}
    worst, n_diff, n = clean_drift(rec)
    assert (round(worst, 6), n_diff, n) == expected
