"""Activations computed in place for scoring, where nothing else reads what they overwrite.

A ReLU that allocates its output costs a fresh activation-sized buffer per call, which on a CPU is a large part
of its time (``benchmarks/search_speed.py`` times the evaluations this sits in). In place is only right when the activation is the one reader of its input (in
``y = conv(x); z = relu(y) + y`` it would change ``y``) and the input is not the model's own (the caller's
images). :func:`hwsearch.quant.trace.trace_calls` answers both; a probe forward and backward pass then checks
the values and the input gradient are unchanged, and any autograd complaint (an op that saved the overwritten
tensor) keeps the model as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hwsearch.quant.trace import CallGraph, trace_calls

__all__ = ["INPLACE_KINDS", "in_place_candidates", "activations_in_place"]

INPLACE_KINDS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)


def _leaves(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """Every leaf module type of ``model``: tracing them all shows each tensor's module readers."""
    return tuple({type(m) for m in model.modules() if not any(True for _ in m.children())})


def _sole_reader(graph: CallGraph, index: int) -> bool:
    """Whether call ``index`` is the only reader of its input: no other traced call reads that tensor (a
    pass-through before it, like a folded batch norm's ``Identity``, hands it on and does not count), no operation
    outside the traced modules reads it, and it is neither the model's input nor a view of another tensor."""
    call = graph.calls[index]
    tensor = call.input_id
    if tensor == graph.input_id or call.input_is_view:
        return False
    for other in graph.calls:
        if other.index == index or other.input_id != tensor:
            continue
        if other.index < index and other.output_id == tensor:
            continue  # returned it unchanged (Identity) or changed it in place before this call: not a later read
        return False
    return not any(t == tensor for t, _ in graph.outside_reads)


def in_place_candidates(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the activation modules (:data:`INPLACE_KINDS`, not already in place) whose every call is the only
    reader of its input."""
    graph = trace_calls(model, input_shape, _leaves(model))
    verdict: dict[str, bool] = {}
    for call in graph.calls:
        if isinstance(call.module, INPLACE_KINDS) and not getattr(call.module, "inplace", True):
            ok = _sole_reader(graph, call.index)
            verdict[call.name] = verdict.get(call.name, True) and ok
    return [name for name, ok in verdict.items() if ok]


def activations_in_place(model: nn.Module, input_shape: Sequence[int], probe: Tensor | None = None) -> nn.Module:
    """A copy of ``model`` whose :func:`in_place_candidates` compute in place, checked on ``probe`` (default:
    seeded uniform images): the same outputs and input gradient bit for bit, with no autograd error. Otherwise, or
    when there is nothing to change, ``model`` itself."""
    names = in_place_candidates(model, input_shape)
    if not names:
        return model
    fast = copy.deepcopy(model)
    for name in names:
        act = fast.get_submodule(name)
        assert isinstance(act, INPLACE_KINDS)
        act.inplace = True  # type: ignore[assignment]  # torch's stubs do not declare every kind's flag
    param = next(model.parameters())
    if probe is None:
        probe = torch.rand((4, *input_shape), generator=torch.Generator().manual_seed(0))
    probe = probe.to(device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    fast.eval()
    try:
        got = [_output_and_grad(m, probe) for m in (model, fast)]
    except RuntimeError:  # autograd found a saved tensor overwritten: some op needs the value in place changes
        return model
    finally:
        model.train(was_training)
    fast.train(was_training)
    (want_y, want_g), (got_y, got_g) = got
    if not (torch.equal(want_y, got_y) and torch.equal(want_g, got_g)):
        return model
    return fast


def _output_and_grad(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        (grad,) = torch.autograd.grad(out.sum(), xg)
    return out.detach(), grad
