"""The cost-model interface every device implements, and the checks they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hwsearch.checks import check_number
from hwsearch.errors import TableError
from hwsearch.layers import LayerInfo
from hwsearch.policy import FLOAT_BITS

__all__ = ["FLOAT_BITS", "LayerCost", "CostModel", "UnknownDeviceError", "bit_key", "check_bits"]


class UnknownDeviceError(TableError):
    """A device name that has no parameter file in ``latency_tables/devices/``."""


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer for one image: latency in ms, energy in mJ (None where the device's is unknown)."""

    latency_ms: float
    energy_mj: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "latency_ms", check_number(self.latency_ms, "latency_ms", 0, error=TableError))
        if self.energy_mj is not None:
            object.__setattr__(self, "energy_mj", check_number(self.energy_mj, "energy_mj", 0, error=TableError))


@runtime_checkable
class CostModel(Protocol):
    """Latency/energy of a layer at a bit pair on one device; what the env and the search price policies with."""

    name: str

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost: ...

    def supported_bits(self) -> tuple[int, ...]: ...


def bit_key(w_bits: int, a_bits: int) -> str:
    """Table key of a bit pair, e.g. ``W4A8``."""
    return f"W{int(w_bits)}A{int(a_bits)}"


def check_bits(device: str, layer: LayerInfo, w_bits: int, a_bits: int, supported: tuple[int, ...]) -> None:
    """Refuse bit widths a device cannot run, naming the layer and the widths it can."""
    lo, hi = min(supported), max(supported)
    for what, bits in (("weight", w_bits), ("activation", a_bits)):
        if bits not in supported:
            kind = "float (32-bit)" if bits == FLOAT_BITS else f"{bits}-bit"
            raise TableError(
                f"layer {layer.name!r}: device {device!r} runs {lo}..{hi} bits and cannot run {kind} "
                f"{what}s; give this layer {lo}..{hi} bits"
            )
