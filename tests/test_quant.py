"""Quantizers and apply_policy, tested by their invariants."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from hwsearch.errors import ConfigError, PolicyError
from hwsearch.policy import LayerBits, Policy, uniform_policy
from hwsearch.quant import (
    ActRange,
    Calibration,
    QuantWrapper,
    activation_levels,
    apply_policy,
    calibrate,
    gradient_mode,
    quantizable_names,
    quantize_activation,
    quantize_weight,
    weight_levels,
)

BITS = [1, 2, 3, 4, 5, 6, 7, 8]


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_grid_points_are_fixed_points(bits: int) -> None:
    qmax = 2 ** (bits - 1) - 1
    gen = torch.Generator().manual_seed(bits)
    k = torch.randint(-qmax, qmax + 1, (6, 10), generator=gen).float()
    k[:, 0] = qmax  # the channel maximum is on the grid, so the scale is exactly 0.1
    w = k * 0.1
    assert torch.allclose(quantize_weight(w, bits), w, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_activation_grid_points_are_fixed_points(bits: int, signed: bool) -> None:
    levels = activation_levels(bits, signed)
    grid = torch.linspace(-1.0 if signed else 0.0, 1.0, levels)
    q = quantize_activation(grid, bits, -1.0 if signed else 0.0, 1.0, signed)
    assert torch.allclose(q, grid, atol=1e-6)


def test_weight_error_non_increasing_in_bits() -> None:
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    errs = [(quantize_weight(w, b) - w).pow(2).mean().item() for b in BITS]
    assert all(a >= b - 1e-9 for a, b in zip(errs, errs[1:], strict=False)), errs
    # and every extra bit pays: a grid twice as fine cuts the squared error about 4x (a bits cap would not)
    assert all(b < 0.6 * a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert quantize_weight(w, 32) is w


@pytest.mark.parametrize("signed", [False, True])
def test_activation_error_non_increasing_in_bits(signed: bool) -> None:
    x = torch.rand(1000, generator=torch.Generator().manual_seed(2)) * (2 if signed else 1) - (1 if signed else 0)
    errs = [(quantize_activation(x, b, x.min(), x.max(), signed) - x).abs().mean().item() for b in BITS]
    assert all(a >= b - 1e-7 for a, b in zip(errs, errs[1:], strict=False)), errs
    assert all(b < 0.7 * a for a, b in zip(errs, errs[1:], strict=False)), errs  # about 2x per bit


@pytest.mark.parametrize("bits", BITS)
def test_number_of_levels_at_most_two_to_the_bits(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(3, 500, generator=gen)
    for row in quantize_weight(w, bits):
        assert row.unique().numel() <= min(2**bits, weight_levels(bits))
    x = torch.randn(5000, generator=gen)
    assert quantize_activation(x, bits, x.min(), x.max(), True).unique().numel() <= 2**bits
    assert quantize_activation(x.relu(), bits, 0.0, x.max(), False).unique().numel() <= 2**bits


@pytest.mark.parametrize("bits", BITS)
def test_zero_tensors_stay_finite(bits: int) -> None:
    z = torch.zeros(4, 3, 3, 3)
    qw = quantize_weight(z, bits)
    assert torch.isfinite(qw).all()
    qa = quantize_activation(z, bits, 0.0, 0.0, False)
    assert torch.isfinite(qa).all() and (qa == 0).all()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_ste_gradient_passes_inside_range_and_stops_outside(bits: int) -> None:
    x = torch.tensor([-0.5, 0.1, 0.4, 0.9, 1.5], requires_grad=True)
    quantize_activation(x, bits, 0.0, 1.0, False).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    w = torch.randn(4, 50, requires_grad=True, generator=torch.Generator().manual_seed(bits))
    q = quantize_weight(w, bits)
    q.sum().backward()
    if bits == 1:
        assert torch.equal(w.grad, torch.ones_like(w))
    else:  # 1 inside each channel's clipping range (its largest grid value), 0 beyond it
        clip = q.detach().abs().amax(dim=1, keepdim=True)
        inside = w.detach().abs() < clip * (1 - 1e-5)
        outside = w.detach().abs() > clip * (1 + 1e-5)
        assert (w.grad[inside] == 1).all() and (w.grad[outside] == 0).all()
        assert w.grad.mean() > 0.5


def test_apply_policy_touches_exactly_the_named_modules_and_not_the_input() -> None:
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = quantizable_names(model)
    assert names == ["0", "2", "5"]
    x = torch.rand(16, 1, 8, 8)
    policy = Policy({"0": LayerBits(4, 8), "2": LayerBits(32, 32), "5": LayerBits(2, 3)})
    q = apply_policy(model, policy, calibrate(model, x))
    assert isinstance(q[0], QuantWrapper) and (q[0].w_bits, q[0].a_bits) == (4, 8)
    assert isinstance(q[2], nn.Conv2d) and not isinstance(q[2], QuantWrapper)
    assert isinstance(q[5], QuantWrapper) and (q[5].w_bits, q[5].a_bits) == (2, 3)
    assert isinstance(q[1], nn.ReLU) and isinstance(q[4], nn.Flatten)
    # the input model is untouched
    assert all(not isinstance(m, QuantWrapper) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # an all-float policy computes the same function
    same = apply_policy(model, uniform_policy(names, 32), None)
    assert torch.allclose(same(x), model(x))


def test_apply_policy_rejects_unknown_and_missing_layers() -> None:
    model = _tiny_model()
    with pytest.raises(PolicyError, match="does not have"):
        apply_policy(model, uniform_policy(["0", "2", "5", "nope"], 8), None)
    with pytest.raises(PolicyError, match="misses"):
        apply_policy(model, uniform_policy(["0", "2"], 8), None)
    with pytest.raises(PolicyError, match="calibrat"):
        apply_policy(model, uniform_policy(["0", "2", "5"], 8), None)


def test_quantized_output_converges_to_float_with_bits() -> None:
    model = _tiny_model()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cal = calibrate(model, x, method="minmax")
    ref = model(x)
    errs = []
    for b in [2, 4, 6, 8]:
        q = apply_policy(model, uniform_policy(quantizable_names(model), b), cal)
        errs.append((q(x) - ref).abs().mean().item())
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 0.02 * ref.abs().mean().item() + 1e-3


def test_shadow_mode_same_forward_float_backward() -> None:
    model = _tiny_model()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    q = apply_policy(model, uniform_policy(quantizable_names(model), 2), calibrate(model, x))
    xs = x.clone().requires_grad_(True)
    out_ste = q(xs)
    with gradient_mode(q, "shadow"):
        out_shadow = q(xs)
        (g_shadow,) = torch.autograd.grad(out_shadow.sum(), xs)
    assert torch.allclose(out_ste, out_shadow, atol=1e-5)
    assert all(w.grad_mode == "ste" for w in q.modules() if isinstance(w, QuantWrapper))
    # the shadow gradient of a linear chain of float layers: not the STE one, and nonzero
    (g_ste,) = torch.autograd.grad(q(xs).sum(), xs)
    assert g_shadow.abs().sum() > 0
    assert not torch.allclose(g_shadow, g_ste)


def test_weight_cache_made_in_inference_mode_serves_autograd_later() -> None:
    model = _tiny_model()
    x = torch.rand(4, 1, 8, 8)
    q = apply_policy(model, uniform_policy(quantizable_names(model), 4), calibrate(model, x)).eval()
    with torch.inference_mode():
        ref = q(x)
    xs = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(q(xs).sum(), xs)
    assert torch.isfinite(g).all() and torch.allclose(q(x), ref)


@pytest.mark.parametrize(
    ("stored", "fragment"),
    [
        ({}, "malformed"),
        ({"method": "minmax", "ranges": {"a": [1.0]}}, "malformed"),
        ({"method": "minmax", "ranges": [0.0, 1.0]}, "malformed"),
        ({"method": "minmax", "ranges": {"a": ["x", 1.0]}}, "finite number"),
        ({"method": "minmax", "ranges": {"a": [2.0, 1.0]}}, "lo = 2.0 > hi = 1.0"),
        ({"method": "kl", "ranges": {}}, "calibration method = 'kl'"),
    ],
)
def test_stored_calibration_errors_are_one_line_config_errors(stored: dict, fragment: str) -> None:
    """A checkpoint's stored calibration is user input: a bad one must reach the CLI as exit 2, not a traceback."""
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        Calibration.from_dict(stored)
    assert "\n" not in str(info.value)


