"""BitFusion cost model, computed the way its authors' simulator computes it (docs/ARCHITECTURE.md, "The cost models").

A plain roofline misses BitFusion by up to 59% per network: the simulator pads the reduction to the fused
array width, moves 32-bit partial sums both ways, re-reads operands whose tiles do not fit half a buffer, and
does not overlap the first load and last write-back. This module re-implements that arithmetic for any
configuration and any bit pair, vectorised over the tiling candidates with numpy so a layer costs milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import permutations

import numpy as np

from hwsearch.checks import check_int, check_number
from hwsearch.errors import ConfigError
from hwsearch.hardware.base import LayerCost, check_bits
from hwsearch.layers import LayerInfo

__all__ = [
    "LOOPS",
    "DEFAULT_ORDERS",
    "ALL_ORDERS",
    "BitFusionEnergy",
    "BitFusionConfig",
    "ConvShape",
    "SimResult",
    "perf_factor",
    "simulate",
    "compute_cycles",
    "fastest_mode",
    "layer_shape",
    "BitFusionCostModel",
]

#: Tiled loops of a layer. ``b`` batch, ``ow``/``oh`` output columns/rows, ``ic``/``oc`` channels.
LOOPS: tuple[str, ...] = ("b", "ow", "oh", "ic", "oc")

#: Which operand's tile index each loop moves: (act, wgt, out). A tile is re-fetched once per iteration of
#: every loop outside the innermost loop it depends on, unless the grown tile still fits half its buffer.
_DEPS: dict[str, tuple[bool, bool, bool]] = {
    "b": (True, False, True),
    "ow": (True, False, True),
    "oh": (True, False, True),
    "ic": (True, True, False),
    "oc": (False, True, True),
}

#: Loop orders, outermost first: the three docs/ARCHITECTURE.md names ("The cost models"). On the authors'
#: sweep (305 layer x config pairs) they find the simulator's optimum on 86% of layers and are at most 0.35%
#: slower on any one (worst: SVHN's 3x3 128->256 conv at 1 bit on M256, +0.34%); network totals are within
#: 0.03% (worst +0.021%). Checked by tests/test_bitfusion.py. The default searches all 120 orders, as the
#: simulator does, and is exact.
DEFAULT_ORDERS: tuple[tuple[str, ...], ...] = (
    ("b", "ow", "oh", "oc", "ic"),
    ("ic", "oc", "b", "ow", "oh"),
    ("b", "ow", "oh", "ic", "oc"),
)
#: Every permutation, as the simulator tries them (vectorised: about 5 ms per layer, then cached).
ALL_ORDERS: tuple[tuple[str, ...], ...] = tuple(permutations(LOOPS))

_PSUM_BITS = 32  # partial sums are kept, read and written at 32 bits


def _ceil_div(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    return -(-np.asarray(a, dtype=np.int64) // np.asarray(b, dtype=np.int64))


@dataclass(frozen=True)
class BitFusionEnergy:
    """Energy per event in pJ (defaults: the published 45 nm design, from the authors' CACTI/synthesis)."""

    core_pj_per_cycle: float = 235.1
    wbuf_read_pj_per_bit: float = 0.021
    wbuf_write_pj_per_bit: float = 0.029
    ibuf_read_pj_per_bit: float = 0.059
    ibuf_write_pj_per_bit: float = 0.114
    obuf_read_pj_per_bit: float = 0.033
    obuf_write_pj_per_bit: float = 0.073
    dram_pj_per_bit: float = 15.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, check_number(getattr(self, name), f"energy {name}", 0))


