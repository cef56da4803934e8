"""Device registry, policy pricing, LayerInfo-to-shape mapping and the BISMO model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hwsearch.errors import HwsearchError, PolicyError, TableError
from hwsearch.hardware import (
    DEFAULT_DEVICE,
    BismoConfig,
    BismoCostModel,
    BitFusionCostModel,
    CostModel,
    LayerCost,
    bismo_matmul,
    device_from_spec,
    get_cost_model,
    list_devices,
    policy_cost,
)
from hwsearch.layers import LayerInfo, discover_layers
from hwsearch.policy import LayerBits, Policy, uniform_policy

DEVICES = ["bitfusion", "bitfusion-edge", "bitfusion-cloud", "bismo-edge", "bismo-cloud"]


def _conv(ic: int, oc: int, hw: int, k: int = 3, s: int = 1, groups: int = 1, name: str = "c") -> LayerInfo:
    out = (hw + 2 * (k // 2) - k) // s + 1
    return LayerInfo(
        name,
        "conv",
        1,
        ic,
        oc,
        (k, k),
        (s, s),
        (k // 2, k // 2),
        groups,
        (hw, hw),
        (out, out),
        oc * ic // groups * k * k,
        False,
    )


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def test_registry_lists_the_five_devices_and_default() -> None:
    assert list_devices() == sorted(DEVICES)
    assert DEFAULT_DEVICE == "bitfusion-edge"


def test_unknown_device_is_one_line_listing_known() -> None:
    with pytest.raises(HwsearchError) as exc:
        get_cost_model("tpu-v9")
    msg = str(exc.value)
    assert "\n" not in msg and "'tpu-v9'" in msg
    assert all(d in msg for d in DEVICES)


@pytest.mark.parametrize("name", DEVICES)
def test_every_device_is_a_cost_model_running_1_to_8_bits(name: str) -> None:
    model = get_cost_model(name)
    assert isinstance(model, CostModel)
    assert model.name == name
    assert model.supported_bits() == tuple(range(1, 9))
    cost = model.layer_cost(_conv(16, 32, 8), 4, 4)
    assert cost.latency_ms > 0 and cost.energy_mj is not None and cost.energy_mj > 0


def test_bitfusion_configs_match_design() -> None:
    pub, edge, cloud = (get_cost_model(n) for n in ("bitfusion", "bitfusion-edge", "bitfusion-cloud"))
    assert isinstance(pub, BitFusionCostModel)
    assert isinstance(edge, BitFusionCostModel) and isinstance(cloud, BitFusionCostModel)
    p = pub.config
    assert (p.n, p.m, p.freq_mhz, p.bandwidth_bits_per_cycle, p.batch) == (16, 32, 500.0, 192, 16)
    assert (p.wbuf_bytes, p.ibuf_bytes, p.obuf_bytes) == (64 * 1024, 32 * 1024, 16 * 1024)
    assert edge.config.batch == 1 and edge.config.m < p.m and edge.config.bandwidth_bits_per_cycle < 192
    assert cloud.config.batch == 16 and cloud.config.m > p.m and cloud.config.bandwidth_bits_per_cycle > 192


@pytest.mark.parametrize("name", DEVICES)
@pytest.mark.parametrize(("w", "a"), [(32, 8), (8, 32), (32, 32)])
def test_float_layers_are_refused_naming_layer(name: str, w: int, a: int) -> None:
    with pytest.raises(TableError, match=r"layer 'features\.3'.*1\.\.8 bits"):
        get_cost_model(name).layer_cost(_conv(8, 8, 8, name="features.3"), w, a)


class _FlatModel:
    """A device that runs anything at 1 ms and unknown energy, to test the pricing arithmetic."""

    name = "flat"

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        return LayerCost(latency_ms=1.0 * w_bits / 8, energy_mj=None)

    def supported_bits(self) -> tuple[int, ...]:
        return (*range(1, 9), 32)


def test_policy_cost_sums_layers_and_counts_size() -> None:
    layers = discover_layers(_net(), (3, 8, 8))
    names = [x.name for x in layers]
    policy = Policy({names[0]: LayerBits(32, 32), names[1]: (4, 8), names[2]: (2, 2), names[3]: (8, 8)})
    cost = policy_cost(_FlatModel(), layers, policy)
    assert cost.energy_mj is None
    assert cost.latency_ms == pytest.approx(4 + 0.5 + 0.25 + 1)
    assert list(cost.per_layer) == names
    params = [x.params for x in layers]
    assert cost.size_bits == params[0] * 32 + params[1] * 4 + params[2] * 2 + params[3] * 8


@pytest.mark.parametrize("name", DEVICES)
def test_policy_cost_on_devices_matches_per_layer_sum(name: str) -> None:
    layers = discover_layers(_net(), (3, 8, 8))
    model = get_cost_model(name)
    hi = policy_cost(model, layers, uniform_policy([x.name for x in layers], 8))
    lo = policy_cost(model, layers, uniform_policy([x.name for x in layers], 2))
    assert hi.latency_ms == pytest.approx(sum(c.latency_ms for c in hi.per_layer.values()))
    assert hi.energy_mj == pytest.approx(sum(c.energy_mj for c in hi.per_layer.values()))
    assert lo.latency_ms <= hi.latency_ms and lo.size_bits * 4 == hi.size_bits


def test_policy_cost_refuses_mismatched_policy() -> None:
    layers = discover_layers(_net(), (3, 8, 8))
    with pytest.raises(PolicyError, match="misses layer"):
        policy_cost(get_cost_model("bitfusion"), layers, uniform_policy([layers[0].name], 8))


@pytest.mark.parametrize("name", DEVICES)
def test_depthwise_costs_groups_times_one_group(name: str) -> None:
    model = get_cost_model(name)
    dw = _conv(24, 24, 14, groups=24)
    one = _conv(1, 1, 14)
    assert model.layer_cost(dw, 4, 4).latency_ms == pytest.approx(24 * model.layer_cost(one, 4, 4).latency_ms)
    g2 = _conv(64, 128, 14, groups=2)
    half = _conv(32, 64, 14)
    assert model.layer_cost(g2, 8, 8).energy_mj == pytest.approx(2 * model.layer_cost(half, 8, 8).energy_mj)


@pytest.mark.parametrize("name", DEVICES)
def test_linear_costs_as_1x1_conv(name: str) -> None:
    model = get_cost_model(name)
    lin = LayerInfo("fc", "linear", 3, 256, 100, (1, 1), (1, 1), (0, 0), 1, (1, 1), (1, 1), 25600, False)
    conv = _conv(256, 100, 1, k=1)
    assert model.layer_cost(lin, 4, 6) == model.layer_cost(conv, 4, 6)


def test_bismo_edge_is_the_pynq_build() -> None:
    model = get_cost_model("bismo-edge")
    assert isinstance(model, BismoCostModel)
    c = model.config
    assert (c.dm, c.dk, c.dn, c.freq_mhz) == (8, 256, 8, 200.0)
    assert c.peak_binary_tops == pytest.approx(6.55, abs=0.01)


@pytest.mark.parametrize(("w", "a"), [(1, 1), (2, 1), (2, 2), (4, 3), (8, 8)])
def test_bismo_compute_bound_scales_with_w_times_a(w: int, a: int) -> None:
    cfg = BismoConfig()
    # Large M, K and N: much reuse per bit moved, compute-bound at every bit pair.
    base = bismo_matmul(2048, 16384, 2048, 1, 1, cfg)
    res = bismo_matmul(2048, 16384, 2048, w, a, cfg)
    assert res.compute_cycles >= res.memory_cycles
    assert res.cycles == w * a * base.cycles == 256 * 64 * 256 * w * a


def test_bismo_memory_bound_floor() -> None:
    cfg = BismoConfig()
    # A matrix-vector product (N=1) moves every weight for little compute: memory-bound.
    res = bismo_matmul(1024, 1024, 1, 2, 2, cfg)
    assert res.cycles == res.memory_cycles > res.compute_cycles
    assert res.memory_cycles == -(-(1024 * 1024 * 2 + 1024 * 2 + 1024 * 32) // 64)
    # Bits still lower the floor: weights are read at w bits.
    assert bismo_matmul(1024, 1024, 1, 1, 2, cfg).cycles < res.cycles
    # Energy: core pJ per compute cycle plus DRAM pJ per bit.
    assert res.energy_pj == pytest.approx(res.compute_cycles * 5000.0 + res.dram_bits * 20.0)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"schema": 1, "name": "x", "family": "npu", "parameters": {}}, "family 'npu'"),
        ({"schema": 1, "name": "x", "family": "bismo", "parameters": {"dm": -1}}, "dm = -1"),
        ({"schema": 1, "name": "x", "family": "bismo", "parameters": {"speed": 3}}, "unknown parameter"),
        ({"schema": 1, "name": "x", "family": "bitfusion", "parameters": {"m": 0}}, "m = 0"),
    ],
)
def test_bad_device_specs_are_refused(spec: dict, match: str) -> None:
    with pytest.raises(TableError, match=match):
        device_from_spec(json.loads(json.dumps(spec)))
