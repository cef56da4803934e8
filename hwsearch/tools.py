"""Hand a policy to other tools and look at what it costs: export (policy formats, quantized checkpoint, ONNX),
show a policy with its per-layer latency, and a model's cost breakdown on a target. The CLI's ``export``,
``show`` and ``latency show`` are these calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hwsearch.errors import ConfigError
from hwsearch.hardware import DEFAULT_DEVICE, CostModel, PolicyCost, get_cost_model, is_table_path, policy_cost
from hwsearch.layers import LayerInfo, discover_layers
from hwsearch.policy import Policy, uniform_policy
from hwsearch.policy_formats import POLICY_FORMATS, format_from_path, load_policy, save_policy

__all__ = [
    "EXPORT_FORMATS",
    "Exported",
    "export_policy_file",
    "PolicyBreakdown",
    "show_policy",
    "latency_breakdown",
]

EXPORT_FORMATS = (*POLICY_FORMATS, "checkpoint", "onnx")


@dataclass(frozen=True)
class Exported:
    path: Path
    fmt: str


@dataclass(frozen=True)
class PolicyBreakdown:
    """A policy and, when the model's layers are known, its cost on ``cost_model`` layer by layer."""

    policy: Policy
    layers: list[LayerInfo] | None = None
    cost: PolicyCost | None = None
    cost_model: CostModel | None = None


def _layers_of(checkpoint: str, model_factory: str | None) -> list[LayerInfo]:
    from hwsearch.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(checkpoint, model_factory)
    return discover_layers(model, tuple(meta["input_shape"]))


def _read(path: str, layers: list[LayerInfo] | None) -> Policy:
    names = None if layers is None else [ly.name for ly in layers]
    if format_from_path(path) == "haq" and names is None:
        raise ConfigError(f"{path} is a HAQ strategy without layer names; pass --checkpoint to name its layers")
    policy = load_policy(path, layer_names=names)
    if names is not None:
        policy.check_against(names)
    return policy


def export_policy_file(
    policy_path: str,
    fmt: str,
    out: str | Path,
    *,
    checkpoint: str | None = None,
    data_root: str | None = None,
    model_factory: str | None = None,
    compute_device: str = "cpu",
    int8_form: str = "portable",
    onnx_style: str = "qdq",
) -> Exported:
    """Write the policy as ``fmt``: a policy format (json/yaml/csv/haq), a quantized ``checkpoint`` or ``onnx``
    (the last two need the FP32 ``checkpoint``; calibration runs on ``compute_device``). ``int8_form`` and
    ``onnx_style`` are :func:`hwsearch.onnx_export.export_onnx`'s (``kernels`` is what ``ort-cpu`` prices)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; use one of {', '.join(EXPORT_FORMATS)}")
    needs_model = fmt in ("checkpoint", "onnx")
    if needs_model and not checkpoint:
        raise ConfigError(f"--format {fmt} needs --checkpoint (the FP32 checkpoint the policy is for)")
    layers = _layers_of(checkpoint, model_factory) if checkpoint else None
    policy = _read(policy_path, layers)
    if not needs_model:
        return Exported(save_policy(policy, out, fmt), fmt)
    from hwsearch.onnx_export import export_onnx
    from hwsearch.quantized import save_quantized
    from hwsearch.workflow import prepare

    assert checkpoint is not None
    ws = prepare(checkpoint, data_root=data_root, device=compute_device, model_name=model_factory)
    if fmt == "checkpoint":
        return Exported(save_quantized(out, ws, policy, ws.calibration, {"policy_file": str(policy_path)}), fmt)
    path = export_onnx(ws, policy, ws.calibration, out, ws.splits.input_shape, int8_form=int8_form, style=onnx_style)
    return Exported(path, fmt)


def show_policy(
    policy_path: str,
    *,
    checkpoint: str | None = None,
    target: str | None = None,
    model_factory: str | None = None,
) -> PolicyBreakdown:
    """The policy in ``policy_path``; with ``checkpoint``, its per-layer cost on ``target`` (default device)."""
    if target and not checkpoint:
        raise ConfigError("--target prices the policy's layers, which needs --checkpoint")
    layers = _layers_of(checkpoint, model_factory) if checkpoint else None
    policy = _read(policy_path, layers)
    if layers is None:
        return PolicyBreakdown(policy)
    cost_model = get_cost_model(target or DEFAULT_DEVICE)
    return PolicyBreakdown(policy, layers, policy_cost(cost_model, layers, policy), cost_model)


def latency_breakdown(
    model: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    *,
    target: str = DEFAULT_DEVICE,
    table: str | None = None,
    policy_path: str | None = None,
) -> PolicyBreakdown:
    """Per-layer latency/energy of a policy (default: every layer W8A8) of a zoo ``model`` on ``target`` or on
    the cost ``table`` file."""
    from hwsearch.models import model_layers

    _, layers = model_layers(model, num_classes, input_shape)
    if table and not is_table_path(table):
        raise ConfigError(f"--table {table!r} must be a .json cost table file")
    cost_model = get_cost_model(table or target)
    names = [ly.name for ly in layers]
    policy = load_policy(policy_path, layer_names=names) if policy_path else uniform_policy(names, 8)
    return PolicyBreakdown(policy, layers, policy_cost(cost_model, layers, policy), cost_model)
