"""benchmarks.robust_fidelity's inputs: estimate names, and reusing an earlier run's strong figures only when
that run measured the same thing; search_speed's records kept by --merge."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.robust_fidelity import parse_estimate, strong_rows, strong_set


@pytest.mark.parametrize(("text", "expected"), [("5x200", (5, 200)), ("10x100", (10, 100)), (" 1x1 ", (1, 1))])
def test_parse_estimate(text: str, expected: tuple[int, int]) -> None:
    assert parse_estimate(text) == expected


@pytest.mark.parametrize("text", ["5", "0x100", "5x0", "5*200", "pgd5x200", "-1x2"])
def test_parse_estimate_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="STEPSxIMAGES"):
        parse_estimate(text)


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"eps": 0.1, "strong_steps": 20, "strong_images": 200, **kw})


def _results(tmp_path: Path, args: argparse.Namespace) -> Path:
    rec = {
        "model": "m",
        "seconds": {"strong": 12.0, "pgd10x200": 3.0},
        "estimates": {"pgd10x200": {"spearman": 0.9}},
        "rows": [{"policy": "W8A8", "bits": {"a": [8, 8]}, "val_accuracy": 0.9, "strong": 0.5, "pgd10x200": 0.6}],
    }
    meta = {"command": "python -m benchmarks.robust_fidelity", "commit": "c" * 40, "date": "2026-12-01"}
    path = tmp_path / "robust_fidelity.json"
    path.write_text(json.dumps({"meta": meta, "strong_set": strong_set(args), "records": [rec]}))
    return path


def test_strong_rows_returns_rows_estimates_and_the_measuring_run(tmp_path: Path) -> None:
    path = _results(tmp_path, _args())
    rows, estimates, source = strong_rows(path, "m", strong_set(_args()))
    assert rows["W8A8"]["strong"] == 0.5
    assert estimates == {"pgd10x200": {"spearman": 0.9}}
    assert source["commit"] == "c" * 40 and source["seconds"]["strong"] == 12.0


@pytest.mark.parametrize(
    ("model", "now", "message"),
    [
        ("m", _args(strong_images=100), "strong set is"),  # another strong set: its figures do not apply
        ("m", _args(eps=0.2), "strong set is"),
        ("other", _args(), "no record of other"),
    ],
)
def test_strong_rows_refuses_what_another_run_measured(
    tmp_path: Path, model: str, now: argparse.Namespace, message: str
) -> None:
    path = _results(tmp_path, _args())
    with pytest.raises(SystemExit, match=message):
        strong_rows(path, model, strong_set(now))


def test_search_speed_names_the_run_of_a_kept_record() -> None:
    from benchmarks.search_speed import kept_lines

    run = {"command": "python -m benchmarks.search_speed", "commit": "a" * 40, "date": "2026-12-02T00:00:00"}
    records = [{"model": "smallcnn", "kept_from": {**run, "load_average_1min": {"start": 0.9}}}, {"model": "resnet20"}]
    (line,) = kept_lines(records)
    assert "smallcnn: kept from `python -m benchmarks.search_speed` at aaaaaaaa, 2026-12-02" in line
