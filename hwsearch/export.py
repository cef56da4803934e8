"""Policies, quantized checkpoints and ONNX models out of hwsearch, in forms other tools read.

Policy files (:func:`export_policy` / :func:`import_policy`):

- ``json``: schema v1 (:meth:`Policy.to_dict`), layers and meta.
- ``yaml``: the same structure as ``json`` (needs PyYAML).
- ``csv``: header ``layer,w_bits,a_bits``, one row per layer in forward order. Meta is *not* kept.
- ``haq``: HAQ's strategy, a list of ``[w, a]`` pairs in forward order. It carries no names (nor meta), so
  reading one needs the model's layer names.

Quantized checkpoint (:func:`save_quantized` / :func:`load_quantized`): an ordinary hwsearch float checkpoint
(schema 1, so ``hwsearch.checkpoint`` and ``prepare`` read it) plus the policy, the calibrated activation ranges
and, per quantized layer, the integer weights (int8 storage for every width 1..8) with their per-channel scales
and the activation grid. Loading rebuilds the fake-quant model from the float weights with ``apply_policy``, so
its outputs are those of the model that was saved; the integer weights are for deployment tools.

ONNX (:func:`export_onnx`), opset 13 QDQ form, chosen so ONNX Runtime reproduces the fake quantization on every
CPU:

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

Runtimes that fuse QDQ into integer kernels (QLinearConv) may round differently from the float reference in rare
ties; the test bounds top-1 disagreement at 1%.
"""

from __future__ import annotations

import ast
import copy
import csv
import functools
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.errors import CheckpointError, ConfigError, HwsearchError, PolicyError
from hwsearch.hardware.cpu import check_int8_form
from hwsearch.io import atomic_write_text, atomic_write_with
from hwsearch.policy import FLOAT_BITS, Policy
from hwsearch.quant.apply import QuantWrapper, apply_policy, quant_wrappers, quantizable_names
from hwsearch.quant.calibration import Calibration
from hwsearch.quant.quantizers import weight_clip

__all__ = [
    "POLICY_FORMATS",
    "QUANTIZED_SCHEMA",
    "ONNX_OPSET",
    "format_from_path",
    "policy_to_text",
    "policy_from_text",
    "export_policy",
    "import_policy",
    "integer_weight",
    "activation_grid",
    "save_quantized",
    "load_quantized",
    "export_onnx",
]

POLICY_FORMATS = ("json", "yaml", "csv", "haq")
QUANTIZED_SCHEMA = 1
ONNX_OPSET = 13
_U8_ZERO = 128  # zero point that carries a symmetric int8 grid in uint8 (see hwsearch.hardware.cpu)
_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".haq": "haq", ".txt": "haq"}
_CSV_HEADER = ["layer", "w_bits", "a_bits"]
_MODEL_FIELDS = ("model_name", "dataset", "num_classes", "input_shape", "mean", "std")


# ------------------------------------------------------------------------------------------ policy files
def format_from_path(path: str | os.PathLike[str]) -> str:
    """The policy format a file name implies (``.json``, ``.yaml``/``.yml``, ``.csv``, ``.haq``/``.txt``)."""
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise PolicyError(
            f"cannot tell the policy format of {str(path)!r} from its extension; name one of {', '.join(POLICY_FORMATS)}"
        )
    return _EXTENSIONS[ext]


def _check_format(fmt: str) -> str:
    if fmt not in POLICY_FORMATS:
        raise PolicyError(f"policy format {fmt!r} is unknown; use one of {', '.join(POLICY_FORMATS)}")
    return fmt


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a declared dependency
        raise ConfigError("the yaml format needs PyYAML; pip install pyyaml") from None
    return yaml


def _plain_dict(policy: Policy) -> dict[str, Any]:
    """The schema-v1 dict with meta reduced to JSON types, so JSON and YAML carry exactly the same thing."""
    try:
        return json.loads(json.dumps(policy.to_dict()))
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy meta cannot be written as JSON/YAML: {exc}") from None


