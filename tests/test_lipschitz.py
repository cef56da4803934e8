"""Orthogonality penalty, the Lipschitz regulariser, and per-layer spectral-norm reports."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from hwsearch.errors import ConfigError
from hwsearch.quant import QuantWrapper, quantizable_names
from hwsearch.robust import LipschitzRegularizer, layer_lipschitz_bounds, lipschitz_regularizer, orthogonality_penalty


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine threads thrash; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _orthogonal_(w: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Fill ``w`` (out, ...) so that its (out, rest) reshape has orthonormal rows or columns."""
    g = torch.Generator().manual_seed(seed)
    mat = torch.randn(w.shape[0], w[0].numel(), generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(mat if mat.shape[0] >= mat.shape[1] else mat.T)
    q = q if mat.shape[0] >= mat.shape[1] else q.T
    with torch.no_grad():
        w.copy_(q.reshape(w.shape).to(w.dtype))
    return w


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(6, 6), nn.Linear(8, 3), nn.Linear(3, 8), nn.Conv2d(2, 4, 3), nn.Conv2d(1, 16, 2), nn.Conv2d(4, 4, 1)],
    ids=["square", "wide", "tall", "conv", "conv-tall", "conv1x1"],
)
def test_penalty_zero_for_orthogonal_positive_otherwise(layer: nn.Module) -> None:
    _orthogonal_(layer.weight)
    assert orthogonality_penalty(layer).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        layer.weight.mul_(1.5)
    assert orthogonality_penalty(layer).item() > 0.1


def test_penalty_matches_the_smaller_gram_by_hand() -> None:
    torch.manual_seed(0)
    lin, conv = nn.Linear(5, 3), nn.Conv2d(1, 6, 2)  # W: 3x5 (rows), conv W: 6x4 (columns)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 3), nn.Unflatten(1, (1, 1, 3)), conv)
    w1, w2 = lin.weight, model[2].weight
    w3 = conv.weight.reshape(6, -1)
    expected = (
        ((w1 @ w1.T - torch.eye(3)) ** 2).sum()
        + ((w2 @ w2.T - torch.eye(3)) ** 2).sum()
        + ((w3.T @ w3 - torch.eye(4)) ** 2).sum()
    )
    assert orthogonality_penalty(model).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_descent_on_penalty_alone_reduces_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    start = orthogonality_penalty(model).item()
    for _ in range(200):
        opt.zero_grad()
        orthogonality_penalty(model).backward()
        opt.step()
    end = orthogonality_penalty(model).item()
    assert start > 1.0 and end < 0.01 * start
    assert all(v == pytest.approx(1.0, abs=0.05) for v in layer_lipschitz_bounds(model).values())


def test_penalty_sees_float_weights_inside_quant_wrappers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    wrapped = nn.Sequential(QuantWrapper(model[0], 2, 2), nn.ReLU(), QuantWrapper(model[2], 2, 2))
    assert orthogonality_penalty(wrapped).item() == pytest.approx(orthogonality_penalty(model).item())
    orthogonality_penalty(wrapped).backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("beta", [0.0, 1e-3, 0.5, 2])
def test_regularizer_scales_with_beta(beta: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reg = lipschitz_regularizer(beta)
    assert isinstance(reg, LipschitzRegularizer) and reg.beta == beta
    value = reg(model)
    assert value.shape == () and value.item() == pytest.approx(beta * orthogonality_penalty(model).item(), rel=1e-6)
    assert pickle.loads(pickle.dumps(reg)) == reg


@pytest.mark.parametrize("beta", [-1e-4, float("inf"), float("nan"), "0.1", True])
def test_regularizer_rejects_bad_beta(beta: object) -> None:
    with pytest.raises(ConfigError, match="beta"):
        lipschitz_regularizer(beta)  # type: ignore[arg-type]


def test_penalty_of_model_without_layers_is_zero() -> None:
    assert orthogonality_penalty(nn.Sequential(nn.ReLU())).item() == 0.0


def test_layer_bounds_match_svd_and_use_policy_names() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5))
    wrapped = nn.Sequential(QuantWrapper(model[0], 4, 4), nn.ReLU(), nn.Flatten(), model[3])
    for m in (model, wrapped):
        bounds = layer_lipschitz_bounds(m)
        assert list(bounds) == quantizable_names(m) == ["0", "3"]
        exact = [torch.linalg.svdvals(model[0].weight.reshape(3, -1))[0], torch.linalg.svdvals(model[3].weight)[0]]
        assert list(bounds.values()) == pytest.approx([e.item() for e in exact], rel=1e-4)
    assert layer_lipschitz_bounds(model, seed=1) == pytest.approx(layer_lipschitz_bounds(model, seed=2), rel=1e-4)
    with pytest.raises(ConfigError, match="iterations"):
        layer_lipschitz_bounds(model, iters=0)
