"""ONNX export of a quantized model (:func:`export_onnx`).

Opset 13 QDQ form (opset 21 when weights of at most 4 bits are stored packed, :mod:`hwsearch.onnx_pack`), chosen so ONNX Runtime reproduces the fake quantization on every CPU:

- quantized weights are stored as integer initializers holding the integers of the layer's own b-bit grid
  (``|q| <= 2^(b-1)-1``; 1 bit: +-1) with a per-output-channel ``DequantizeLinear`` (axis 0). ``q * scale`` in
  float32 is exactly the weight the fake quantizer computes, so every width 1..8 is exact, not only 8 bits;
- quantized activations are ``Clip`` to the calibrated range (omitted for unsigned 8 bits, where uint8
  saturation does the same; int8 would admit -128, one level below the symmetric grid) then
  ``QuantizeLinear``/``DequantizeLinear``: uint8 with zero point 0 for unsigned inputs (after ReLU), symmetric
  for signed ones. Signed 1-bit activations (+-m, no zero level) are not a linear grid and are exported as
  ``Where(x >= 0, m, -m)``;
- the integer types follow ``int8_form`` (:mod:`hwsearch.hardware.cpu`): ``portable`` (default) stores 8-bit
  weight grids as uint8 with zero point 128 and signed activations as uint8 with zero point 128, so that the
  fused integer kernels are exact on x86 CPUs without VNNI too; ``s8`` stores int8 (zero point 0) throughout,
  exact on x86 with VNNI and on aarch64. Both forms hold the same values; weights of at most 7 bits are int8 in
  both (they cannot saturate);
- layers at 32 bits stay float; the policy, calibration and int8 form are in the model's ``metadata_props``.

``style`` chooses what a layer with integer weights *and* activations becomes:

- ``qdq`` (default): exactly the fake-quant model. ONNX Runtime fuses such a layer into an integer kernel
  (QLinearConv / QGemm) only when its output is quantized again (a quantized layer after a ReLU/pool); a layer
  feeding a residual add, a float layer or the logits runs as a float convolution on weights it dequantizes on
  every run: slower than float, and its speed depends on its neighbours.
- ``kernels``: what ONNX Runtime runs as integer kernels whatever a layer's neighbours are, and what the
  ``ort-cpu`` target measures (:mod:`hwsearch.hardware.ort_cpu`): the integer-kernel form of
  :mod:`hwsearch.int_kernels`. Each such layer takes in its batch norm (exact: the per-channel weight scales
  absorb it) and its ReLU / ReLU6 when they alone read its output, stores its bias on the accumulator grid (as
  the fused kernel adds it), and requantizes its output: onto its reader's own input grid when a quantized layer
  alone reads it (no extra rounding), else to 8 bits over a measured range (one extra rounding: residual adds,
  the logits, a float reader). A layer with integer weights on float inputs is stored with its grid's values in
  float, so ONNX Runtime cannot fuse it into a neighbour's integer kernel: it runs float, at float speed, and its
  file saves nothing. :func:`deployed_model` is the file's graph in torch; ``hwsearch latency verify`` reports
  the top-1 agreement with it and with the plain fake-quant model.

A dequantized tensor a float-weight layer may read is dequantized per channel (the same values), so ONNX
Runtime's ``WeightBiasQuantization`` pass cannot requantize that layer's float weights to per-tensor int8.
Runtimes that fuse QDQ into integer kernels (QLinearConv) may round differently from the float reference in rare
ties; the test bounds top-1 disagreement at 1%.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.errors import ConfigError, PolicyError
from hwsearch.hardware.cpu import U8_ZERO_POINT, check_int8_form
from hwsearch.int_kernels import (
    OUTPUT_RANGE_IMAGES,
    LayerChain,
    calibrate_output_ranges,
    int_kernel_layer,
    layer_chains,
    requantizing_reader,
    tail_grid,
)
from hwsearch.io import atomic_write_with
from hwsearch.policy import FLOAT_BITS, LayerBits, Policy
from hwsearch.policy_formats import plain_policy_dict
from hwsearch.quant.apply import QuantWrapper, _set_submodule, apply_policy, quant_wrappers, quantizable_names
from hwsearch.quant.calibration import Calibration
from hwsearch.quant.quantizers import quantize_bias
from hwsearch.quantized import activation_grid, integer_weight, unpack_model

__all__ = [
    "EXPORT_STYLES",
    "ONNX_OPSET",
    "deployed_model",
    "export_onnx",
]

ONNX_OPSET = 13
EXPORT_STYLES: tuple[str, ...] = ("qdq", "kernels")


def _input_grid(wrapper: QuantWrapper, form: str) -> tuple[dict[str, Any], Tensor]:
    """A quantized layer's input grid (see ``activation_grid``) and its zero point in the exported integer type."""
    grid = activation_grid(wrapper.a_bits, wrapper.act_lo, wrapper.act_hi, wrapper.signed)
    dtype, zero = grid["dtype"], grid["zero_point"]
    if form == "portable" and dtype == torch.int8:  # same grid, shifted into uint8
        dtype, zero = torch.uint8, zero + U8_ZERO_POINT
    return grid, torch.tensor(zero, dtype=dtype)


