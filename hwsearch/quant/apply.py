"""``apply_policy``: the one place a Policy turns a float model into a fake-quantized copy."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.errors import PolicyError
from hwsearch.layers import QUANTIZABLE
from hwsearch.policy import FLOAT_BITS, Policy
from hwsearch.quant.calibration import Calibration
from hwsearch.quant.quantizers import (
    activation_step,
    quantize_activation,
    quantize_bias,
    quantize_output,
    quantize_weight_and_step,
)

__all__ = [
    "QuantWrapper",
    "GRADIENT_MODES",
    "apply_policy",
    "quantizable_names",
    "quant_wrappers",
    "gradient_mode",
    "remove_quantizers",
]

GRADIENT_MODES = ("ste", "shadow")


class QuantWrapper(nn.Module):
    """A Conv2d/Linear whose input activations and weights are fake-quantized.

    The wrapped float layer lives at ``.layer`` so its parameters stay trainable (QAT). ``grad_mode``
    chooses how gradients cross the quantizers: ``ste`` (straight-through) or ``shadow`` (the forward value
    is quantized, the backward pass is the float layer's), which attacks use against gradient masking.
    """

    layer: nn.Conv2d | nn.Linear
    act_lo: Tensor  # buffers, declared for the type checker (nn.Module.__getattr__ types them Tensor | Module)
    act_hi: Tensor

    def __init__(self, layer: nn.Module, w_bits: int, a_bits: int, lo: float = 0.0, hi: float = 1.0) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):  # QUANTIZABLE, spelt out so the type narrows
            raise TypeError(f"cannot quantize {type(layer).__name__}; only Conv2d and Linear")
        self.layer = layer
        self.w_bits = int(w_bits)
        self.a_bits = int(a_bits)
        self.register_buffer("act_lo", torch.tensor(float(lo)))
        self.register_buffer("act_hi", torch.tensor(float(hi)))
        # a plain bool, fixed at construction: reading the buffer in forward would sync with the GPU per layer
        self.signed = float(lo) < 0
        self.grad_mode = "ste"
        # the deployment's roundings (hwsearch.onnx_export.add_deployment_roundings): the bias on the integer
        # accumulator's grid, and an 8-bit output grid (scale, zero point) where a float reader takes the output
        self.integer_bias = False
        self.out_grid: tuple[float, int] | None = None
        self._cached: tuple[tuple[int, int, int], Tensor, Tensor | None] | None = None

    def _weight_and_step(self) -> tuple[Tensor, Tensor | None]:
        weight = self.layer.weight
        if self.w_bits == FLOAT_BITS:
            return weight, None
        if self.training:
            self._cached = None
            return quantize_weight_and_step(weight, self.w_bits)
        key = (weight._version, weight.data_ptr(), self.w_bits)
        if self._cached is None or self._cached[0] != key:
            # a normal tensor even when first called under inference_mode, so attacks can reuse it later
            with torch.inference_mode(False), torch.no_grad():
                self._cached = (key, *quantize_weight_and_step(weight, self.w_bits))
        return self._cached[1], self._cached[2]

    def quantized_weight(self) -> Tensor:
        """Quantized weight; in eval mode it is cached until the weight changes (attacks call it per step)."""
        return self._weight_and_step()[0]

    def quantized_bias(self) -> Tensor | None:
        """The layer's bias, on the accumulator grid (input step x each channel's weight step) when
        ``integer_bias`` is set."""
        bias = self.layer.bias
        if bias is None or not self.integer_bias:
            return bias
        step = self._weight_and_step()[1]
        grid = activation_step(self.a_bits, self.act_lo, self.act_hi, self.signed)
        if step is None or grid is None:
            return bias
        return quantize_bias(bias, step * grid)

    def quantized_input(self, x: Tensor) -> Tensor:
        return quantize_activation(x, self.a_bits, self.act_lo, self.act_hi, self.signed)

    def _op(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                return layer._conv_forward(x, w, bias)
            return F.conv2d(x, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.linear(x, w, bias)

    def _shadow_needs_float_forward(self) -> bool:
        """Whether the shadow gradient must run the float layer forward: only when a parameter may want its
        gradient (QAT); an attack freezes them, and then :class:`_ShadowGrad` gives the input's gradient alone."""
        layer = self.layer
        if any(p.requires_grad for p in layer.parameters()):
            return True
        return isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str))

    def forward(self, x: Tensor) -> Tensor:
        if self.grad_mode == "shadow" and torch.is_grad_enabled() and not self._shadow_needs_float_forward():
            out = _ShadowGrad.apply(x, self)
        elif self.grad_mode == "shadow" and torch.is_grad_enabled():
            with torch.no_grad():  # the quantized value only; the gradient is the float layer's
                out = self._op(self.quantized_input(x), self.quantized_weight(), self.quantized_bias())
            ref = self._op(x, self.layer.weight, self.layer.bias)
            out = out + (ref - ref.detach())  # value: the quantized output exactly; gradient: the float one
        else:
            out = self._op(self.quantized_input(x), self.quantized_weight(), self.quantized_bias())
        return out if self.out_grid is None else quantize_output(out, *self.out_grid)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}, range=[{float(self.act_lo):.4g}, {float(self.act_hi):.4g}]"


