"""Which module reads which module's output: one traced forward pass, for the folds that need the answer.

Batch-norm folding for scoring (:mod:`hwsearch.quant.fold`) and the ONNX ``kernels`` export's chains
(:func:`hwsearch.onnx_export.layer_chains`) both ask "is this module the only reader of that one's output?". A
forward hook sees each call's input and output tensors; matching their identities answers it for the traced
kinds. A functional read (``y + conv(x)`` in a forward) is invisible to hooks: callers that change values check
their result.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ModuleCall", "CallGraph", "trace_calls"]


@dataclass(frozen=True)
class ModuleCall:
    """One call of a traced module, in call order, with the identities of the tensors it read and returned."""

    index: int
    name: str
    module: nn.Module
    input_id: int
    output_id: int


@dataclass(frozen=True)
class CallGraph:
    """The traced calls and how often each module was called."""

    calls: tuple[ModuleCall, ...]
    counts: dict[str, int]

    def only_reader(self, producer: ModuleCall, types: tuple[type, ...]) -> ModuleCall | None:
        """The one traced call after ``producer`` that reads its output (an in-place reader's own readers read
        its output, not this tensor), if it is of ``types`` and its module is called once."""
        tensor = producer.output_id
        users = [c for c in self.calls if c.input_id == tensor and c.index > producer.index]
        if users and users[0].output_id == tensor:
            users = users[:1]
        if len(users) == 1 and isinstance(users[0].module, types) and self.counts[users[0].name] == 1:
            return users[0]
        return None


def trace_calls(model: nn.Module, input_shape: Sequence[int], kinds: tuple[type[nn.Module], ...]) -> CallGraph:
    """Every call of a module of ``kinds`` in one eval-mode, no-grad forward pass of a zero image (the model's
    mode is restored, so no batch-norm statistic moves)."""
    calls: list[ModuleCall] = []
    counts: dict[str, int] = {}
    keep: list[Tensor] = []  # holds every tensor so no id is reused during the pass

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        keep.extend([inp[0], out])
        calls.append(ModuleCall(len(calls), name, mod, id(inp[0]), id(out)))

    handles = [
        m.register_forward_hook(functools.partial(hook, name=n))
        for n, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return CallGraph(tuple(calls), counts)