def test_calibration_round_trips_through_its_dict() -> None:
    cal = Calibration({"a": ActRange(-0.5, 2.0), "b": ActRange(0.0, 1.0)}, "percentile")
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def _reference_activation(x: torch.Tensor, bits: int, lo: float, hi: float, signed: bool) -> torch.Tensor:
    """The activation quantizer's value as first written (tensor bounds, clamp, then snap)."""
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    if signed:
        m = torch.maximum(lo_t.abs(), hi_t.abs()).clamp_min(1e-8)
        xc, scale = x.clamp(-m, m), m / (2 ** (bits - 1) - 1)
    else:
        top = hi_t.clamp_min(1e-8)
        xc, scale = x.clamp(torch.zeros_like(top), top), top / (2**bits - 1)
    return (xc / scale).round() * scale


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_activation_ste_value_is_unchanged_and_its_gradient_is_one_on_the_closed_range(bits: int, signed: bool) -> None:
    g = torch.Generator().manual_seed(bits)
    lo, hi = (-1.3, 2.1) if signed else (0.0, 2.1)
    bound = torch.tensor(max(abs(lo), hi) if signed else hi)  # float32, as the quantizer reads it
    low = -bound if signed else torch.tensor(0.0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 2
    x.view(-1)[:4] = torch.stack([bound, low, bound + 1e-3, low - 1e-3])  # on and just past each bound
    upstream = torch.randn(x.shape, generator=g)
    xg = x.clone().requires_grad_(True)
    out = quantize_activation(xg, bits, lo, hi, signed)
    (gx,) = torch.autograd.grad((out * upstream).sum(), xg)
    assert torch.equal(out.detach(), _reference_activation(x, bits, lo, hi, signed))  # bit for bit: cached rewards
    inside = (x >= low) & (x <= bound)  # bounds included (torch's clamp gives 0 or 1/2 there; this is our rule)
    assert torch.equal(gx, torch.where(inside, upstream, torch.zeros_like(upstream)))
    assert inside.view(-1)[:4].tolist() == [True, True, False, False]
    with torch.no_grad():  # the no-gradient path is the same value
        assert torch.equal(quantize_activation(x, bits, lo, hi, signed), out.detach())


@pytest.mark.parametrize("seed", range(4))
def test_activation_ste_with_tensor_bounds_equals_the_scalar_path(seed: int) -> None:
    """GPUs keep the range as tensors (no device sync); that branch must compute what the CPU's floats do."""
    from hwsearch.quant.quantizers import _clip_snap

    g = torch.Generator().manual_seed(seed)
    for _ in range(20):
        lo = -float(torch.rand(1, generator=g)) * 3
        hi = float(torch.rand(1, generator=g)) * 3 + 0.01
        bits = int(torch.randint(2, 9, (1,), generator=g))
        lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
        scale_t = (hi_t - lo_t) / (2**bits - 1)
        x = torch.randn(64, generator=g) * 3
        x[:2] = torch.stack([lo_t, hi_t])  # values on the bounds
        outs = []
        for bounds in ((lo_t, hi_t, scale_t), (float(lo_t), float(hi_t), float(scale_t))):
            xg = x.clone().requires_grad_(True)
            out = _clip_snap(xg, *bounds)
            (gx,) = torch.autograd.grad(out.sum(), xg)
            outs.append((out.detach(), gx))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        assert outs[0][1][:2].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_the_weight_step_is_one_integer_of_the_quantized_weight(bits: int) -> None:
    from hwsearch.quant.quantizers import quantize_weight_and_step

    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(bits))
    wq, step = quantize_weight_and_step(w, bits)
    assert torch.equal(wq, quantize_weight(w, bits))
    k = wq / step.reshape(-1, 1, 1, 1)
    assert torch.allclose(k, k.round(), atol=1e-4) and k.abs().max() <= max(2 ** (bits - 1) - 1, 1) + 1e-4


