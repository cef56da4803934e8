"""Quantized checkpoints and the integer grids behind them (what deployment tools read).

Quantized checkpoint (:func:`save_quantized` / :func:`load_quantized`): an ordinary hwsearch float checkpoint
(schema 1, so ``hwsearch.checkpoint`` and ``prepare`` read it) plus the policy, the calibrated activation ranges
and, per quantized layer, the integer weights (int8 storage for every width 1..8) with their per-channel scales
and the activation grid. Loading rebuilds the fake-quant model from the float weights with ``apply_policy``, so
its outputs are those of the model that was saved; the integer weights are for deployment tools.

:func:`integer_weight` and :func:`activation_grid` are the integer forms of the fake quantizers; the ONNX export
(:mod:`hwsearch.onnx_export`) stores the same integers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hwsearch.errors import CheckpointError, HwsearchError
from hwsearch.io import atomic_write_with
from hwsearch.policy import FLOAT_BITS, Policy
from hwsearch.policy_formats import plain_policy_dict
from hwsearch.quant.apply import QuantWrapper, apply_policy, quant_wrappers
from hwsearch.quant.calibration import Calibration
from hwsearch.quant.quantizers import activation_step, weight_clip

__all__ = ["QUANTIZED_SCHEMA", "integer_weight", "activation_grid", "unpack_model", "save_quantized", "load_quantized"]

QUANTIZED_SCHEMA = 1
_MODEL_FIELDS = ("model_name", "dataset", "num_classes", "input_shape", "mean", "std")


# ------------------------------------------------------------------------------------- integer grids
def integer_weight(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(int8 integers, float32 per-output-channel scales) with ``q * scale`` == ``quantize_weight(weight, bits)``.

    Mirrors :func:`hwsearch.quant.quantizers.quantize_weight` operation for operation, so the product is
    bit-identical to the fake-quantized weight.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"integer weights exist for 1..8 bits, got {bits}")
    w = weight.detach().float()
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    if bits == 1:
        scale = w.reshape(w.shape[0], -1).abs().mean(dim=1).reshape(shape)
        q = torch.where(w >= 0, 1.0, -1.0)
    else:
        qmax = 2 ** (bits - 1) - 1
        clip = weight_clip(w, bits).reshape(shape)
        scale = clip / qmax
        q = (torch.clamp(w, -clip, clip) / scale).round().clamp(-qmax, qmax)
    return q.to(torch.int8), scale.reshape(-1).clone()


def activation_grid(bits: int, lo: float | Tensor, hi: float | Tensor, signed: bool) -> dict[str, Any]:
    """The linear grid ``quantize_activation`` uses, as runtime quantization parameters.

    Returns ``scale`` (float32 0-d tensor), ``zero_point`` 0, ``dtype`` (uint8 unsigned / int8 signed), the clip
    range ``clip_lo``/``clip_hi`` (float32 0-d tensors) and ``binary`` (signed 1 bit: +-clip_hi, no linear grid).
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"activation grids exist for 1..8 bits, got {bits}")
    lo_t = torch.as_tensor(lo, dtype=torch.float32)
    hi_t = torch.as_tensor(hi, dtype=torch.float32)
    step = activation_step(bits, lo_t, hi_t, signed)  # None: signed 1 bit, +-m
    if signed:
        m = torch.maximum(lo_t.abs(), hi_t.abs()).clamp_min(1e-8)
        binary = step is None
        scale = m if step is None else step
        return {"scale": scale, "zero_point": 0, "dtype": torch.int8, "clip_lo": -m, "clip_hi": m, "binary": binary}
    assert step is not None
    top = hi_t.clamp_min(1e-8)
    return {
        "scale": step,
        "zero_point": 0,
        "dtype": torch.uint8,
        "clip_lo": torch.zeros_like(top),
        "clip_hi": top,
        "binary": False,
    }


