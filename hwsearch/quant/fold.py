"""Batch norms folded into the layers they follow, for scoring quantized models faster.

In eval mode a batch norm after a convolution is a per-channel affine map, so ``bn(conv(x, W))`` equals
``conv(x, W * g) + b'`` with ``g = gamma / sqrt(var + eps)``. Weight quantization is symmetric and per output
channel over a range that scales with the channel (:func:`hwsearch.quant.quantizers.quantize_weight`), so
quantizing ``W * g`` gives ``g`` times the quantized ``W``: the folded model has the same fake-quantized function,
up to float rounding, with one module less per layer in every forward and backward pass (the attack's cost).
The ONNX ``kernels`` export folds the same way after quantization (:mod:`hwsearch.onnx_export`).

Only eval-mode scoring uses it: training and QAT need the batch norms' own statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hwsearch.quant.apply import _set_submodule
from hwsearch.quant.trace import trace_calls
from hwsearch.runtime import to_device

__all__ = ["FOLD_TOLERANCE", "fold_batch_norms", "foldable_pairs"]

FOLD_TOLERANCE = 1e-4  # largest output change, relative to the largest logit, a fold may cause on the probe


def foldable_pairs(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, str]]:
    """``(conv, batch norm)`` names where the batch norm is the one module reading the convolution's output and
    each is called once (:func:`hwsearch.quant.trace.trace_calls`). A functional read the hooks cannot see is
    caught by :func:`fold_batch_norms`' output check."""
    graph = trace_calls(model, input_shape, (nn.Conv2d, nn.BatchNorm2d))
    pairs = []
    for call in graph.calls:
        if not isinstance(call.module, nn.Conv2d) or graph.counts[call.name] != 1:
            continue
        bn = graph.only_reader(call, (nn.BatchNorm2d,))
        if bn is not None and bn.module.track_running_stats:
            pairs.append((call.name, bn.name))
    return pairs


def fold_batch_norms(model: nn.Module, input_shape: Sequence[int], probe: Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable batch norm folded into its convolution (which keeps its
    name, so policies and calibration ranges still apply) and replaced by ``nn.Identity``; ``model`` itself (its
    mode untouched) when nothing folds.

    The copy's output on ``probe`` (default: seeded uniform images) must match the model's within
    :data:`FOLD_TOLERANCE` of the largest logit; otherwise ``model`` itself is returned, since a convolution's
    output is read somewhere the hooks did not see. So it is when nothing folds, or torch cannot fuse (a
    convolution with parametrizations, say): folding only ever saves time, and no copy is kept for nothing.
    """
    pairs = foldable_pairs(model, input_shape)
    if not pairs:
        return model
    was_training = model.training
    model.eval()
    try:
        folded = copy.deepcopy(model)
        param = next(model.parameters())
        try:
            for conv_name, bn_name in pairs:
                conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
                assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn))
                _set_submodule(folded, bn_name, nn.Identity())
            to_device(folded, param.device)  # the fused weights in the device's layout, as the model's were
            if probe is None:
                g = torch.Generator().manual_seed(0)
                probe = torch.rand((8, *input_shape), generator=g)
            probe = probe.to(device=param.device, dtype=param.dtype)
            with torch.no_grad():
                want, got = model(probe), folded(probe)
        except (RuntimeError, TypeError, ValueError, AttributeError):
            return model
        scale = float(want.abs().max()) or 1.0
        if not torch.isfinite(got).all() or float((got - want).abs().max()) > FOLD_TOLERANCE * scale:
            return model
        return folded
    finally:
        model.train(was_training)