@pytest.mark.parametrize("seed", range(3))
def test_a_bias_lands_on_its_accumulator_grid_with_a_straight_through_gradient(seed: int) -> None:
    from hwsearch.quant.quantizers import quantize_bias

    g = torch.Generator().manual_seed(seed)
    step = torch.rand(6, generator=g) * 0.01 + 1e-3
    b = torch.randn(6, generator=g).requires_grad_()
    q = quantize_bias(b, step)
    k = q.detach() / step
    assert torch.allclose(k, k.round(), atol=1e-4)  # a whole number of accumulator steps
    assert ((q - b).detach().abs() <= step / 2 + 1e-7).all()  # the nearest one
    assert torch.allclose(quantize_bias(q.detach(), step), q.detach())  # grid points stay
    q.sum().backward()
    assert b.grad is not None and torch.equal(b.grad, torch.ones(6))


@pytest.mark.parametrize("zero", [0, 17, 128, 255])
def test_an_output_grid_has_256_levels_around_its_zero_point_and_a_clipped_gradient(zero: int) -> None:
    from hwsearch.quant.quantizers import quantize_output

    scale = 0.05
    y = torch.linspace(-15.0, 15.0, 3001).requires_grad_()
    q = quantize_output(y, scale, zero)
    k = q.detach() / scale + zero
    assert torch.allclose(k, k.round(), atol=1e-3) and k.min() >= -1e-3 and k.max() <= 255 + 1e-3
    inside = (y.detach() >= -zero * scale) & (y.detach() <= (255 - zero) * scale)
    assert ((q - y).detach().abs()[inside] <= scale / 2 + 1e-6).all()
    q.sum().backward()
    assert y.grad is not None and torch.equal(y.grad, inside.float())


def test_an_integer_bias_wrapper_adds_its_bias_on_the_accumulator_grid() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    wrapper = QuantWrapper(conv, 4, 8, lo=-2.0, hi=2.0)
    x = torch.randn(2, 3, 6, 6)
    plain = wrapper(x)
    wrapper.integer_bias = True
    step = (2.0 / 127) * wrapper._weight_and_step()[1]
    b = wrapper.quantized_bias()
    assert b is not None
    assert torch.allclose(b / step, (b / step).round(), atol=1e-4) and not torch.equal(b, conv.bias)
    moved = (wrapper(x) - plain).detach()
    assert torch.allclose(moved, (b - conv.bias).detach().reshape(1, -1, 1, 1).expand_as(moved), atol=1e-5)
    wrapper.out_grid = (0.1, 100)
    k = wrapper(x).detach() / 0.1
    assert torch.allclose(k, k.round(), atol=1e-3)
