"""BISMO (bit-serial matrix multiply overlay) analytical cost model.

BISMO computes a (M x K) by (K x N) binary matrix product on a Dm x Dn array of Dk-wide popcount units, one
bit plane pair at a time, so its compute time scales with w * a. Convolutions are lowered to matrices on the
host (im2col), so the activation matrix is read from DRAM as K x N at a bits; results leave as 32-bit integers.
A layer takes max(compute, memory) cycles: streaming overlaps compute, and a layer that moves more bits than
the memory port delivers in its compute time is memory-bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hwsearch.checks import check_int, check_number
from hwsearch.errors import ConfigError
from hwsearch.hardware.base import LayerCost, check_bits
from hwsearch.layers import LayerInfo

__all__ = ["BismoConfig", "BismoResult", "bismo_matmul", "BismoCostModel"]

_RESULT_BITS = 32


@dataclass(frozen=True)
class BismoConfig:
    """Array shape (Dm, Dk, Dn), clock, DRAM port width (bits/cycle), batch and energy per event (pJ)."""

    dm: int = 8
    dk: int = 256
    dn: int = 8
    freq_mhz: float = 200.0
    bandwidth_bits_per_cycle: int = 64
    batch: int = 1
    max_bits: int = 8
    core_pj_per_cycle: float = 5000.0
    dram_pj_per_bit: float = 20.0

    def __post_init__(self) -> None:
        for name in ("dm", "dk", "dn", "bandwidth_bits_per_cycle", "batch", "max_bits"):
            check_int(getattr(self, name), name, 1)
        for name in ("freq_mhz", "core_pj_per_cycle", "dram_pj_per_bit"):
            check_number(getattr(self, name), name, positive=True)

    @property
    def peak_binary_tops(self) -> float:
        """Binary ops per second at 1x1 bits (2 ops per multiply-accumulate), in TOPS."""
        return 2 * self.dm * self.dk * self.dn * self.freq_mhz * 1e6 / 1e12


@dataclass(frozen=True)
class BismoResult:
    cycles: int
    compute_cycles: int
    memory_cycles: int
    dram_bits: int
    energy_pj: float


@lru_cache(maxsize=65536)
def bismo_matmul(m: int, k: int, n: int, w_bits: int, a_bits: int, config: BismoConfig) -> BismoResult:
    """Cycles and energy of a (m x k) weight by (k x n) activation product at w x a bits."""
    for what, v in (("m", m), ("k", k), ("n", n), ("w_bits", w_bits), ("a_bits", a_bits)):
        check_int(v, what, 1)
    if w_bits > config.max_bits or a_bits > config.max_bits:
        raise ConfigError(f"bit pair W{w_bits}A{a_bits} exceeds the overlay's {config.max_bits} bits")
    compute = -(-m // config.dm) * -(-n // config.dn) * -(-k // config.dk) * w_bits * a_bits
    dram = m * k * w_bits + k * n * a_bits + m * n * _RESULT_BITS
    memory = -(-dram // config.bandwidth_bits_per_cycle)
    energy = compute * config.core_pj_per_cycle + dram * config.dram_pj_per_bit
    return BismoResult(max(compute, memory), compute, memory, dram, energy)


class BismoCostModel:
    """CostModel of a BISMO build; a grouped (depthwise) conv runs as ``groups`` separate products."""

    def __init__(self, name: str, config: BismoConfig) -> None:
        self.name = name
        self.config = config

    def supported_bits(self) -> tuple[int, ...]:
        return tuple(range(1, self.config.max_bits + 1))

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        check_bits(self.name, layer, w_bits, a_bits, self.supported_bits())
        g = layer.groups
        kh, kw = layer.kernel
        oh, ow = layer.out_hw
        m = layer.out_channels // g
        k = layer.in_channels // g * kh * kw
        n = self.config.batch * oh * ow
        res = bismo_matmul(m, k, n, int(w_bits), int(a_bits), self.config)
        per_image = g / self.config.batch
        return LayerCost(
            latency_ms=res.cycles * per_image / (self.config.freq_mhz * 1e3),
            energy_mj=res.energy_pj * per_image * 1e-9,
        )

    def __repr__(self) -> str:
        return f"BismoCostModel({self.name!r}, {self.config})"
