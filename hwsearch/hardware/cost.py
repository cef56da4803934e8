"""Price a whole policy on a device, and build devices from their parameter files."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from types import MappingProxyType
from typing import Any

from hwsearch.errors import ConfigError, TableError
from hwsearch.hardware.base import FLOAT_BITS, CostModel, LayerCost, UnknownDeviceError
from hwsearch.hardware.bismo import BismoConfig, BismoCostModel
from hwsearch.hardware.bitfusion import BitFusionConfig, BitFusionCostModel, BitFusionEnergy
from hwsearch.hardware.cpu import is_ort_cpu, parse_ort_cpu
from hwsearch.hardware.table import TableCostModel, load_table
from hwsearch.layers import LayerInfo
from hwsearch.policy import Policy

__all__ = [
    "DEFAULT_DEVICE",
    "DEVICE_SCHEMA_VERSION",
    "PolicyCost",
    "policy_cost",
    "float_size_bits",
    "get_cost_model",
    "list_devices",
    "device_spec",
    "device_from_spec",
    "is_table_path",
    "supported_pairs",
    "bit_grid",
]

DEFAULT_DEVICE = "bitfusion-edge"
DEVICE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PolicyCost:
    """Total latency (ms/image), energy (mJ/image, None if any layer's is unknown), size and the breakdown: the
    latency is ``per_layer``'s sum plus ``boundary_ms``."""

    latency_ms: float
    energy_mj: float | None
    size_bits: int
    per_layer: Mapping[str, LayerCost]
    boundary_ms: float = 0.0  # between consecutive layers (``ort-cpu``), in latency_ms but in no layer's cost

    def __post_init__(self) -> None:
        if not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise TableError(f"policy latency_ms = {self.latency_ms!r} must be finite and non-negative")
        if self.size_bits < 0:
            raise TableError(f"policy size_bits = {self.size_bits!r} must be non-negative")
        object.__setattr__(self, "per_layer", MappingProxyType(dict(self.per_layer)))

    def metric(self, name: str) -> float | None:
        """The total a budget metric (``latency``, ``energy``, ``size``) reads."""
        return {"latency": self.latency_ms, "energy": self.energy_mj, "size": float(self.size_bits)}[name]

    def latency_shares(self) -> dict[str, float]:
        """Each layer's fraction of the total latency (all 0 when the total is 0)."""
        total = float(self.latency_ms)
        return {n: (c.latency_ms / total if total > 0 else 0.0) for n, c in self.per_layer.items()}


def float_size_bits(layers: Iterable[LayerInfo]) -> int:
    """Weight bits of the float model (every weight at 32 bits), the reference of "N x smaller than FP32"."""
    return sum(layer.params * FLOAT_BITS for layer in layers)


def policy_cost(cost_model: CostModel, layers: Sequence[LayerInfo], policy: Policy) -> PolicyCost:
    """Sum per-layer costs of ``policy`` over ``layers`` (forward order); size counts float layers at 32 bits.

    A cost model with ``boundary_cost(prev, prev_bits, layer, bits)`` (``ort-cpu``) adds it for each pair of
    consecutive layers: in ``boundary_ms`` and the total latency, not in ``per_layer``."""
    policy.check_against(layer.name for layer in layers)
    per_layer: dict[str, LayerCost] = {}
    latency = 0.0
    energy: float | None = 0.0
    size = 0
    boundary = getattr(cost_model, "boundary_cost", None)
    between = 0.0
    for i, layer in enumerate(layers):
        bits = policy[layer.name]
        cost = cost_model.layer_cost(layer, bits.w, bits.a)
        if callable(boundary) and i > 0:
            prev = policy[layers[i - 1].name]
            between += float(boundary(layers[i - 1], (prev.w, prev.a), layer, (bits.w, bits.a)))
        per_layer[layer.name] = cost
        latency += cost.latency_ms
        energy = None if energy is None or cost.energy_mj is None else energy + cost.energy_mj
        size += layer.params * (FLOAT_BITS if bits.w == FLOAT_BITS else bits.w)
    return PolicyCost(
        latency_ms=max(latency + between, 0.0),
        energy_mj=energy,
        size_bits=size,
        per_layer=per_layer,
        boundary_ms=between,
    )


def _devices_dir() -> Any:
    return resources.files("hwsearch.latency_tables").joinpath("devices")


def list_devices() -> list[str]:
    """Names of the analytical devices (those with a parameter file), sorted; ``ort-cpu`` is measured, not listed."""
    folder = _devices_dir()
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def device_spec(name: str) -> dict[str, Any]:
    """The parsed parameter file of device ``name``."""
    known = list_devices()
    if name not in known:
        raise UnknownDeviceError(f"unknown device {name!r}; known devices: {', '.join(known)}")
    text = _devices_dir().joinpath(f"{name}.json").read_text(encoding="utf-8")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"device file {name}.json is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(spec, dict) or spec.get("schema") != DEVICE_SCHEMA_VERSION:
        raise TableError(f"device file {name}.json must be an object with 'schema': {DEVICE_SCHEMA_VERSION}")
    return spec


def _build(cls: type, params: Any, where: str) -> Any:
    if not isinstance(params, Mapping):
        raise TableError(f"{where} must be an object of parameters")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TableError(f"{where} has unknown parameter(s) {unknown}; known: {sorted(allowed)}")
    try:
        return cls(**params)
    except (ConfigError, TypeError) as exc:
        raise TableError(f"{where}: {exc}") from None


def device_from_spec(spec: Mapping[str, Any]) -> CostModel:
    """Build the cost model a device file describes (``family`` bitfusion or bismo)."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise TableError(f"device spec needs a non-empty 'name', got {name!r}")
    family = spec.get("family")
    params = dict(spec.get("parameters", {}))
    if family == "bitfusion":
        energy = _build(BitFusionEnergy, params.pop("energy", {}), f"device {name!r} energy")
        config = _build(BitFusionConfig, {**params, "energy": energy}, f"device {name!r} parameters")
        return BitFusionCostModel(name, config)
    if family == "bismo":
        return BismoCostModel(name, _build(BismoConfig, params, f"device {name!r} parameters"))
    raise TableError(f"device {name!r} has family {family!r}; expected 'bitfusion' or 'bismo'")


def is_table_path(name: str | os.PathLike[str]) -> bool:
    """Whether a ``--target`` value names a table file rather than a device: a ``.json`` name or a path."""
    text = os.fspath(name)
    return text.endswith(".json") or os.sep in text or (os.altsep is not None and os.altsep in text)


def get_cost_model(name: str | os.PathLike[str]) -> CostModel:
    """The cost model of a named analytical device (``latency_tables/devices/``), of this CPU under ONNX Runtime
    (``ort-cpu``, ``ort-cpu:N``, ``ort-cpu:all``: measured on first use, :mod:`hwsearch.hardware.ort_cpu`), or
    of a table file.

    A value ending in ``.json`` or containing a path separator is read as a cost table (analytical, measured or
    imported; see :func:`hwsearch.hardware.load_table`) and priced by a :class:`TableCostModel`, whose
    :meth:`~TableCostModel.supported_pairs` says which bit pairs the search may use.
    """
    if is_table_path(name):
        return TableCostModel(load_table(name), path=os.fspath(name))
    if is_ort_cpu(str(name)):  # its module imports torch and onnx: only when asked for
        from hwsearch.hardware.ort_cpu import OrtCpuCostModel

        return OrtCpuCostModel(parse_ort_cpu(str(name)), name=str(name))
    return device_from_spec(device_spec(str(name)))


def supported_pairs(cost_model: CostModel, layers: Iterable[LayerInfo]) -> frozenset[tuple[int, int]]:
    """(w, a) pairs ``cost_model`` prices for every layer: a table's own pairs, else all pairs of its widths."""
    own = getattr(cost_model, "supported_pairs", None)
    if callable(own):
        return frozenset(own(list(layers)))
    bits = cost_model.supported_bits()
    return frozenset(itertools.product(bits, bits))


def bit_grid(
    cost_model: CostModel, layers: Iterable[LayerInfo], candidates: Iterable[int] = range(1, 9)
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The largest grid ``w_bits x a_bits`` of ``candidates`` whose every pair the device prices for every layer.

    The env chooses weight and activation widths independently, so it needs a full grid; this picks the grid
    with most pairs (ties: more weight widths, then wider ones). For an analytical device it is the device's
    widths among ``candidates``; for a measured table typically ``((8,), (8,))``. Raises when no pair fits.
    """
    own = getattr(cost_model, "search_bits", None)
    if callable(own):  # a target that says which widths are worth searching (ort-cpu: 4, 8 or float)
        w_own, a_own = own()
        keep = set(candidates) | {FLOAT_BITS}
        ws_, as_ = tuple(b for b in w_own if b in keep), tuple(b for b in a_own if b in keep)
        if ws_ and as_:
            return ws_, as_
    allowed = set(candidates)
    pairs = {(w, a) for w, a in supported_pairs(cost_model, layers) if w in allowed and a in allowed}
    ws = sorted({w for w, _ in pairs})
    best: tuple[tuple[int, int, tuple[int, ...]], tuple[int, ...], tuple[int, ...]] | None = None
    for n in range(1, len(ws) + 1):
        for wsub in itertools.combinations(ws, n):
            a_common = set.intersection(*({a for w2, a in pairs if w2 == w} for w in wsub))
            if not a_common:
                continue
            key = (len(wsub) * len(a_common), len(wsub), wsub)
            if best is None or key > best[0]:
                best = (key, wsub, tuple(sorted(a_common)))
    if best is None:
        name = getattr(cost_model, "name", "?")
        raise TableError(
            f"device {name!r} prices no bit pair among {sorted(allowed)} for every layer; "
            f"build a table with those widths (hwsearch latency build/measure) or pick another device"
        )
    return best[1], best[2]
