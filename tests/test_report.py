"""The compare report: gradient-free column in md/json/csv and the gradient-masking warning, on fake numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hwsearch.policy import uniform_policy
from hwsearch.records import CompareRow
from hwsearch.report import compare_records, compare_table, write_compare

NAMES = ["a", "b"]


def _row(name: str, figs: dict[str, float] | None) -> CompareRow:
    robust = {"0.1": figs} if figs is not None else {}
    return CompareRow(name, uniform_policy(NAMES, 4), 0.95, 1.0, 2.0, 1000, 2.0, None, robust)


MASKED = {"worst": 0.60, "pgd20-ste": 0.90, "pgd20-shadow": 0.85, "fgsm-ste": 0.92, "square200-margin": 0.60}
HONEST = {"worst": 0.70, "pgd20-ste": 0.72, "pgd20-shadow": 0.70, "fgsm-ste": 0.80, "square200-margin": 0.69}
SQUARE_WEAKER = {"worst": 0.50, "pgd20-ste": 0.50, "pgd20-shadow": 0.55, "fgsm-ste": 0.70, "square200-margin": 0.90}


@pytest.mark.parametrize(
    ("figs", "gap", "warn"), [(MASKED, 0.25, True), (HONEST, 0.01, False), (SQUARE_WEAKER, -0.40, False)]
)
def test_records_carry_the_gradient_free_column_gap_and_flag(figs: dict, gap: float, warn: bool) -> None:
    [rec] = compare_records([_row("p", figs)])
    assert rec["robust@0.1:square200-margin"] == figs["square200-margin"]
    assert rec["robust@0.1:masking_gap"] == pytest.approx(gap)
    assert rec["robust@0.1:masking_warning"] is warn


def test_rows_without_a_gradient_free_attack_get_no_flag() -> None:
    figs = {k: v for k, v in MASKED.items() if not k.startswith("square")}
    [rec] = compare_records([_row("p", figs)])
    assert not any("masking" in k for k in rec)
    assert "masking" not in compare_table([_row("p", figs)], "dev")


def test_markdown_names_exactly_the_flagged_policy(tmp_path: Path) -> None:
    rows = [_row("masked", MASKED), _row("honest", HONEST), _row("weaker", SQUARE_WEAKER)]
    md = compare_table(rows, "dev")
    assert "square200-margin @0.1" in md  # the per-attack table has the gradient-free column
    [note] = [line for line in md.splitlines() if line.startswith("Possible gradient masking")]
    assert "masked @0.1" in note and "25.00 points below" in note
    assert "honest" not in note and "weaker" not in note
    paths = write_compare(tmp_path, rows, "dev")
    assert "Possible gradient masking" in paths["md"].read_text()
    data = json.loads(paths["json"].read_text())
    assert [r["robust@0.1:masking_warning"] for r in data["rows"]] == [True, False, False]
    with paths["csv"].open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["robust@0.1:masking_warning"] for r in csv_rows] == ["True", "False", "False"]
    assert [r["robust@0.1:square200-margin"] for r in csv_rows] == ["0.6", "0.69", "0.9"]


def test_markdown_says_when_nothing_is_flagged() -> None:
    md = compare_table([_row("honest", HONEST)], "dev")
    assert "No gradient-masking warning" in md and "Possible gradient masking" not in md
