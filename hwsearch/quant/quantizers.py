"""Fake quantizers: values snapped to a low-bit grid in float, with straight-through gradients.

Computing in float keeps attacks and quantization-aware training differentiable; the grid is exactly the
integer grid a deployment runtime would use, scaled back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "weight_clip",
    "quantize_weight",
    "quantize_weight_and_step",
    "quantize_activation",
    "quantize_bias",
    "activation_step",
    "quantize_output",
    "weight_levels",
    "activation_levels",
]


def weight_levels(bits: int) -> int:
    """Number of distinct values a weight channel can take (symmetric grid, 1 bit = sign x scale)."""
    return 2 if bits == 1 else 2**bits - 1


def activation_levels(bits: int, signed: bool) -> int:
    if not signed:
        return 2**bits
    return 2 if bits == 1 else 2**bits - 1


def _ste(x: Tensor, q: Tensor) -> Tensor:
    """Value ``q`` exactly (grid points stay exact), gradient of ``x`` (straight through).

    Without a gradient to pass (inference, the clean pass) ``q`` itself: the same value, two passes over the
    tensor fewer.
    """
    if not x.requires_grad:
        return q.detach()
    return q.detach() + (x - x.detach())


def _snap_(xc: Tensor, scale: float | Tensor) -> Tensor:
    """``round(xc / scale) * scale`` in place on ``xc`` (a clamp's fresh output), with no autograd record: the same
    values as the out-of-place ops, without a temporary the size of the activation."""
    with torch.no_grad():
        return xc.div_(scale).round_().mul_(scale)


_CLIP_RATIOS = tuple(0.3 + 0.05 * i for i in range(15))  # 0.30 .. 1.00 of the channel's max |w|


def weight_clip(w: Tensor, bits: int) -> Tensor:
    """Per-output-channel clipping threshold that minimises the squared quantization error.

    Scaling to the channel maximum wastes most levels on rare large weights, which ruins 2-3 bit grids;
    HAQ clips too (it picks the range by KL divergence). Candidates run from 0.3 to 1.0 of the maximum, so
    a weight tensor that already lies on a grid reaching its maximum is reproduced exactly.
    """
    flat = w.detach().reshape(w.shape[0], -1)
    amax = flat.abs().amax(dim=1).clamp_min(1e-12)
    qmax = 2 ** (bits - 1) - 1
    best_err = torch.full_like(amax, float("inf"))
    best_clip = amax.clone()
    for ratio in reversed(_CLIP_RATIOS):  # ties keep the widest range
        clip = amax * ratio
        scale = (clip / qmax)[:, None]
        err = ((flat / scale).round().clamp(-qmax, qmax) * scale - flat).pow(2).sum(dim=1)
        better = err < best_err - 1e-12 * (1 + best_err.clamp(max=1e30))
        best_err = torch.where(better, err, best_err)
        best_clip = torch.where(better, clip, best_clip)
    return best_clip


def quantize_weight(w: Tensor, bits: int) -> Tensor:
    """Symmetric, per-output-channel (dim 0) fake quantization of a weight tensor.

    ``2^(b-1) - 1`` levels each side of zero over an MSE-optimal clipping range (:func:`weight_clip`); the
    gradient passes straight through inside the range and is zero for clipped weights. One bit is binary:
    sign(w) x mean |w| of the channel (XNOR-Net), the MSE-optimal binary scale, zero mapped to +scale.
    """
    if bits >= 32:
        return w
    return quantize_weight_and_step(w, bits)[0]


def quantize_weight_and_step(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """:func:`quantize_weight` and each output channel's grid step (its scale: one integer's worth), which an
    integer kernel's bias grid needs (:func:`quantize_bias`)."""
    if bits < 1:
        raise ValueError(f"weight bits must be >= 1, got {bits}")
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    if bits == 1:
        scale = w.detach().reshape(w.shape[0], -1).abs().mean(dim=1).reshape(shape)
        sign = torch.where(w.detach() >= 0, 1.0, -1.0).to(w.dtype)
        return _ste(w, sign * scale), scale.reshape(-1)
    qmax = 2 ** (bits - 1) - 1
    clip = weight_clip(w, bits).reshape(shape)
    scale = clip / qmax
    wc = torch.clamp(w, -clip, clip)  # inclusive: the gradient is 1 at the boundary
    return _ste(wc, (wc / scale).round().clamp(-qmax, qmax) * scale), scale.reshape(-1)