class _ShadowGrad(torch.autograd.Function):
    """The shadow mode's output for frozen parameters: the quantized layer's value, the float layer's gradient
    with respect to the input.

    The general form, ``q + (ref - ref.detach())``, runs the float layer forward only for its autograd record and
    adds two passes over the output; here the input's gradient comes straight from the float weight
    (``convolution_backward`` with only the input's gradient asked for, as autograd would have run it, or
    ``grad @ W``). The value is ``q`` itself, where the general form gives ``q + 0``: the same numbers.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, wrapper: QuantWrapper) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.layer = wrapper.layer
        return wrapper._op(wrapper.quantized_input(x), wrapper.quantized_weight(), wrapper.quantized_bias())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        if isinstance(layer, nn.Linear):
            return grad @ layer.weight, None
        grad_x = torch.ops.aten.convolution_backward(
            grad,
            x,
            layer.weight,
            None,
            layer.stride,
            layer.padding,
            layer.dilation,
            False,
            [0],
            layer.groups,
            (True, False, False),
        )[0]
        return grad_x, None


def quantizable_names(model: nn.Module) -> list[str]:
    """Qualified names of the layers a policy may assign bits to (float Conv2d/Linear, or already wrapped)."""
    modules = list(model.named_modules())
    inner = {f"{n}.layer" for n, m in modules if isinstance(m, QuantWrapper)}
    return [n for n, m in modules if isinstance(m, QuantWrapper) or (isinstance(m, QUANTIZABLE) and n not in inner)]


def quant_wrappers(model: nn.Module) -> Iterator[tuple[str, QuantWrapper]]:
    for name, mod in model.named_modules():
        if isinstance(mod, QuantWrapper):
            yield name, mod


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_policy(model: nn.Module, policy: Policy, calibration: Calibration | None = None) -> nn.Module:
    """Return a fake-quantized deep copy of ``model``; the input model is never touched.

    Layers at 32/32 bits stay plain float modules. Activation quantization needs the input ranges that
    :func:`hwsearch.quant.calibrate` measured on the float model.
    """
    if any(isinstance(m, QuantWrapper) for m in model.modules()):
        raise PolicyError("model is already quantized; apply a policy to the float model")
    policy.check_against(quantizable_names(model))
    qmodel = copy.deepcopy(model)
    for name, bits in policy.layers.items():
        if bits.w == FLOAT_BITS and bits.a == FLOAT_BITS:
            continue
        lo, hi = 0.0, 1.0
        if bits.a != FLOAT_BITS:
            if calibration is None or name not in calibration.ranges:
                raise PolicyError(
                    f"layer {name!r} quantizes activations to {bits.a} bits but has no calibrated range; "
                    "pass calibration=calibrate(model, batches)"
                )
            r = calibration[name]
            lo, hi = r.lo, r.hi
        _set_submodule(qmodel, name, QuantWrapper(qmodel.get_submodule(name), bits.w, bits.a, lo, hi))
    return qmodel


def remove_quantizers(qmodel: nn.Module) -> nn.Module:
    """A float copy of a fake-quantized model: every QuantWrapper replaced by its (possibly fine-tuned) layer.

    Its state dict has the original model's keys, so it saves as an ordinary checkpoint.
    """
    model = copy.deepcopy(qmodel)
    for name, wrapper in list(quant_wrappers(model)):
        _set_submodule(model, name, wrapper.layer)
    return model


@contextmanager
def gradient_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily route gradients through every quantizer in ``model`` as ``mode`` (``ste``/``shadow``)."""
    if mode not in GRADIENT_MODES:
        raise ValueError(f"gradient mode {mode!r} is unknown; use one of {GRADIENT_MODES}")
    wrappers = [w for _, w in quant_wrappers(model)]
    saved = [w.grad_mode for w in wrappers]
    for w in wrappers:
        w.grad_mode = mode
    try:
        yield model
    finally:
        for w, m in zip(wrappers, saved, strict=True):
            w.grad_mode = m
