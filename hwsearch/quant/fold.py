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
import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hwsearch.runtime import to_device

__all__ = ["FOLD_TOLERANCE", "fold_batch_norms", "foldable_pairs"]

FOLD_TOLERANCE = 1e-4  # largest output change, relative to the largest logit, a fold may cause on the probe


def foldable_pairs(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, str]]:
    """``(conv, batch norm)`` names where the batch norm is the one module reading the convolution's output and
    each is called once (found by one forward pass, as :func:`hwsearch.onnx_export.layer_chains` finds its
    chains). A functional read the hooks cannot see is caught by :func:`fold_batch_norms`' output check."""
    seen: list[tuple[str, nn.Module, int, int]] = []  # (name, module, id(input), id(output)) in call order
    calls: dict[str, int] = {}
    keep: list[Tensor] = []  # holds every tensor so no id is reused during the pass

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str) -> None:
        calls[name] = calls.get(name, 0) + 1
        keep.extend([inp[0], out])
        seen.append((name, mod, id(inp[0]), id(out)))

    handles = [
        m.register_forward_hook(functools.partial(hook, name=n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]
    param = next(model.parameters())
    was_training = model.training
    model.eval()  # a training-mode pass would move the batch norms' running statistics
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    readers: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, mod, in_id, _ in seen:
        readers.setdefault(in_id, []).append((name, mod))
    pairs = []
    for name, mod, _, out_id in seen:
        users = readers.get(out_id, [])
        if (
            isinstance(mod, nn.Conv2d)
            and calls[name] == 1
            and len(users) == 1
            and isinstance(users[0][1], nn.BatchNorm2d)
            and calls[users[0][0]] == 1
            and users[0][1].track_running_stats
        ):
            pairs.append((name, users[0][0]))
    return pairs


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fold_batch_norms(model: nn.Module, input_shape: Sequence[int], probe: Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable batch norm folded into its convolution (which keeps its
    name, so policies and calibration ranges still apply) and replaced by ``nn.Identity``.

    The copy's output on ``probe`` (default: seeded uniform images) must match the model's within
    :data:`FOLD_TOLERANCE` of the largest logit; otherwise the model is returned unfolded (a copy), since a
    convolution's output is read somewhere the hooks did not see. So is a model torch cannot fuse (a convolution
    with parametrizations, say): folding only ever saves time.
    """
    was_training = model.training
    model.eval()
    try:
        folded = copy.deepcopy(model)
        pairs = foldable_pairs(folded, input_shape)
        if not pairs:
            return folded
        param = next(model.parameters())
        try:
            for conv_name, bn_name in pairs:
                conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
                assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                _set(folded, conv_name, fuse_conv_bn_eval(conv, bn))
                _set(folded, bn_name, nn.Identity())
            to_device(folded, param.device)  # the fused weights in the device's layout, as the model's were
            if probe is None:
                g = torch.Generator().manual_seed(0)
                probe = torch.rand((8, *input_shape), generator=g)
            probe = probe.to(device=param.device, dtype=param.dtype)
            with torch.no_grad():
                want, got = model(probe), folded(probe)
        except (RuntimeError, TypeError, ValueError, AttributeError):
            return copy.deepcopy(model)
        scale = float(want.abs().max()) or 1.0
        if not torch.isfinite(got).all() or float((got - want).abs().max()) > FOLD_TOLERANCE * scale:
            return copy.deepcopy(model)
        return folded
    finally:
        model.train(was_training)