def activation_step(bits: int, lo: float | Tensor, hi: float | Tensor, signed: bool) -> Tensor | None:
    """The step of :func:`quantize_activation`'s grid (float32, as ``hwsearch.quantized.activation_grid``
    computes it), or None where there is no linear grid (float; signed 1 bit is a sign function)."""
    if bits >= 32 or (signed and bits == 1):
        return None
    lo_t = torch.as_tensor(lo, dtype=torch.float32)
    hi_t = torch.as_tensor(hi, dtype=torch.float32)
    if signed:
        return torch.maximum(lo_t.abs(), hi_t.abs()).clamp_min(1e-8) / (2 ** (bits - 1) - 1)
    return hi_t.clamp_min(1e-8) / (2**bits - 1)


def quantize_bias(b: Tensor, step: Tensor) -> Tensor:
    """The bias as an integer kernel adds it: a whole number of accumulator steps (input scale x each channel's
    weight scale) per channel; the gradient passes straight through."""
    return _ste(b, torch.round(b.detach() / step) * step)


def quantize_output(y: Tensor, scale: float | Tensor, zero_point: int) -> Tensor:
    """An 8-bit output grid with zero point ``zero_point``: the levels ``scale * (k - zero_point)``, k in 0..255,
    with the clipped straight-through gradient (what an integer kernel hands to a float reader)."""
    return _clip_snap(y, -zero_point * float(scale), (255 - zero_point) * float(scale), float(scale))


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
    lo_c: float | Tensor
    hi_c: float | Tensor
    scale: float | Tensor
    if signed:
        m = torch.maximum(lo_t.abs(), hi_t.abs()).clamp_min(1e-8)
        if bits == 1:
            xc = x.clamp(-m, m)
            return _ste(xc, torch.where(xc.detach() >= 0, m, -m))
        lo_c, hi_c, scale = -m, m, m / (2 ** (bits - 1) - 1)
    else:
        top = hi_t.clamp_min(1e-8)
        lo_c, hi_c, scale = torch.zeros_like(top), top, top / (2**bits - 1)
    if x.device.type == "cpu":
        # plain numbers (the same float32 values): clamp runs several times faster with scalar bounds than with
        # tensor ones, and on a CPU reading them costs no device sync
        lo_c, hi_c, scale = float(lo_c), float(hi_c), float(scale)
    return _clip_snap(x, lo_c, hi_c, scale)


class _ClipSnapSTE(torch.autograd.Function):
    """``round(clamp(x, lo, hi) / scale) * scale`` with the clipped straight-through gradient, in one node.

    The gradient is 1 on the closed range ``[lo, hi]`` and 0 outside it (torch's clamp backward would give 0 or
    1/2 at a value equal to a bound). Autograd keeps one mask, where a clamp node replays a backward that
    rebuilds both bound masks per call: profiled, that was a large share of an attack step's backward pass. The
    mask is kept in ``x``'s dtype, 1 or 0: on CPU, torch multiplies a float tensor by a bool one on a slow
    type-converting path, several times the cost of a float product (``benchmarks/search_speed.py`` times the
    evaluation this sits in).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float | Tensor, hi: float | Tensor, scale: float | Tensor) -> Tensor:  # noqa: D102
        xc = x.clamp(lo, hi)  # type: ignore[arg-type]  # scalar or tensor bounds: torch has both overloads
        inside = torch.eq(xc, x, out=torch.empty_like(x))  # 1 where clamp left the value as it was
        ctx.save_for_backward(inside)
        return _snap_(xc, scale)  # after the mask: xc is not read again

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def _clip_snap(x: Tensor, lo: float | Tensor, hi: float | Tensor, scale: float | Tensor) -> Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _ClipSnapSTE.apply(x, lo, hi, scale)
    return _snap_(x.clamp(lo, hi), scale)  # type: ignore[arg-type]  # scalar or tensor bounds
