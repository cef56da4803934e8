"""Which module reads which module's output: one traced forward pass, for the folds that need the answer.

Batch-norm folding for scoring (:mod:`hwsearch.quant.fold`) and the ONNX ``kernels`` export's chains
(:func:`hwsearch.onnx_export.layer_chains`) both ask "is this module the only reader of that one's output?". A
forward hook sees each call's input and output tensors; matching their identities answers it for the traced
kinds. A functional read (``y + conv(x)`` or ``out += identity`` in a forward) is invisible to hooks, so the same
pass records, through a ``TorchFunctionMode``, every tensor an operation outside the traced modules reads: a
module is not the only reader of a tensor that is also read that way (a mobilenet_v2 block's input feeds its
expansion conv and its residual add). Callers that change values still check their result.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["ModuleCall", "CallGraph", "trace_calls"]


@dataclass(frozen=True)
class ModuleCall:
    """One call of a traced module, in call order, with the identities of the tensors it read and returned."""

    index: int
    name: str
    module: nn.Module
    input_id: int
    output_id: int
    input_is_view: bool = False  # the input shares another tensor's storage (an in-place op would change both)


@dataclass(frozen=True)
class CallGraph:
    """The traced calls, how often each module was called, the reads outside them (``(tensor id, traced calls
    finished before the read)``) and the traced image's id."""

    calls: tuple[ModuleCall, ...]
    counts: dict[str, int]
    outside_reads: tuple[tuple[int, int], ...] = field(default=())
    input_id: int = -1

    def _read_outside(self, tensor: int, after: int, before: int | None) -> bool:
        """Whether an operation outside the traced modules read ``tensor`` after call ``after`` finished (and
        before call ``before`` finished)."""
        return any(t == tensor and p > after and (before is None or p <= before) for t, p in self.outside_reads)

    def readers(self, producer: ModuleCall) -> tuple[list[ModuleCall], bool]:
        """The traced calls after ``producer`` that read its output (an in-place reader's own readers read its
        output, not this tensor), and whether an operation outside the traced modules reads it too."""
        tensor = producer.output_id
        users = [c for c in self.calls if c.input_id == tensor and c.index > producer.index]
        in_place = bool(users) and users[0].output_id == tensor
        if in_place:
            users = users[:1]
        return users, self._read_outside(tensor, producer.index, users[0].index if in_place else None)

    def only_reader(self, producer: ModuleCall, types: tuple[type, ...]) -> ModuleCall | None:
        """The one traced call after ``producer`` that reads its output, if it is of ``types``, its module is
        called once, and no operation outside the traced modules reads the output too."""
        users, outside = self.readers(producer)
        if not outside and len(users) == 1 and isinstance(users[0].module, types) and self.counts[users[0].name] == 1:
            return users[0]
        return None


# what reads a tensor's metadata, not its values: not a reader
_METADATA = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "__get__", "is_floating_point", "is_contiguous"}
)


class _OutsideReads(TorchFunctionMode):
    """Records the tensors each operation reads while no traced module is running."""

    def __init__(self, calls: list[ModuleCall], keep: list[Tensor]) -> None:
        super().__init__()
        self.depth = 0  # traced module calls in progress
        self.calls = calls
        self.keep = keep
        self.reads: list[tuple[int, int]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.depth == 0 and getattr(func, "__name__", "") not in _METADATA:
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, Tensor):
                    self.keep.append(leaf)
                    self.reads.append((id(leaf), len(self.calls)))
        return func(*args, **kwargs)


def trace_calls(model: nn.Module, input_shape: Sequence[int], kinds: tuple[type[nn.Module], ...]) -> CallGraph:
    """Every call of a module of ``kinds`` in one eval-mode, no-grad forward pass of a zero image (the model's
    mode is restored, so no batch-norm statistic moves), and every read outside those calls."""
    calls: list[ModuleCall] = []
    counts: dict[str, int] = {}
    keep: list[Tensor] = []  # holds every tensor so no id is reused during the pass
    mode = _OutsideReads(calls, keep)

    def enter(mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
        mode.depth += 1

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str) -> None:
        mode.depth -= 1
        counts[name] = counts.get(name, 0) + 1
        keep.extend([inp[0], out])
        calls.append(ModuleCall(len(calls), name, mod, id(inp[0]), id(out), inp[0]._base is not None))

    traced = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    handles = [m.register_forward_pre_hook(enter) for _, m in traced]
    handles += [m.register_forward_hook(functools.partial(hook, name=n)) for n, m in traced]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    image = torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype)
    try:
        with torch.no_grad(), mode:
            model(image)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return CallGraph(tuple(calls), counts, tuple(mode.reads), id(image))