class _Dequantize(torch.autograd.Function):
    """Integers minus per-channel zero point, times per-channel scale; exported as one ``DequantizeLinear``
    (axis 0) on an integer initializer."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:  # noqa: ARG004
        shape = (-1, *([1] * (q.dim() - 1)))
        return (q.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g: Any, q: Any, scale: Any, zero_point: Any) -> Any:
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=0)


class _QuantDequant(torch.autograd.Function):
    """Per-tensor quantize then dequantize; exported as a ``QuantizeLinear``/``DequantizeLinear`` pair."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:  # noqa: ARG004
        info = torch.iinfo(zero_point.dtype)
        zp = zero_point.float()
        return ((x / scale).round() + zp).clamp(info.min, info.max).sub(zp) * scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102 - straight through
        return grad, None, None

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any) -> Any:
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


class _QuantDequantChannels(torch.autograd.Function):
    """:class:`_QuantDequant` whose ``DequantizeLinear`` repeats the scale per channel (axis 1): the same values,
    but ONNX Runtime's ``WeightBiasQuantization`` pass (which requantizes the float weights of a Conv / Gemm fed by
    a per-tensor ``DequantizeLinear`` to per-tensor int8, changing them) leaves a float-weight reader alone."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, scales: Tensor, zero_points: Tensor) -> Tensor:  # noqa: ARG004
        return _QuantDequant.forward(ctx, x, scale, zero_point)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # noqa: D102
        return grad, None, None, None, None

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any, scales: Any, zero_points: Any) -> Any:
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scales, zero_points, axis_i=1)


class _OnnxQuantLayer(nn.Module):
    """Export-only stand-in for a :class:`QuantWrapper`: same values, built from ONNX-representable ops."""

    act_lo: Tensor  # buffers (when the activations are quantized), declared for the type checker
    act_hi: Tensor
    act_scale: Tensor
    act_zero_point: Tensor
    weight_int: Tensor
    weight_scale: Tensor
    weight_zero_point: Tensor
    out_scale: Tensor
    out_zero_point: Tensor
    conv_args: tuple[Any, ...]

    def __init__(
        self,
        wrapper: QuantWrapper,
        form: str,
        out_grid: tuple[Tensor, Tensor] | None = None,
        bn: nn.Module | None = None,
        post: str | None = None,
        float_weights: bool = False,
        tail: bool = False,
    ) -> None:
        super().__init__()
        layer = wrapper.layer
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            if layer.padding_mode != "zeros":
                raise ConfigError(f"ONNX export supports zero-padded convolutions only, not {layer.padding_mode!r}")
            self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        self.w_quant = wrapper.w_bits != FLOAT_BITS and not float_weights
        if float_weights and wrapper.w_bits != FLOAT_BITS:  # the grid's values, stored float (no DequantizeLinear)
            q, scale = integer_weight(layer.weight, wrapper.w_bits)
            self.weight = nn.Parameter(q.float() * scale.reshape(-1, *([1] * (q.dim() - 1))), requires_grad=False)
        if bn is not None and not self.w_quant:
            raise ConfigError("a batch norm is folded only into a layer with integer weights")
        if self.w_quant:
            q, scale = integer_weight(layer.weight, wrapper.w_bits)
            if bn is not None:  # exact: y = m * (conv + b) + shift, and m goes into the per-channel weight scale
                assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and bn.running_var is not None
                gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(bn.running_var)
                beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(bn.running_var)
                m = gamma / torch.sqrt(bn.running_var.float() + bn.eps)
                shift = beta - bn.running_mean.float() * m  # type: ignore[union-attr]
                flip = torch.where(m < 0, -1, 1).to(torch.int8).reshape(-1, *([1] * (q.dim() - 1)))
                q = q * flip  # the symmetric grid holds -q
                scale = scale * m.abs()
                bias = shift if bias is None else bias * m + shift
            zero_point = torch.zeros(q.shape[0], dtype=torch.int8)
            if form == "portable" and wrapper.w_bits == 8:  # |q| up to 127 saturates u8s8 kernels without VNNI
                q = (q.to(torch.int16) + U8_ZERO_POINT).to(torch.uint8)
                zero_point = torch.full((q.shape[0],), U8_ZERO_POINT, dtype=torch.uint8)
            self.register_buffer("weight_int", q)
            self.register_buffer("weight_scale", scale)
            self.register_buffer("weight_zero_point", zero_point)
        elif not float_weights:
            self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.post = post
        self.act = "float"
        if wrapper.a_bits != FLOAT_BITS:
            grid, zero_t = _input_grid(wrapper, form)
            saturates = wrapper.a_bits == 8 and not wrapper.signed  # uint8's [0, 255] is the grid's own range
            self.act = "binary" if grid["binary"] else ("qdq" if saturates else "clip-qdq")
            self.register_buffer("act_scale", grid["scale"].clone())
            self.register_buffer("act_zero_point", zero_t)
            self.register_buffer("act_lo", grid["clip_lo"].clone())
            self.register_buffer("act_hi", grid["clip_hi"].clone())
        self.out_q = out_grid is not None
        if out_grid is not None:
            self.register_buffer("out_scale", out_grid[0].clone())
            self.register_buffer("out_zero_point", out_grid[1].clone())
        # a dequantized tensor that a float-weight layer may read (this layer's own input when its weights are
        # float; a tail output, read by whatever follows) is dequantized per channel (_QuantDequantChannels)
        self.in_channels = 0
        if self.act in ("qdq", "clip-qdq") and not self.w_quant:
            groups = int(layer.groups) if isinstance(layer, nn.Conv2d) else 1
            self.in_channels = int(layer.weight.shape[1]) * groups
            self._per_channel("act", self.in_channels)
        self.out_channels = int(layer.weight.shape[0]) if (tail and self.out_q) else 0
        if self.out_channels:
            self._per_channel("out", self.out_channels)
        if out_grid is not None and self.bias is not None and self.w_quant and self.act in ("qdq", "clip-qdq"):
            # an integer kernel adds its bias as an int32 on the accumulator's grid (input scale x weight scale):
            # ONNX Runtime rounds a float bias onto it when it fuses the layer, so the file holds it rounded and its
            # float reading, the fused kernel and :func:`deployed_model` all add the same bias
            self.bias.data = quantize_bias(self.bias.data, self.act_scale * self.weight_scale)

    def _per_channel(self, which: str, channels: int) -> None:
        self.register_buffer(f"{which}_scales", getattr(self, f"{which}_scale").reshape(1).repeat(channels))
        self.register_buffer(f"{which}_zero_points", getattr(self, f"{which}_zero_point").reshape(1).repeat(channels))

    def _qdq(self, x: Tensor, which: str, channels: int) -> Tensor:
        scale, zero = getattr(self, f"{which}_scale"), getattr(self, f"{which}_zero_point")
        if not channels:
            return _QuantDequant.apply(x, scale, zero)
        return _QuantDequantChannels.apply(
            x, scale, zero, getattr(self, f"{which}_scales"), getattr(self, f"{which}_zero_points")
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.act == "binary":
            x = torch.where(x >= 0, self.act_hi, -self.act_hi)
        elif self.act != "float":
            if self.act == "clip-qdq":
                x = torch.clamp(x, self.act_lo, self.act_hi)
            x = self._qdq(x, "act", self.in_channels)
        w = (
            _Dequantize.apply(self.weight_int, self.weight_scale, self.weight_zero_point)
            if self.w_quant
            else self.weight
        )
        y = F.conv2d(x, w, self.bias, *self.conv_args) if self.is_conv else F.linear(x, w, self.bias)
        if self.post == "relu":
            y = F.relu(y)
        elif self.post == "relu6":
            y = F.relu6(y)
        if self.out_q:
            y = self._qdq(y, "out", self.out_channels)
        return y


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """Adaptive pooling's bins: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class _StaticPool(nn.Module):
    """Adaptive max/avg pooling for one known input size, in ops ONNX has for any size ratio.

    The exporter refuses adaptive pooling whose output size does not divide the input size (smallcnn's 7 -> 3).
    Uniform bins become a plain pooling window; others are sliced and reduced one bin at a time.
    """

    def __init__(self, kind: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.kind = kind
        self.bins = (_bins(in_hw[0], out_hw[0]), _bins(in_hw[1], out_hw[1]))
        self.window: tuple[tuple[int, int], tuple[int, int]] | None = None
        kernels = [{e - s for s, e in b} for b in self.bins]
        strides = [{b[i + 1][0] - b[i][0] for i in range(len(b) - 1)} or {1} for b in self.bins]
        starts_ok = all(b[0][0] == 0 for b in self.bins)
        if all(len(k) == 1 for k in kernels) and all(len(s) == 1 for s in strides) and starts_ok:
            k = (next(iter(kernels[0])), next(iter(kernels[1])))
            st = (next(iter(strides[0])), next(iter(strides[1])))
            self.window = (k, st)

    def _reduce(self, x: Tensor, dim: int) -> Tensor:
        return x.amax(dim=dim, keepdim=True) if self.kind == "max" else x.mean(dim=dim, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.window is not None:
            k, st = self.window
            return F.max_pool2d(x, k, st) if self.kind == "max" else F.avg_pool2d(x, k, st)
        rows = torch.cat([self._reduce(x[..., s:e, :], -2) for s, e in self.bins[0]], dim=-2)
        return torch.cat([self._reduce(rows[..., s:e], -1) for s, e in self.bins[1]], dim=-1)


def _replace_adaptive_pools(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Swap every adaptive 2-D pool for a :class:`_StaticPool` sized by one forward pass at ``shape``."""
    pools = {n: m for n, m in model.named_modules() if isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d))}
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str) -> None:
        seen.setdefault(name, (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:])))  # type: ignore[arg-type]  # (H, W) pairs

    handles = [m.register_forward_hook(functools.partial(hook, name=n)) for n, m in pools.items()]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape)))
    finally:
        for h in handles:
            h.remove()
    for name, (in_hw, out_hw) in seen.items():
        kind = "max" if isinstance(pools[name], nn.AdaptiveMaxPool2d) else "avg"
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _StaticPool(kind, in_hw, out_hw))


def _policy_of(qmodel: nn.Module) -> Policy:
    wrappers = dict(quant_wrappers(qmodel))
    bits = {
        n: LayerBits(wrappers[n].w_bits, wrappers[n].a_bits) if n in wrappers else LayerBits(FLOAT_BITS, FLOAT_BITS)
        for n in quantizable_names(qmodel)
    }
    return Policy(bits, {})


def deployed_model(
    qmodel: nn.Module,
    input_shape: Sequence[int],
    *,
    style: str = "kernels",
    output_ranges: dict[str, tuple[float, float]] | None = None,
    int8_form: str = "portable",
) -> nn.Module:
    """The ONNX file's graph as a torch model (eval mode, on the CPU): what :func:`export_onnx` exports, so its
    answers are the deployed model's up to float rounding. For the ``kernels`` style it is the fake-quant model
    with the deployment's own roundings: each integer-kernel layer's bias on its accumulator grid, and an 8-bit
    output where no quantized layer alone reads it (``output_ranges``, :func:`calibrate_output_ranges`)."""
    form = check_int8_form(int8_form)
    if style not in EXPORT_STYLES:
        raise ConfigError(f"ONNX export style {style!r} is not one of {', '.join(EXPORT_STYLES)}")
    shape = tuple(int(d) for d in input_shape)
    chains = layer_chains(qmodel, shape) if style == "kernels" else {}
    ranges = dict(output_ranges or {})
    export_model = copy.deepcopy(qmodel).cpu().eval()
    wrappers = dict(quant_wrappers(export_model))
    for name, wrapper in list(wrappers.items()):
        parent_name, _, child = name.rpartition(".")
        parent = export_model.get_submodule(parent_name) if parent_name else export_model
        out_grid, bn, post, tail = None, None, None, False
        if style == "kernels" and int_kernel_layer(wrapper.w_bits, wrapper.a_bits):
            chain = chains.get(name, LayerChain())
            reader = requantizing_reader(chain, wrappers)
            if reader is not None:
                # the reader quantizes this output on its own input grid: requantizing onto that grid adds nothing.
                # Always as uint8 (a signed grid with zero point 128), since ONNX Runtime fuses a kernel whose
                # output type is its input's
                grid, _ = _input_grid(reader, form)
                zero = U8_ZERO_POINT if reader.signed else 0
                out_grid = (grid["scale"], torch.tensor(zero, dtype=torch.uint8))
            else:
                out_grid, tail = tail_grid(name, ranges), True
            if chain.bn is not None:
                bn = export_model.get_submodule(chain.bn)
            for folded in (chain.bn, chain.act):  # folded into the layer: the module itself becomes a no-op
                if folded is not None:
                    _set_submodule(export_model, folded, nn.Identity())
            post = chain.act_kind
        # kernels style: a layer with integer weights on float inputs keeps its grid's values in float, so ONNX
        # Runtime cannot fuse it into a neighbour's integer kernel: it runs a float kernel wherever it sits
        float_weights = style == "kernels" and wrapper.w_bits != FLOAT_BITS and wrapper.a_bits == FLOAT_BITS
        setattr(parent, child, _OnnxQuantLayer(wrapper, form, out_grid, bn, post, float_weights, tail))
    _replace_adaptive_pools(export_model, shape)
    return export_model


def export_onnx(
    qmodel_or_ws: Any,
    policy: Policy | None,
    calibration: Calibration | None,
    path: str | os.PathLike[str],
    input_shape: Sequence[int] | None = None,
    *,
    opset: int = ONNX_OPSET,
    int8_form: str = "portable",
    style: str = "qdq",
    output_ranges: dict[str, tuple[float, float]] | None = None,
    pack_int4: bool = True,
) -> Path:
    """Write a QDQ ONNX model of the fake-quant network (see the module docstring for the representation).

    ``int8_form``: ``portable`` (exact on every CPU), ``s8`` (int8 throughout: exact and fastest on x86 with
    VNNI and on aarch64, wrong on x86 without VNNI) or ``auto`` (the form for this machine's CPU).

    ``style``: ``qdq`` (the fake-quant model exactly) or ``kernels`` (integer-kernel layers requantize their
    output, see the module docstring); ``kernels`` needs ``output_ranges`` (``{layer: (lo, hi)}``, see
    :func:`calibrate_output_ranges`) unless ``qmodel_or_ws`` is a Workspace, whose training images provide them.

    ``pack_int4``: store weights whose integers fit 4 bits packed (opset 21, :mod:`hwsearch.onnx_pack`).

    ``qmodel_or_ws``: a Workspace or float model (``policy`` and ``calibration`` are applied), or a model
    ``apply_policy`` already quantized (``policy`` may be None; if given it must match). ``input_shape`` is
    (C, H, W) (default: the workspace's); the batch axis is dynamic.
    """
    try:
        import onnx
    except ImportError:  # pragma: no cover - optional dependency
        raise ConfigError("ONNX export needs the onnx package; pip install 'hwsearch[onnx]'") from None
    if opset < 13:
        raise ConfigError(f"opset {opset} lacks per-channel DequantizeLinear; use 13 or later")
    form = check_int8_form(int8_form)
    if style not in EXPORT_STYLES:
        raise ConfigError(f"ONNX export style {style!r} is not one of {', '.join(EXPORT_STYLES)}")
    model, ws_cal, _, ws_shape = unpack_model(qmodel_or_ws)
    calibration = calibration if calibration is not None else ws_cal
    shape = tuple(int(d) for d in (input_shape if input_shape is not None else (ws_shape or ())))
    if len(shape) != 3 or any(d <= 0 for d in shape):
        raise ConfigError(f"input_shape {shape!r} must be (C, H, W) with positive sizes")
    if any(isinstance(m, QuantWrapper) for m in model.modules()):
        qmodel = model
        actual = _policy_of(qmodel)
        if policy is not None and policy != actual:
            raise PolicyError("the policy given differs from the bit widths the quantized model carries")
        policy = policy.with_meta() if policy is not None else actual
    else:
        if policy is None:
            raise PolicyError("a float model needs a policy to export a quantized ONNX model")
        qmodel = apply_policy(model, policy, calibration)
    ranges: dict[str, tuple[float, float]] = {}
    if style == "kernels":
        if output_ranges is None:
            if not hasattr(qmodel_or_ws, "split"):
                raise ConfigError("the 'kernels' ONNX style needs output_ranges, or a Workspace to calibrate them on")
            images, _ = qmodel_or_ws.split("train", OUTPUT_RANGE_IMAGES)
            output_ranges = calibrate_output_ranges(qmodel, images)
        ranges = {n: (float(lo), float(hi)) for n, (lo, hi) in output_ranges.items()}
    export_model = deployed_model(qmodel, shape, style=style, output_ranges=ranges, int8_form=form)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            export_model,
            (torch.zeros((1, *shape)),),
            buf,  # type: ignore[arg-type]  # it writes to file objects too; its stub lists only paths
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    props = {
        "hwsearch.policy": json.dumps(plain_policy_dict(policy)),
        "hwsearch.calibration": json.dumps(None if calibration is None else calibration.to_dict()),
        "hwsearch.quantization": "weights: integer storage of the b-bit grid + per-channel DequantizeLinear; "
        "activations: Clip (below 8 bits) + QuantizeLinear/DequantizeLinear; 32-bit layers float",
        "hwsearch.style": style,
        "hwsearch.output_ranges": json.dumps(ranges),
        "hwsearch.int8_form": form
        + (
            " (8-bit weights and signed activations as uint8 with zero point 128: exact on every CPU)"
            if form == "portable"
            else " (int8 throughout: exact on x86 with VNNI and on aarch64)"
        ),
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if pack_int4:
        from hwsearch.onnx_pack import pack_low_bit_weights

        proto, packed = pack_low_bit_weights(proto)
        if packed:
            entry = proto.metadata_props.add()
            entry.key, entry.value = "hwsearch.packed_weights", json.dumps(packed)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, _write)