@dataclass(frozen=True)
class BitFusionConfig:
    """An N x M fusion-unit array with its clock, off-chip bandwidth, buffers (bytes) and batch."""

    n: int = 16
    m: int = 32
    freq_mhz: float = 500.0
    bandwidth_bits_per_cycle: int = 192
    wbuf_bytes: int = 64 * 1024
    ibuf_bytes: int = 32 * 1024
    obuf_bytes: int = 16 * 1024
    batch: int = 16
    max_bits: int = 8
    min_bits: int = 2
    energy: BitFusionEnergy = field(default_factory=BitFusionEnergy)

    def __post_init__(self) -> None:
        for name in ("n", "m", "bandwidth_bits_per_cycle", "wbuf_bytes", "ibuf_bytes", "obuf_bytes", "batch"):
            check_int(getattr(self, name), name, 1)
        check_number(self.freq_mhz, "freq_mhz", positive=True)
        mx = check_int(self.max_bits, "max_bits", 1)
        mn = check_int(self.min_bits, "min_bits", 1)
        if mn > mx:
            raise ConfigError(f"min_bits = {mn} exceeds max_bits = {mx}")
        if not isinstance(self.energy, BitFusionEnergy):
            raise ConfigError(f"energy = {self.energy!r} must be a BitFusionEnergy")


