"""Activations in place for scoring (hwsearch.quant.inplace): only where nothing else reads what they overwrite."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hwsearch.models import build_model
from hwsearch.quant.inplace import activations_in_place, in_place_candidates

SHAPE = (1, 8, 8)


class _Residual(nn.Module):
    """``relu(conv(x)) + conv(x)``-like reads: ``relu_a`` shares its input with the sum, ``relu_b`` does not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu_a = nn.ReLU()
        self.relu_b = nn.ReLU()
        self.head = nn.Linear(4 * 64, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        z = self.relu_a(y) + y  # y is read again after the ReLU
        return self.head(self.relu_b(z).flatten(1))


class _OnInput(nn.Module):
    """ReLUs that read the caller's images and a view of a tensor that is read again."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.ReLU()
        self.on_view = nn.ReLU()
        self.head = nn.Linear(64, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = self.first(x) - 0.5
        return self.head(self.on_view(a.flatten(1))) + a.mean()


class _Shared(nn.Module):
    """One ReLU module called twice: in place only if both calls allow it (the second's input is read again)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4 * 64, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.conv(x))
        w = y * 2
        return self.head((self.relu(w) + w).flatten(1))


@pytest.mark.parametrize(
    ("model", "want"),
    [
        (_Residual(), ["relu_b"]),
        (_OnInput(), []),
        (_Shared(), []),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Flatten(), nn.Linear(144, 3)), ["2"]),
    ],
    ids=["residual", "input-and-view", "shared-module", "sequential"],
)
def test_candidates_are_the_sole_readers_of_their_input(model: nn.Module, want: list[str]) -> None:
    assert in_place_candidates(model, SHAPE) == want


@pytest.mark.parametrize("name", ["smallcnn", "resnet20"])
def test_zoo_models_in_place_give_the_same_values_and_input_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, (1, 28, 28)).eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fast = activations_in_place(model, (1, 28, 28), x[:2])
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert fast is not model and relus
    assert all(fast.get_submodule(n).inplace for n in relus)  # every zoo ReLU is its input's one reader
    assert not any(model.get_submodule(n).inplace for n in relus)  # the caller's model is left alone
    outs = []
    for m in (model, fast):
        xg = x.clone().requires_grad_(True)
        out = m(xg)
        (g,) = torch.autograd.grad(out[:, 3].sum(), xg)
        outs.append((out.detach(), g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_nothing_to_change_returns_the_model_itself() -> None:
    model = _OnInput()
    assert activations_in_place(model, SHAPE) is model