# ------------------------------------------------------------------------------- quantized checkpoint
def _plain(value: Any, where: str) -> Any:
    """Primitives, lists and str-keyed dicts only: what ``torch.load(weights_only=True)`` reads back as is."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise CheckpointError(f"{where} is a {type(value).__name__}; meta may hold numbers, strings, lists and dicts")


def unpack_model(ws_or_model: Any) -> tuple[nn.Module, Calibration | None, dict[str, Any], tuple[int, ...] | None]:
    """(float or quantized model, workspace calibration, workspace meta, input shape) of a Workspace or module."""
    if isinstance(ws_or_model, nn.Module):
        return ws_or_model, None, {}, None
    model = getattr(ws_or_model, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a Workspace or nn.Module, got {type(ws_or_model).__name__}")
    splits = getattr(ws_or_model, "splits", None)
    shape = tuple(splits.input_shape) if splits is not None else None
    return model, ws_or_model.calibration, dict(getattr(ws_or_model, "meta", {})), shape


def _layer_record(wrapper: QuantWrapper) -> dict[str, Any]:
    rec: dict[str, Any] = {"w_bits": wrapper.w_bits, "a_bits": wrapper.a_bits}
    if wrapper.w_bits != FLOAT_BITS:
        q, scale = integer_weight(wrapper.layer.weight, wrapper.w_bits)
        rec.update(weight_int=q, weight_scale=scale)
    if wrapper.a_bits != FLOAT_BITS:
        grid = activation_grid(wrapper.a_bits, wrapper.act_lo, wrapper.act_hi, wrapper.signed)
        rec.update(
            act_signed=wrapper.signed,
            act_binary=grid["binary"],
            act_scale=float(grid["scale"]),
            act_zero_point=0,
            act_lo=float(wrapper.act_lo),
            act_hi=float(wrapper.act_hi),
        )
    return rec


def save_quantized(
    path: str | os.PathLike[str],
    ws_or_model: Any,
    policy: Policy,
    calibration: Calibration | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a float checkpoint plus ``policy``, calibration, integer weights and scales, atomically.

    ``ws_or_model`` is a :class:`~hwsearch.workflow.Workspace` (its model, calibration and checkpoint meta are
    used) or the float ``nn.Module``, whose ``meta`` must then name ``model_name``, ``dataset``, ``num_classes``,
    ``input_shape`` (``mean``/``std`` default to the model's ``normalize``). ``meta`` entries override the
    workspace's and come back from :func:`load_quantized`.
    """
    model, ws_cal, ws_meta, shape = unpack_model(ws_or_model)
    calibration = calibration if calibration is not None else ws_cal
    full = {**ws_meta, **dict(meta or {})}
    if shape is not None:
        full.setdefault("input_shape", list(shape))
    norm = getattr(model, "normalize", None)
    if norm is not None and hasattr(norm, "mean"):
        full.setdefault("mean", norm.mean.flatten().tolist())
        full.setdefault("std", norm.std.flatten().tolist())
    missing = [k for k in _MODEL_FIELDS if k not in full]
    if missing:
        raise CheckpointError(f"cannot save a quantized checkpoint without {missing}; pass them in meta")
    full.pop("state_dict", None)
    full = _plain(full, "meta")
    qmodel = apply_policy(model, policy, calibration)  # validates policy vs model and calibration
    payload = {
        "schema": 1,
        "model_name": str(full["model_name"]),
        "dataset": str(full["dataset"]),
        "num_classes": int(full["num_classes"]),
        "input_shape": [int(d) for d in full["input_shape"]],
        "mean": [float(v) for v in full["mean"]],
        "std": [float(v) for v in full["std"]],
        "metrics": dict(full.get("metrics") or {}),
        "torch_version": str(torch.__version__),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "quantized_schema": QUANTIZED_SCHEMA,
        "policy": _plain(plain_policy_dict(policy), "policy"),
        "calibration": None if calibration is None else _plain(calibration.to_dict(), "calibration"),
        "quantized": {name: _layer_record(w) for name, w in quant_wrappers(qmodel)},
        "meta": full,
    }
    return atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def load_quantized(path: str | os.PathLike[str], model_name: str | None = None) -> tuple[nn.Module, Policy, dict]:
    """(fake-quant model in eval mode, policy, meta) from :func:`save_quantized`; loads weights only.

    As with float checkpoints, a custom ``module:factory`` model is imported only when ``model_name`` names it.
    """
    from hwsearch.checkpoint import load_checkpoint
    from hwsearch.models import build_model

    ckpt = load_checkpoint(path)
    if ckpt.get("quantized_schema") != QUANTIZED_SCHEMA:
        if "quantized_schema" not in ckpt:
            raise CheckpointError(f"{path} is a float checkpoint, not a quantized one; pass it as --checkpoint")
        raise CheckpointError(
            f"{path} has quantized schema {ckpt['quantized_schema']!r}; this hwsearch reads {QUANTIZED_SCHEMA}"
        )
    stored = ckpt["model_name"]
    if model_name is None and ":" in stored:
        raise CheckpointError(f"{path} was made with custom model {stored!r}; pass model_name={stored!r} to import it")
    name = model_name or stored
    try:
        model = build_model(name, ckpt["num_classes"], tuple(ckpt["input_shape"]), ckpt["mean"], ckpt["std"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (HwsearchError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    policy = Policy.from_dict(ckpt.get("policy"))
    cal = ckpt.get("calibration")
    try:
        calibration = None if cal is None else Calibration.from_dict(cal)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: calibration section is malformed ({exc})") from None
    qmodel = apply_policy(model, policy, calibration).eval()
    meta = ckpt.get("meta")
    return qmodel, policy, dict(meta) if isinstance(meta, dict) else {}