@dataclass(frozen=True)
class ConvShape:
    """One convolution as the simulator sees it (a fully-connected layer is kernel 1, output 1x1).

    ``im2col`` marks the network's input layer, which the host lowers to a matrix product.
    """

    kernel: tuple[int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    in_channels: int
    out_channels: int
    a_bits: int
    w_bits: int
    im2col: bool = False

    def __post_init__(self) -> None:
        for name in ("kernel", "out_hw", "stride"):
            v = getattr(self, name)
            if isinstance(v, (int, np.integer)):
                v = (v, v)
            if not isinstance(v, tuple) or len(v) != 2:
                raise ConfigError(f"{name} = {v!r} must be an int or a pair of ints")
            object.__setattr__(self, name, (check_int(v[0], name, 1), check_int(v[1], name, 1)))
        check_int(self.in_channels, "in_channels", 1)
        check_int(self.out_channels, "out_channels", 1)
        check_int(self.a_bits, "a_bits", 1)
        check_int(self.w_bits, "w_bits", 1)
        object.__setattr__(self, "im2col", bool(self.im2col))


@dataclass(frozen=True)
class SimResult:
    """The best candidate for one layer (whole batch): cycles, traffic in bits, energy in pJ."""

    cycles: int
    compute_cycles: int
    stall_cycles: int
    dram_read_bits: int
    dram_write_bits: int
    wbuf_read_bits: int
    wbuf_write_bits: int
    ibuf_read_bits: int
    ibuf_write_bits: int
    obuf_read_bits: int
    obuf_write_bits: int
    energy_pj: float
    order: tuple[str, ...]
    tiling: dict[str, tuple[int, int]]  # loop -> (number of tiles, tile size)


def perf_factor(a_bits: int, w_bits: int, max_bits: int = 8, min_bits: int = 2) -> int:
    """Fused-array speed-up over 8x8 bits: floor(8/max(a,2)) * floor(8/max(w,2)) (3 bits runs as 4)."""
    a = max(int(a_bits), min_bits)
    w = max(int(w_bits), min_bits)
    if a > max_bits or w > max_bits:
        raise ConfigError(f"bit pair W{w_bits}A{a_bits} exceeds the array's {max_bits} bits")
    return (max_bits // a) * (max_bits // w)


def compute_cycles(shape: ConvShape, config: BitFusionConfig) -> int:
    """Untiled compute term for the whole batch: B*O^2*K^2*ceil(OC/M)*ceil(IC/(N*pf)), or with im2col
    B*O^2*ceil(OC/M)*ceil(K^2*IC/(N*pf))."""
    kh, kw = shape.kernel
    oh, ow = shape.out_hw
    npf = config.n * perf_factor(shape.a_bits, shape.w_bits, config.max_bits, config.min_bits)
    cols = -(-shape.out_channels // config.m)
    if shape.im2col:
        return config.batch * oh * ow * cols * -(-(kh * kw * shape.in_channels) // npf)
    return config.batch * oh * ow * kh * kw * cols * -(-shape.in_channels // npf)


def _tile_sizes(total: int, unit: int = 1) -> np.ndarray:
    """Power-of-two tile sizes (times ``unit``), clipped to ``total``, as the simulator enumerates them."""
    count = math.ceil(math.log2(math.ceil(total / unit))) + 1 if total > unit else 1
    return np.minimum((1 << np.arange(count, dtype=np.int64)) * unit, total)


def simulate(shape: ConvShape, config: BitFusionConfig, orders: tuple[tuple[str, ...], ...] = ALL_ORDERS) -> SimResult:
    """Search loop orders and tilings; return the fastest candidate (ties: lowest energy)."""
    return _simulate_cached(shape, config, tuple(tuple(o) for o in orders))


@lru_cache(maxsize=65536)
def _simulate_cached(shape: ConvShape, config: BitFusionConfig, orders: tuple[tuple[str, ...], ...]) -> SimResult:
    for order in orders:
        if sorted(order) != sorted(LOOPS):
            raise ConfigError(f"loop order {order!r} must be a permutation of {LOOPS}")
    cfg, en = config, config.energy
    kh, kw = shape.kernel
    oh_total, ow_total = shape.out_hw
    sh, sw = shape.stride
    ic_total, oc_total = shape.in_channels, shape.out_channels
    a, w = shape.a_bits, shape.w_bits
    batch, n_rows, m_cols, bw = cfg.batch, cfg.n, cfg.m, cfg.bandwidth_bits_per_cycle
    npf = n_rows * perf_factor(a, w, cfg.max_bits, cfg.min_bits)

    # Candidate tiles. Output rows and columns share one power-of-two exponent (square tiles).
    b_sz = _tile_sizes(batch)
    o_exp = _tile_sizes(max(oh_total, ow_total))
    ic_sz = _tile_sizes(ic_total)
    oc_sz = _tile_sizes(oc_total, 1 if shape.im2col else m_cols)
    bi, oi, ii, ci = (x.ravel() for x in np.meshgrid(b_sz, o_exp, ic_sz, oc_sz, indexing="ij"))
    b, ic, oc = bi, ii, ci
    oh = np.minimum(oi, oh_total)
    ow = np.minimum(oi, ow_total)
    num = {
        "b": _ceil_div(batch, b),
        "ow": _ceil_div(ow_total, ow),
        "oh": _ceil_div(oh_total, oh),
        "ic": _ceil_div(ic_total, ic),
        "oc": _ceil_div(oc_total, oc),
    }
    oc_pad = _ceil_div(oc, m_cols) * m_cols

    # Tile footprints in bits: weights padded along the reduction, outputs as padded 32-bit partial sums.
    wgt = _ceil_div(kh * kw * ic, npf) * npf * oc * w
    in_rows, in_cols = (oh * kh, ow * kw) if shape.im2col else (kh + (oh - 1) * sh, kw + (ow - 1) * sw)
    act = in_rows * in_cols * ic * b * a
    out = ow * oh * oc_pad * b * _PSUM_BITS
    half = (cfg.wbuf_bytes * 4, cfg.ibuf_bytes * 4, cfg.obuf_bytes * 4)  # bits in half a buffer
    fits = (wgt <= half[0]) & (act <= half[1]) & (out <= half[2])
    if not fits.any():
        raise ConfigError(f"no tiling of {shape} fits the buffers of {config}")
    sel = np.nonzero(fits)[0]
    b, ic, oc, oh, ow, oc_pad = b[sel], ic[sel], oc[sel], oh[sel], ow[sel], oc_pad[sel]
    wgt, act, out = wgt[sel], act[sel], out[sel]
    num = {k: v[sel] for k, v in num.items()}
    num_tiles = num["b"] * num["ow"] * num["oh"] * num["ic"] * num["oc"]

    # Compute cycles of one tile, times the number of tiles.
    if shape.im2col:
        per_tile = b * oh * ow * _ceil_div(oc, m_cols) * _ceil_div(kh * kw * ic, npf)
    else:
        per_tile = b * _ceil_div(oc, m_cols) * ow * oh * kh * kw * _ceil_div(ic, npf)
    compute = num_tiles * per_tile

    # Buffer accesses inside a tile: the cheapest of input-, output- and weight-stationary (energy only).
    is_loop = oc_pad
    os_loop = _ceil_div(ic * kh * kw, npf) * npf if shape.im2col else _ceil_div(ic, npf) * npf * kh * kw
    ws_loop = b * oh * ow
    is_e = (os_loop * ws_loop) * (a + is_loop * (w + _PSUM_BITS))
    os_e = (is_loop * ws_loop) * (_PSUM_BITS + os_loop * (a + w))
    ws_e = (os_loop * is_loop) * (w + ws_loop * (a + _PSUM_BITS))
    use_is = is_e <= np.minimum(os_e, ws_e)
    use_os = ~use_is & (os_e <= ws_e)
    red = kh * kw * ic
    pix = oh * ow * b
    macs = red * pix * oc
    in_act_r = np.where(use_is, red * pix, macs) * a
    in_out = np.where(use_is, macs, np.where(use_os, oc * pix, macs)) * _PSUM_BITS
    in_wgt_r = np.where(use_is | use_os, macs, red * oc) * w
    in_act_r, in_out, in_wgt_r = num_tiles * in_act_r, num_tiles * in_out, num_tiles * in_wgt_r

    # Orders that differ only in loops that never iterate (one tile for every candidate), or by swapping
    # output rows and columns of a square layer, give identical results: evaluate one of each.
    active = {k for k, v in num.items() if int(v.max()) > 1}
    square = bool(np.array_equal(num["ow"], num["oh"]))
    distinct: dict[tuple[str, ...], tuple[str, ...]] = {}
    for o in orders:
        canon = tuple("ow" if (square and x == "oh") else x for x in o if x in active)
        distinct.setdefault(canon, o)
    orders = tuple(distinct.values())

    # Every order at once: axis 0 is the order, axis 1 the tiling candidate.
    n_pos = len(LOOPS)
    pos_num = [np.stack([num[o[p]] for o in orders]) for p in range(n_pos)]
    pos_dep = [[np.array([_DEPS[o[p]][(1, 0, 2)[k]] for o in orders])[:, None] for k in range(3)] for p in range(n_pos)]
    shape2 = (len(orders), len(wgt))
    sizes = [np.broadcast_to(x, shape2).copy() for x in (wgt, act, out)]
    first = [x.copy() for x in sizes]
    promote = [np.ones(shape2, dtype=bool) for _ in range(3)]
    for p in reversed(range(n_pos)):  # innermost loop first
        n = pos_num[p]
        for k in range(3):
            dep = pos_dep[p][k]
            # A tile grows with the loops it depends on while it fits half its buffer (fetched once);
            # once it no longer fits, every enclosing loop re-fetches it.
            sizes[k] = np.where(dep | ~promote[k], sizes[k] * n, sizes[k])
            keep = dep & promote[k]
            fits_now = sizes[k] <= half[k]
            first[k] = np.where(keep & fits_now, sizes[k], first[k])
            promote[k] = promote[k] & ~(dep & ~fits_now)
    dram_read = sizes[0] + sizes[1] + sizes[2]
    dram_write = sizes[2]
    initial = first[0] + first[1] + first[2]
    final = first[2]
    edge = _ceil_div(initial, bw) + _ceil_div(final, bw)  # first load and last write-back do not overlap
    middle = dram_read + dram_write - initial - final
    stall = np.maximum(0, _ceil_div(middle, bw) - compute) + edge
    cycles = compute + stall
    obuf_rw = sizes[2] + in_out
    energy = (
        compute * en.core_pj_per_cycle
        + in_wgt_r * en.wbuf_read_pj_per_bit
        + sizes[0] * en.wbuf_write_pj_per_bit
        + in_act_r * en.ibuf_read_pj_per_bit
        + sizes[1] * en.ibuf_write_pj_per_bit
        + obuf_rw * (en.obuf_read_pj_per_bit + en.obuf_write_pj_per_bit)
        + (dram_read + dram_write) * en.dram_pj_per_bit
    )
    flat = int(np.lexsort((energy.ravel(), cycles.ravel()))[0])
    row, col = divmod(flat, shape2[1])
    tiles = {"b": b, "ow": ow, "oh": oh, "ic": ic, "oc": oc}
    return SimResult(
        cycles=int(cycles[row, col]),
        compute_cycles=int(compute[col]),
        stall_cycles=int(stall[row, col]),
        dram_read_bits=int(dram_read[row, col]),
        dram_write_bits=int(dram_write[row, col]),
        wbuf_read_bits=int(in_wgt_r[col]),
        wbuf_write_bits=int(sizes[0][row, col]),
        ibuf_read_bits=int(in_act_r[col]),
        ibuf_write_bits=int(sizes[1][row, col]),
        obuf_read_bits=int(obuf_rw[row, col]),
        obuf_write_bits=int(obuf_rw[row, col]),
        energy_pj=float(energy[row, col]),
        order=tuple(orders[row]),
        tiling={k: (int(num[k][col]), int(tiles[k][col])) for k in LOOPS},
    )


def fastest_mode(shape: ConvShape, config: BitFusionConfig) -> tuple[SimResult, int, int]:
    """Fastest way to run ``shape``: its own bits or any wider mode (data sign-extends into wider bricks).

    The simulator's cost is not monotone in bits (narrower data can let a larger tile fit, whose first load is
    not overlapped; narrower activations pad weights to a wider reduction), so it can price 1-bit weights
    above 2-bit ones. A compiler would run such a layer in the wider mode, and the search needs cost to be
    non-increasing as bits fall; this takes the minimum over all modes at least as wide. Returns the result
    and the (w, a) mode chosen.
    """
    return _fastest_cached(shape, config)


@lru_cache(maxsize=65536)
def _fastest_cached(shape: ConvShape, config: BitFusionConfig) -> tuple[SimResult, int, int]:
    best = (simulate(shape, config), shape.w_bits, shape.a_bits)
    top = config.max_bits
    for w, a in ((shape.w_bits + 1, shape.a_bits), (shape.w_bits, shape.a_bits + 1)):
        if w <= top and a <= top:
            cand = _fastest_cached(replace(shape, w_bits=w, a_bits=a), config)
            if (cand[0].cycles, cand[0].energy_pj) < (best[0].cycles, best[0].energy_pj):
                best = cand
    return best


def layer_shape(layer: LayerInfo, w_bits: int, a_bits: int) -> tuple[ConvShape, int]:
    """The simulator shape of one group of ``layer`` and the number of groups.

    The array reduces over input channels and spreads output channels, so a grouped (depthwise) conv runs
    as ``groups`` independent convs of in/groups -> out/groups channels; a linear layer is a 1x1 conv on a
    1x1 input. The network's input layer runs im2col, as in the simulator.
    """
    g = layer.groups
    shape = ConvShape(
        kernel=layer.kernel,
        out_hw=layer.out_hw,
        stride=layer.stride,
        in_channels=layer.in_channels // g,
        out_channels=layer.out_channels // g,
        a_bits=int(a_bits),
        w_bits=int(w_bits),
        im2col=layer.is_input_layer,
    )
    return shape, g


class BitFusionCostModel:
    """CostModel of a BitFusion configuration: simulator cycles per batch, reported per image."""

    def __init__(self, name: str, config: BitFusionConfig) -> None:
        self.name = name
        self.config = config

    def supported_bits(self) -> tuple[int, ...]:
        return tuple(range(1, self.config.max_bits + 1))

    def simulate_layer(self, layer: LayerInfo, w_bits: int, a_bits: int) -> tuple[SimResult, int]:
        """The simulator's own result for one group of ``layer`` (whole batch) and the group count."""
        check_bits(self.name, layer, w_bits, a_bits, self.supported_bits())
        shape, groups = layer_shape(layer, w_bits, a_bits)
        return simulate(shape, self.config), groups

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        """Per-image cost in the fastest mode at least as wide as (w, a); see :func:`fastest_mode`."""
        check_bits(self.name, layer, w_bits, a_bits, self.supported_bits())
        shape, groups = layer_shape(layer, w_bits, a_bits)
        res = fastest_mode(shape, self.config)[0]
        per_image = groups / self.config.batch
        return LayerCost(
            latency_ms=res.cycles * per_image / (self.config.freq_mhz * 1e3),
            energy_mj=res.energy_pj * per_image * 1e-9,
        )

    def __repr__(self) -> str:
        return f"BitFusionCostModel({self.name!r}, {self.config})"
