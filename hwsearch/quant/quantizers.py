"""Fake quantizers: values snapped to a low-bit grid in float, with straight-through gradients.

Computing in float keeps attacks and quantization-aware training differentiable; the grid is exactly the
integer grid a deployment runtime would use, scaled back.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["quantize_weight", "quantize_activation", "weight_levels", "activation_levels"]


def weight_levels(bits: int) -> int:
    """Number of distinct values a weight channel can take (symmetric grid, 1 bit = sign x scale)."""
    return 2 if bits == 1 else 2**bits - 1


def activation_levels(bits: int, signed: bool) -> int:
    if not signed:
        return 2**bits
    return 2 if bits == 1 else 2**bits - 1


def _ste_round(x: Tensor) -> Tensor:
    """round() forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def quantize_weight(w: Tensor, bits: int) -> Tensor:
    """Symmetric, per-output-channel (dim 0) fake quantization of a weight tensor.

    Scale = max |w| of the channel / (2^(b-1) - 1), so no value is clipped and the gradient is the identity.
    One bit is binary: sign(w) x mean |w| of the channel (XNOR-Net), zero mapped to +scale.
    """
    if bits >= 32:
        return w
    if bits < 1:
        raise ValueError(f"weight bits must be >= 1, got {bits}")
    flat = w.detach().reshape(w.shape[0], -1)
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    if bits == 1:
        scale = flat.abs().mean(dim=1).reshape(shape)
        sign = torch.where(w.detach() >= 0, 1.0, -1.0).to(w.dtype)
        return w + (sign * scale - w).detach()
    qmax = 2 ** (bits - 1) - 1
    scale = (flat.abs().amax(dim=1) / qmax).reshape(shape)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero channel stays zero, finite
    return _ste_round(w / scale).clamp(-qmax, qmax) * scale


def quantize_activation(x: Tensor, bits: int, lo: float | Tensor, hi: float | Tensor, signed: bool) -> Tensor:
    """Fake-quantize activations to a calibrated range.

    Unsigned (after ReLU): 2^b levels on [0, hi]. Signed: symmetric grid on [-m, m], m = max(|lo|, |hi|).
    Values outside the range are clipped, and their gradient is zero (clipped STE); inside, it is 1.
    """
    if bits >= 32:
        return x
    if bits < 1:
        raise ValueError(f"activation bits must be >= 1, got {bits}")
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    if signed:
        m = torch.maximum(lo_t.abs(), hi_t.abs()).clamp_min(1e-8)
        if bits == 1:
            xc = x.clamp(-m, m)
            return xc + (torch.where(xc.detach() >= 0, m, -m) - xc).detach()
        qmax = 2 ** (bits - 1) - 1
        scale = m / qmax
        return _ste_round(x.clamp(-m, m) / scale) * scale
    top = hi_t.clamp_min(1e-8)
    scale = top / (2**bits - 1)
    return _ste_round(x.clamp(torch.zeros_like(top), top) / scale) * scale
