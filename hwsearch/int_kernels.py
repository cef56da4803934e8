"""The integer-kernel form of a quantized model: what the ONNX ``kernels`` export runs and an ``ort-cpu`` search
scores.

A layer with integer weights and linearly quantized inputs runs as one integer kernel (:func:`int_kernel_layer`).
Its batch norm and lone ReLU / ReLU6 fold into it (:func:`layer_chains`, through :mod:`hwsearch.quant.trace`),
and its int32 result is requantized: onto its reader's own input grid where one quantized layer alone reads it,
else onto an 8-bit grid over the range :func:`calibrate_output_ranges` measures (residual adds, the logits, float
readers), and its bias is added as an int32 on the accumulator's grid. :func:`add_deployment_roundings` puts
those roundings on the fake-quant model itself (:class:`~hwsearch.quant.QuantWrapper` s kept), so a search
scores what ONNX Runtime runs; :mod:`hwsearch.onnx_export` writes the same form as a file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsearch.errors import ConfigError
from hwsearch.policy import FLOAT_BITS
from hwsearch.quant.apply import QuantWrapper, _set_submodule, quant_wrappers
from hwsearch.quant.quantizers import quantize_output
from hwsearch.quant.trace import trace_calls

__all__ = [
    "OUTPUT_RANGE_IMAGES",
    "LayerChain",
    "add_deployment_roundings",
    "calibrate_output_ranges",
    "int_kernel_layer",
    "layer_chains",
    "requantizing_reader",
    "tail_grid",
    "u8_grid",
    "with_deployment_roundings",
]

OUTPUT_RANGE_IMAGES = 512  # images whose quantized-model outputs set the ``kernels`` style's output ranges


def int_kernel_layer(w_bits: int, a_bits: int) -> bool:
    """Whether a layer at these widths has integer weights and linearly quantized inputs (1-bit signed inputs are
    a sign function, not a grid): the layers an integer kernel can run."""
    return w_bits != FLOAT_BITS and a_bits not in (FLOAT_BITS, 1)


@dataclass(frozen=True)
class LayerChain:
    """What follows an integer-kernel layer and is folded into it by the ``kernels`` style: its batch norm (exact:
    the per-channel weight scales absorb it) and its ReLU / ReLU6 (then the output grid starts at 0)."""

    bn: str | None = None
    act: str | None = None
    act_kind: str | None = None
    feeds: str | None = None  # the quantized layer that alone reads the folded output, if any

    def end(self, name: str) -> str:
        """The module whose output the layer's requantized output stands for."""
        return self.act or self.bn or name


def layer_chains(model: nn.Module, input_shape: Sequence[int]) -> dict[str, LayerChain]:
    """For each integer-kernel layer of a quantized ``model``, the batch norm and activation modules that consume
    its output and nothing else (found by one forward pass: a module whose input is the very tensor the layer
    returned, called once). Activations used twice (torchvision's shared ``relu``) are not folded."""
    graph = trace_calls(model, input_shape, (QuantWrapper, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6))
    chains: dict[str, LayerChain] = {}
    for call in graph.calls:
        mod = call.module
        if not isinstance(mod, QuantWrapper) or not int_kernel_layer(mod.w_bits, mod.a_bits):
            continue
        if graph.counts[call.name] != 1:
            continue
        bn = graph.only_reader(call, (nn.BatchNorm2d, nn.BatchNorm1d))
        act = graph.only_reader(bn or call, (nn.ReLU, nn.ReLU6))
        reader = graph.only_reader(act or bn or call, (QuantWrapper,))
        chains[call.name] = LayerChain(
            bn=bn.name if bn is not None else None,
            act=act.name if act is not None else None,
            act_kind=None if act is None else ("relu6" if isinstance(act.module, nn.ReLU6) else "relu"),
            feeds=reader.name if reader is not None else None,
        )
    return chains


