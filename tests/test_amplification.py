"""Error-amplification probe: exact values on linear models, hook order, state hygiene, and the written files."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from hwsearch.errors import ConfigError
from hwsearch.quant import QuantWrapper
from hwsearch.robust import AmplificationResult, amplification_profile, write_amplification


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine threads thrash; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _orthogonal_linear(n: int, scale: float = 1.0, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    lin = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(scale * q)
    return lin


def _batch(n: int = 16, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g) * 0.6 + 0.2
    x_adv = (x + 0.05 * torch.randn(n, d, generator=g).sign()).clamp(0, 1)
    return x, x_adv


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.1])
def test_orthogonal_linear_layers_amplify_by_exactly_one(scale: float) -> None:
    """||W d|| / ||W x|| = ||d|| / ||x|| for W = c * orthogonal, whatever c: the ratio is scale-free."""
    model = nn.Sequential(_orthogonal_linear(10, scale, 0), _orthogonal_linear(10, 1.0, 1))
    x, x_adv = _batch()
    r = amplification_profile(model, x, x_adv, generator=torch.Generator().manual_seed(0))
    assert r.layers == ["0", "1"]
    assert r.adversarial == pytest.approx([1.0, 1.0], rel=1e-5)
    assert r.noise == pytest.approx([1.0, 1.0], rel=1e-5)


def test_a_layer_that_shrinks_the_signal_amplifies_the_perturbation() -> None:
    """A projection that removes most of x but keeps the perturbation direction shows amplification > 1."""
    d = 10
    x = torch.zeros(8, d)
    x[:, 0] = 0.5
    x[:, 1] = 0.5
    x_adv = x.clone()
    x_adv[:, 1] += 0.1
    lin = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([0.01] + [1.0] * (d - 1))))
    r = amplification_profile(nn.Sequential(lin), x, x_adv)
    assert r.adversarial[0] > 1.3


def test_layers_in_forward_order_and_wrappers_hooked() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Linear(6, 3)  # registered first, runs second
            self.early = QuantWrapper(nn.Linear(4, 6), 2, 2, 0.0, 1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(torch.relu(self.early(x)))

    torch.manual_seed(0)
    net = Net()
    x = torch.rand(12, 4)
    x_adv = (x + 0.3 * torch.randn(12, 4).sign()).clamp(0, 1)
    r = amplification_profile(net, x, x_adv, generator=torch.Generator().manual_seed(0))
    assert r.layers == ["early", "late"]
    assert all(v >= 0 for v in r.adversarial + r.noise)


def test_restores_flags_and_is_deterministic() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    x, x_adv = _batch()
    a = amplification_profile(model, x, x_adv, generator=torch.Generator().manual_seed(3))
    b = amplification_profile(model, x, x_adv, generator=torch.Generator().manual_seed(3))
    assert a == b
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model[1].running_mean, stats)


def test_rejects_no_perturbation_and_shape_mismatch() -> None:
    model = nn.Sequential(nn.Linear(10, 3))
    x, x_adv = _batch()
    with pytest.raises(ConfigError, match="equals"):
        amplification_profile(model, x, x.clone())
    with pytest.raises(ConfigError, match="shape"):
        amplification_profile(model, x, x_adv[:3])
    with pytest.raises(ConfigError, match="one value per layer"):
        AmplificationResult(["a"], [1.0, 2.0], [1.0])


def test_write_amplification_csv_and_png(tmp_path) -> None:
    results = {
        "fp32": AmplificationResult(["c1", "fc"], [1.2, 2.5], [0.9, 1.0]),
        "w2a2": AmplificationResult(["c1", "fc"], [1.5, 4.0], [1.1, 1.3]),
    }
    csv_path, png_path = tmp_path / "out" / "amp.csv", tmp_path / "out" / "amp.png"
    write_amplification(results, csv_path, png_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["model"], r["layer"]) for r in rows] == [("fp32", "c1"), ("fp32", "fc"), ("w2a2", "c1"), ("w2a2", "fc")]
    assert float(rows[3]["adversarial"]) == 4.0 and float(rows[2]["noise"]) == 1.1
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["amp.csv", "amp.png"]  # no temp files left
    with pytest.raises(ConfigError, match="no amplification"):
        write_amplification({}, csv_path, png_path)
