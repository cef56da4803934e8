"""Lipschitz control for quantized networks (Defensive Quantization): an orthogonality penalty and reports.

Quantization error is amplified layer by layer when a layer's Lipschitz constant exceeds one; keeping each
weight matrix close to orthogonal (``W W^T ~ I``) keeps every layer's gain near one, so adversarial and
rounding perturbations do not grow through the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsearch.checks import check_int, check_number
from hwsearch.quant import QuantWrapper, quantizable_names

__all__ = [
    "LipschitzRegularizer",
    "orthogonality_penalty",
    "lipschitz_regularizer",
    "layer_lipschitz_bounds",
]


def _matrix(weight: Tensor) -> Tensor:
    """Conv (out, in/groups, kh, kw) and linear (out, in) weights as an (out, rest) matrix."""
    return weight.reshape(weight.shape[0], -1)


def _float_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Every float Conv2d/Linear, including the ``.layer`` inside each QuantWrapper (its trainable weights)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def orthogonality_penalty(model: nn.Module) -> Tensor:
    """Sum over Conv2d/Linear weights of ``||G - I||_F^2``, where ``G`` is the smaller Gram matrix of ``W``.

    ``W`` is the weight reshaped to (out, rest). For out <= rest, ``G = W W^T`` (out x out): rows orthonormal.
    For out > rest, ``G = W^T W`` (rest x rest): columns orthonormal. Only the Gram of the smaller side can
    equal the identity (the larger one has rank at most the smaller dimension), so the penalty can reach
    zero and its minimisers are exactly the (semi-)orthogonal matrices, whose spectral norm is 1. Inside a
    QuantWrapper the float weight is used: that is what QAT updates, and it keeps the gradient smooth.
    The result is differentiable and lives on the model's device; a model without such layers gives 0.
    """
    terms: list[Tensor] = []
    for _, layer in _float_layers(model):
        w = _matrix(layer.weight)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        terms.append((gram - eye).pow(2).sum())
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(terms).sum()


@dataclass(frozen=True)
class LipschitzRegularizer:
    """``beta * orthogonality_penalty(model)``, a picklable callable for ``train(..., regularizer=...)``."""

    beta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", check_number(self.beta, "Lipschitz beta", 0))

    def __call__(self, model: nn.Module) -> Tensor:
        if self.beta == 0.0:  # skip the Gram matrices entirely
            p = next(model.parameters(), None)
            return torch.zeros((), device=p.device if p is not None else None)
        return self.beta * orthogonality_penalty(model)


def lipschitz_regularizer(beta: float) -> LipschitzRegularizer:
    """The Defensive Quantization training term ``beta * sum_l ||W_l W_l^T - I||_F^2``; ``beta >= 0``."""
    return LipschitzRegularizer(beta)


@torch.no_grad()
def _spectral_norm(mat: Tensor, iters: int, generator: torch.Generator) -> float:
    """Largest singular value by power iteration on ``M^T M`` (seeded start, so reports are reproducible)."""
    m = mat.detach().double().cpu()
    v = torch.randn(m.shape[1], generator=generator, dtype=torch.float64)
    v = v / v.norm().clamp_min(1e-300)
    for _ in range(iters):
        u = m @ v
        v = m.T @ u
        nv = v.norm()
        if nv == 0:
            return 0.0
        v = v / nv
    return float((m @ v).norm())


def layer_lipschitz_bounds(model: nn.Module, *, iters: int = 100, seed: int = 0) -> dict[str, float]:
    """Spectral norm of each quantizable layer's weight matrix, keyed by the policy's layer name.

    For convolutions this is the norm of the (out, in*kh*kw) reshaped kernel, the quantity the penalty drives
    to one, not the exact operator norm of the convolution (which also depends on stride and overlap).
    QuantWrappers report their float weight.
    """
    check_int(iters, "power iterations", 1)
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, float] = {}
    for name in quantizable_names(model):
        mod = model.get_submodule(name)
        layer = mod.layer if isinstance(mod, QuantWrapper) else mod
        assert isinstance(layer, (nn.Conv2d, nn.Linear))  # quantizable_names lists only these
        out[name] = _spectral_norm(_matrix(layer.weight), iters, gen)
    return out