def calibrate_output_ranges(
    qmodel: nn.Module, images: Tensor, batch_size: int = 256, chains: dict[str, LayerChain] | None = None
) -> dict[str, tuple[float, float]]:
    """Min and max of each integer-kernel layer's output (after the batch norm and activation ``chains`` fold into
    it; default: found by :func:`layer_chains`) over ``images``: the ``kernels`` style's output grids."""
    if chains is None:
        chains = layer_chains(qmodel, tuple(images.shape[1:]))
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str) -> None:
        lows[name] = min(lows.get(name, 0.0), float(out.min()))
        highs[name] = max(highs.get(name, 0.0), float(out.max()))

    modules = dict(qmodel.named_modules())
    handles = [
        modules[chain.end(n)].register_forward_hook(functools.partial(hook, name=n)) for n, chain in chains.items()
    ]
    device = next(qmodel.parameters()).device
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                qmodel(images[i : i + batch_size].to(device))
    finally:
        qmodel.train(was_training)
        for h in handles:
            h.remove()
    return {n: (lows[n], highs[n]) for n in lows}


def u8_grid(lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Scale and zero point (uint8) of an asymmetric uint8 grid over [lo, hi] (which holds 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = int(min(max(round(-lo / scale), 0), 255))
    return torch.tensor(scale, dtype=torch.float32), torch.tensor(zero, dtype=torch.uint8)


class _OutputGrid(nn.Module):
    """A module whose output an integer kernel hands to a float reader: the module, then the 8-bit output grid."""

    def __init__(self, inner: nn.Module, scale: float, zero_point: int) -> None:
        super().__init__()
        self.inner = inner
        self.scale = scale
        self.zero_point = zero_point

    def forward(self, x: Tensor) -> Tensor:
        return quantize_output(self.inner(x), self.scale, self.zero_point)


def requantizing_reader(chain: LayerChain, wrappers: Mapping[str, QuantWrapper]) -> QuantWrapper | None:
    """The integer-kernel layer that alone reads a layer's (folded) output, if any: the layer's output is then
    requantized onto that reader's own input grid (what the reader's quantizer does anyway); otherwise it is a
    tail, requantized to 8 bits over its measured range (:func:`tail_grid`)."""
    reader = wrappers.get(chain.feeds or "")
    return reader if reader is not None and int_kernel_layer(reader.w_bits, reader.a_bits) else None


def tail_grid(name: str, output_ranges: Mapping[str, tuple[float, float]]) -> tuple[Tensor, Tensor]:
    """A tail layer's 8-bit output grid (scale, uint8 zero point) over its measured range."""
    if name not in output_ranges:
        raise ConfigError(f"output_ranges has no range for integer-kernel layer {name!r}")
    return u8_grid(*output_ranges[name])


def add_deployment_roundings(
    qmodel: nn.Module,
    input_shape: Sequence[int],
    output_ranges: Mapping[str, tuple[float, float]],
    chains: dict[str, LayerChain] | None = None,
) -> nn.Module:
    """Give a fake-quant model (in place; returned) the roundings the ``kernels`` export adds, keeping its
    :class:`QuantWrapper` s (their gradient modes, their names): every integer-kernel layer's bias on its
    accumulator grid, and, on every tail, the 8-bit grid over its ``output_ranges`` entry
    (:func:`calibrate_output_ranges` of the model before this call; ``chains`` default: :func:`layer_chains`).
    Its answers are then :func:`~hwsearch.onnx_export.deployed_model`'s, up to float rounding."""
    if chains is None:
        chains = layer_chains(qmodel, input_shape)
    wrappers = dict(quant_wrappers(qmodel))
    for name, wrapper in wrappers.items():
        if not int_kernel_layer(wrapper.w_bits, wrapper.a_bits):
            continue
        wrapper.integer_bias = True
        chain = chains.get(name, LayerChain())
        if requantizing_reader(chain, wrappers) is not None:
            continue
        scale, zero = tail_grid(name, output_ranges)
        end = chain.end(name)
        if end == name:
            wrapper.out_grid = (float(scale), int(zero))
        else:
            _set_submodule(qmodel, end, _OutputGrid(qmodel.get_submodule(end), float(scale), int(zero)))
    return qmodel


def with_deployment_roundings(qmodel: nn.Module, images: Tensor) -> nn.Module:
    """``qmodel`` (eval mode) with the ``kernels`` export's roundings, its tails' ranges measured on ``images``
    (the export's own: the first :data:`OUTPUT_RANGE_IMAGES` training images), tracing the model once: what an
    ``ort-cpu`` search scores per policy (``EvaluatorConfig.export_style``) and ``compare`` reports."""
    shape = tuple(images.shape[1:])
    chains = layer_chains(qmodel, shape)
    ranges = calibrate_output_ranges(qmodel, images, chains=chains)
    return add_deployment_roundings(qmodel, shape, ranges, chains)
