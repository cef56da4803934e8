"""PNG plots: files appear, are real non-blank PNGs, and empty input is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from hwsearch.errors import ConfigError
from hwsearch.hardware import LayerCost, PolicyCost
from hwsearch.plots import plot_policy_bits, plot_tradeoff
from hwsearch.policy import Policy
from hwsearch.records import CompareRow

NAMES = ["net.features.conv1", "net.features.conv2", "net.features.conv3", "net.classifier.fc1", "net.classifier.fc2"]
POLICY = Policy(dict(zip(NAMES, [(8, 8), (4, 4), (2, 3), (1, 32), (32, 32)], strict=True)), {"kind": "searched"})
SHARES = dict(zip(NAMES, [0.05, 0.4, 0.35, 0.15, 0.05], strict=True))


def _assert_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.05  # something was drawn, not a blank canvas
    return img


def _row(name: str, acc: float, lat: float | None, robust: dict | None = None) -> CompareRow:
    policy = None if lat is None else POLICY
    speedup = None if lat is None else 1.0 / lat
    return CompareRow(name, policy, acc, lat, None if lat is None else 2 * lat, 1000, speedup, None, robust or {})


@pytest.mark.parametrize("shares", [SHARES, None], ids=["with-latency", "bits-only"])
def test_policy_bits_plot_is_a_png(shares: dict | None, tmp_path: Path) -> None:
    path = plot_policy_bits(POLICY, shares, tmp_path / "sub" / "bits.png")
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["bits.png"]  # atomic write leaves no temp file


def test_latency_shares_from_policy_cost_sum_to_one() -> None:
    per = {n: LayerCost(latency_ms=s * 2.0) for n, s in SHARES.items()}
    cost = PolicyCost(latency_ms=2.0, energy_mj=None, size_bits=1, per_layer=per)
    shares = cost.latency_shares()
    assert list(shares) == NAMES and sum(shares.values()) == pytest.approx(1.0)
    assert shares == pytest.approx(SHARES)


@pytest.mark.parametrize("robust", [False, True], ids=["clean", "robust"])
def test_tradeoff_plot_is_a_png(robust: bool, tmp_path: Path) -> None:
    rob = (lambda w: {"0.1": {"worst": w, "pgd-ste": w + 0.1}, "0.2": {"pgd-ste": w / 2}}) if robust else (lambda w: {})
    rows = [
        _row("FP32", 0.97, None, rob(0.4)),
        _row("fixed W8A8", 0.965, 1.0, rob(0.38)),
        _row("fixed W4A4", 0.95, 0.3, rob(0.3)),
        _row("searched", 0.96, 0.4, rob(0.45)),
    ]
    _assert_png(plot_tradeoff(rows, tmp_path / "tradeoff.png", device="bitfusion-edge"))


def test_tradeoff_plot_with_only_unpriced_rows(tmp_path: Path) -> None:
    _assert_png(plot_tradeoff([_row("FP32", 0.97, None)], tmp_path / "fp32.png"))


def test_plots_refuse_empty_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one comparison row"):
        plot_tradeoff([], tmp_path / "t.png")
    with pytest.raises(ConfigError, match="latency shares are empty"):
        plot_policy_bits(POLICY, {}, tmp_path / "b.png")
    with pytest.raises(ConfigError, match=r"miss layer\(s\) \['net.classifier.fc2'\]"):
        plot_policy_bits(POLICY, {n: 0.2 for n in NAMES[:-1]}, tmp_path / "b.png")
    with pytest.raises(ConfigError, match="policy with at least one layer"):
        plot_policy_bits(None, None, tmp_path / "b.png")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