def policy_to_text(policy: Policy, fmt: str) -> str:
    """The file contents of ``policy`` in ``fmt`` (csv and haq drop meta; haq drops names too)."""
    fmt = _check_format(fmt)
    if fmt == "json":
        return json.dumps(_plain_dict(policy), indent=2) + "\n"
    if fmt == "yaml":
        return _yaml().safe_dump(_plain_dict(policy), sort_keys=False, default_flow_style=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(_CSV_HEADER)
        for name, bits in policy.layers.items():
            writer.writerow([name, bits.w, bits.a])
        return buf.getvalue()
    return json.dumps([bits.to_list() for bits in policy.layers.values()]) + "\n"


def _int_cell(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise PolicyError(f"{what} = {text!r} is not an integer") from None


def _from_csv(text: str, source: str) -> Policy:
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if not rows:
        raise PolicyError(f"{source}: empty CSV; expected a header {','.join(_CSV_HEADER)} and one row per layer")
    header = [c.strip() for c in rows[0]]
    if header != _CSV_HEADER:
        raise PolicyError(f"{source}: CSV header is {','.join(header)!r}; expected {','.join(_CSV_HEADER)!r}")
    layers: dict[str, list[int]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise PolicyError(f"{source}: CSV row {lineno} has {len(row)} cells; expected layer,w_bits,a_bits")
        name = row[0].strip()
        if name in layers:
            raise PolicyError(f"{source}: CSV row {lineno} repeats layer {name!r}")
        layers[name] = [_int_cell(row[1], f"row {lineno} w_bits"), _int_cell(row[2], f"row {lineno} a_bits")]
    return Policy(layers, {})


def _from_haq(text: str, source: str, layer_names: Sequence[str] | None) -> Policy:
    if layer_names is None:
        raise PolicyError(f"{source}: a HAQ strategy has no layer names; pass the model's layer names (--checkpoint)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:  # HAQ prints Python lists; literal_eval evaluates literals only, never code
            data = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise PolicyError(
                f"{source}: not a HAQ strategy; expected a list of [w, a] pairs like [[8, 8], [4, 6]]"
            ) from None
    if not isinstance(data, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in data):
        raise PolicyError(f"{source}: a HAQ strategy must be a list of [w, a] pairs, got {str(data)[:60]!r}")
    names = list(layer_names)
    if len(data) != len(names):
        raise PolicyError(f"{source}: HAQ strategy has {len(data)} pairs but the model has {len(names)} layers")
    return Policy({n: list(p) for n, p in zip(names, data, strict=True)}, {})


def policy_from_text(
    text: str, fmt: str, *, layer_names: Sequence[str] | None = None, source: str = "policy"
) -> Policy:
    """Parse policy file contents; every malformation is a one-line :class:`PolicyError` naming ``source``."""
    fmt = _check_format(fmt)
    try:
        if fmt == "json":
            return Policy.from_json(text)
        if fmt == "yaml":
            yaml = _yaml()
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or type(exc).__name__
                raise PolicyError(f"policy is not valid YAML ({problem}{where}); fix the file") from None
            return Policy.from_dict(data)
        if fmt == "csv":
            return _from_csv(text, source)
        return _from_haq(text, source, layer_names)
    except PolicyError as exc:
        msg = str(exc)
        raise PolicyError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def export_policy(policy: Policy, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``policy`` atomically as ``fmt`` (default: from the extension)."""
    fmt = format_from_path(path) if fmt is None else _check_format(fmt)
    try:
        return atomic_write_text(path, policy_to_text(policy, fmt))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {str(path)!r} ({exc.strerror or type(exc).__name__}); choose another --out"
        ) from None


def import_policy(
    path: str | os.PathLike[str], fmt: str | None = None, *, layer_names: Sequence[str] | None = None
) -> Policy:
    """Read a policy file in ``fmt`` (default: from the extension); ``haq`` needs ``layer_names``."""
    fmt = format_from_path(path) if fmt is None else _check_format(fmt)
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"policy file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {str(p)!r}: {exc}") from None
    return policy_from_text(text, fmt, layer_names=layer_names, source=f"policy file {str(p)!r}")


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
    if signed:
        m = torch.maximum(lo_t.abs(), hi_t.abs()).clamp_min(1e-8)
        binary = bits == 1
        scale = m if binary else m / (2 ** (bits - 1) - 1)
        return {"scale": scale, "zero_point": 0, "dtype": torch.int8, "clip_lo": -m, "clip_hi": m, "binary": binary}
    top = hi_t.clamp_min(1e-8)
    scale = top / (2**bits - 1)
    return {
        "scale": scale,
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


def _split_model(ws_or_model: Any) -> tuple[nn.Module, Calibration | None, dict[str, Any], tuple[int, ...] | None]:
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
    model, ws_cal, ws_meta, shape = _split_model(ws_or_model)
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
        "policy": _plain(_plain_dict(policy), "policy"),
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


# ----------------------------------------------------------------------------------------------- ONNX
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
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any) -> Any:
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


class _OnnxQuantLayer(nn.Module):
    """Export-only stand-in for a :class:`QuantWrapper`: same values, built from ONNX-representable ops."""

    def __init__(self, wrapper: QuantWrapper, form: str) -> None:
        super().__init__()
        layer = wrapper.layer
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            if layer.padding_mode != "zeros":
                raise ConfigError(f"ONNX export supports zero-padded convolutions only, not {layer.padding_mode!r}")
            self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.w_quant = wrapper.w_bits != FLOAT_BITS
        if self.w_quant:
            q, scale = integer_weight(layer.weight, wrapper.w_bits)
            zero_point = torch.zeros(q.shape[0], dtype=torch.int8)
            if form == "portable" and wrapper.w_bits == 8:  # |q| up to 127 saturates u8s8 kernels without VNNI
                q = (q.to(torch.int16) + _U8_ZERO).to(torch.uint8)
                zero_point = torch.full((q.shape[0],), _U8_ZERO, dtype=torch.uint8)
            self.register_buffer("weight_int", q)
            self.register_buffer("weight_scale", scale)
            self.register_buffer("weight_zero_point", zero_point)
        else:
            self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.act = "float"
        if wrapper.a_bits != FLOAT_BITS:
            grid = activation_grid(wrapper.a_bits, wrapper.act_lo, wrapper.act_hi, wrapper.signed)
            saturates = wrapper.a_bits == 8 and not wrapper.signed  # uint8's [0, 255] is the grid's own range
            self.act = "binary" if grid["binary"] else ("qdq" if saturates else "clip-qdq")
            dtype, zero = grid["dtype"], grid["zero_point"]
            if form == "portable" and dtype == torch.int8:  # same grid, shifted into uint8
                dtype, zero = torch.uint8, zero + _U8_ZERO
            self.register_buffer("act_scale", grid["scale"].clone())
            self.register_buffer("act_zero_point", torch.tensor(zero, dtype=dtype))
            self.register_buffer("act_lo", grid["clip_lo"].clone())
            self.register_buffer("act_hi", grid["clip_hi"].clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.act == "binary":
            x = torch.where(x >= 0, self.act_hi, -self.act_hi)
        elif self.act != "float":
            if self.act == "clip-qdq":
                x = torch.clamp(x, self.act_lo, self.act_hi)
            x = _QuantDequant.apply(x, self.act_scale, self.act_zero_point)
        w = (
            _Dequantize.apply(self.weight_int, self.weight_scale, self.weight_zero_point)
            if self.w_quant
            else self.weight
        )
        if self.is_conv:
            return F.conv2d(x, w, self.bias, *self.conv_args)
        return F.linear(x, w, self.bias)


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
        seen.setdefault(name, (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:])))  # type: ignore[arg-type]

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
        setattr(parent, child, _StaticPool(kind, in_hw, out_hw))  # type: ignore[arg-type]


def _policy_of(qmodel: nn.Module) -> Policy:
    wrappers = dict(quant_wrappers(qmodel))
    bits = {
        n: (wrappers[n].w_bits, wrappers[n].a_bits) if n in wrappers else (32, 32) for n in quantizable_names(qmodel)
    }
    return Policy(bits, {})


def export_onnx(
    qmodel_or_ws: Any,
    policy: Policy | None,
    calibration: Calibration | None,
    path: str | os.PathLike[str],
    input_shape: Sequence[int] | None = None,
    *,
    opset: int = ONNX_OPSET,
    int8_form: str = "portable",
) -> Path:
    """Write a QDQ ONNX model of the fake-quant network (see the module docstring for the representation).

    ``int8_form``: ``portable`` (exact on every CPU), ``s8`` (int8 throughout: exact and fastest on x86 with
    VNNI and on aarch64, wrong on x86 without VNNI) or ``auto`` (the form for this machine's CPU).

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
    model, ws_cal, _, ws_shape = _split_model(qmodel_or_ws)
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
    export_model = copy.deepcopy(qmodel).cpu().eval()
    for name, wrapper in list(quant_wrappers(export_model)):
        parent_name, _, child = name.rpartition(".")
        parent = export_model.get_submodule(parent_name) if parent_name else export_model
        setattr(parent, child, _OnnxQuantLayer(wrapper, form))
    _replace_adaptive_pools(export_model, shape)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            export_model,
            (torch.zeros((1, *shape)),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    props = {
        "hwsearch.policy": json.dumps(_plain_dict(policy)),
        "hwsearch.calibration": json.dumps(None if calibration is None else calibration.to_dict()),
        "hwsearch.quantization": "weights: integer storage of the b-bit grid + per-channel DequantizeLinear; "
        "activations: Clip (below 8 bits) + QuantizeLinear/DequantizeLinear; 32-bit layers float",
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
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, _write)
