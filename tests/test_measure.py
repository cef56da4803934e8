"""Measured tables: per-layer timing with PyTorch and ONNX Runtime, absent precisions, and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwsearch.errors import ConfigError, TableError
from hwsearch.hardware import TableCostModel, bit_grid, get_cost_model, load_table, save_table
from hwsearch.hardware import measure as M
from hwsearch.layers import discover_layers

FAST = M.MeasureConfig(repeats=2, warmup=1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def net_layers() -> tuple[nn.Module, list]:
    net = _net()
    return net, discover_layers(net, (3, 8, 8))


@pytest.fixture(scope="module")
def ort_results(net_layers) -> dict[str, dict[str, float]]:
    pytest.importorskip("onnxruntime")
    net, layers = net_layers
    return M.measure_layers(net, layers, runtime="onnxruntime", config=FAST)


def _ok(ms: float) -> bool:
    return math.isfinite(ms) and ms > 0


def test_torch_runtime_times_fp32_and_int8(net_layers) -> None:
    net, layers = net_layers
    res = M.measure_layers(net, layers, runtime="torch", config=FAST)
    assert list(res) == [x.name for x in layers]
    for cells in res.values():
        assert set(cells) <= {"W32A32", "W8A8"} and "W32A32" in cells
        assert all(_ok(v) for v in cells.values())
    if torch.backends.quantized.supported_engines and {"x86", "fbgemm"} & set(
        torch.backends.quantized.supported_engines
    ):
        assert all("W8A8" in c for c in res.values())


def test_onnxruntime_times_fp32_int8_and_nbit_linear_weights(net_layers, ort_results) -> None:
    _, layers = net_layers
    for layer in layers:
        cells = ort_results[layer.name]
        assert {"W32A32", "W8A8"} <= set(cells) and all(_ok(v) for v in cells.values())
        nbit = {k for k in cells if k.endswith("A32") and k != "W32A32"}
        if layer.kind == "conv":
            assert not nbit  # no N-bit conv kernel in ONNX Runtime: absent, never invented
        else:
            assert "W4A32" in nbit and nbit <= {f"W{b}A32" for b in M.NBITS_WEIGHT_BITS}


@pytest.mark.parametrize("bits", M.NBITS_WEIGHT_BITS)
@pytest.mark.parametrize("k", [32, 40])
def test_nbits_packing_round_trips(bits: int, k: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, k)).astype(np.float32)
    packed, scales, deq = M._nbits_pack(w, bits)
    blocks = -(-k // 32)
    assert packed.shape == (5, blocks, 32 * bits // 8) and packed.dtype == np.uint8
    assert scales.shape == (5 * blocks,)
    step = np.repeat(scales.reshape(5, blocks), 32, axis=1)[:, :k]
    assert np.all(np.abs(deq - w) <= step / 2 + 1e-6)
    # unpack the low-bits-first layout again
    per = 8 // bits
    q = np.stack([(packed >> (i * bits)) & (2**bits - 1) for i in range(per)], axis=-1).reshape(5, -1)[:, :k]
    np.testing.assert_allclose((q.astype(np.int32) - 2 ** (bits - 1)) * step, deq, rtol=1e-6, atol=1e-6)


def test_runtime_that_cannot_run_leaves_precisions_absent_with_reasons(
    net_layers, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    net, layers = net_layers

    def refuse(*_a, **_k):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(M, "_session", refuse)
    rejected: dict[str, dict[str, str]] = {}
    res = M.measure_layers(net, layers, runtime="onnxruntime", config=FAST, rejected=rejected)
    assert all(cells == {} for cells in res.values())
    assert set(rejected) == {x.name for x in layers}
    for layer in layers:
        assert {"W32A32", "W8A8"} <= set(rejected[layer.name])
        assert all("cannot run it: RuntimeError: no kernel" in why for why in rejected[layer.name].values())
    with pytest.raises(TableError, match="ran none of the 4 layers"):
        M.measured_table(res, layers, runtime="onnxruntime", config=FAST, rejected=rejected)


@pytest.mark.parametrize("runtime", M.RUNTIMES)
def test_wrong_output_is_not_recorded_but_reported(runtime: str, net_layers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that disagrees with float (as u8s8 int8 does on x86 without VNNI) is left out, with its error."""
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    net, layers = net_layers
    monkeypatch.setattr(M, "_rel_error", lambda out, ref: 0.5)
    rejected: dict[str, dict[str, str]] = {}
    res = M.measure_layers(net, layers[:1], runtime=runtime, config=FAST, rejected=rejected)
    name = layers[0].name
    assert "W8A8" not in res[name]
    assert rejected[name]["W8A8"] == "output disagrees with float (relative RMS error 0.5 > 0.1)"
    if runtime == "torch":
        assert set(res[name]) == {"W32A32"}  # fp32 eager is the reference, never checked against itself
        table = M.measured_table(res, layers[:1], runtime=runtime, config=FAST, rejected=rejected)
        assert table.generator["rejected"] == {layers[0].signature(1): rejected[name]}
        assert table.generator["int8_form"] == "reduce_range"


@pytest.mark.parametrize("form", ["auto", "portable"])
def test_int8_forms_exact_on_this_cpu_are_all_tabulated(form: str, net_layers) -> None:
    """``auto`` and ``portable`` int8 agree with float on every CPU (AVX2-only x86 included): nothing is rejected."""
    pytest.importorskip("onnxruntime")
    net, layers = net_layers
    rejected: dict[str, dict[str, str]] = {}
    config = M.MeasureConfig(repeats=1, warmup=0, int8_form=form)
    res = M.measure_layers(net, layers, runtime="onnxruntime", config=config, rejected=rejected)
    assert all("W8A8" in cells for cells in res.values()) and rejected == {}
    table = M.measured_table(res, layers, runtime="onnxruntime", config=config)
    assert table.generator["int8_form"] in ("portable", "s8") and "rejected" not in table.generator


def test_int8_weights_in_each_form_compute_the_layer(net_layers) -> None:
    """The ONNX Runtime int8 graphs hold the same integers in both forms; the error vs float is rounding only."""
    pytest.importorskip("onnxruntime")
    from hwsearch.hardware.cpu import int8_form

    net, layers = net_layers
    mod = dict(net.named_modules())[layers[0].name]
    x = torch.rand((1, layers[0].in_channels, *layers[0].in_hw), generator=torch.Generator().manual_seed(0))
    for form in {"portable", int8_form()}:
        why: dict[str, str] = {}
        runners = M._ort_runners(mod, x, 1, form, why)
        assert "W8A8" in runners and why == {}


def test_measured_table_round_trips_and_restricts_bits(net_layers, ort_results, tmp_path: Path) -> None:
    _, layers = net_layers
    table = M.measured_table(ort_results, layers, runtime="onnxruntime", config=FAST, model="tiny")
    assert table.method == "measured" and table.batch == 1 and table.device.endswith("-onnxruntime")
    assert "onnxruntime" in table.source and table.generator["runtime"] == "onnxruntime"
    path = save_table(table, tmp_path / "m.json")
    model = get_cost_model(str(path))
    assert isinstance(model, TableCostModel) and load_table(path).to_dict() == table.to_dict()
    assert {(32, 32), (8, 8)} <= model.supported_pairs(layers)
    assert (4, 32) not in model.supported_pairs(layers)  # convs have no 4-bit weights
    assert bit_grid(model, layers) == ((8,), (8,))
    assert model.layer_cost(layers[0], 8, 8).latency_ms == pytest.approx(ort_results[layers[0].name]["W8A8"])
    with pytest.raises(TableError, match="no W4A4 cost"):
        model.layer_cost(layers[0], 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"), ({"threads": 0}, "threads"), ({"seed": 1.5}, "seed")],
)
def test_bad_measure_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        M.MeasureConfig(**kwargs)


def test_unknown_runtime_is_refused(net_layers) -> None:
    net, layers = net_layers
    with pytest.raises(ConfigError, match="runtime 'tvm'"):
        M.measure_layers(net, layers, runtime="tvm", config=FAST)


@pytest.mark.parametrize("runtime", M.RUNTIMES)
def test_cli_measure_then_show(runtime: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from hwsearch.cli import main

    out = tmp_path / "m.json"
    argv = ["latency", "measure", "--model", "smallcnn", "--runtime", runtime, "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "W32A32" in text and "total" in text
    table = load_table(out)
    assert table.method == "measured" and table.model == "smallcnn"
    assert table.generator["command"].startswith("hwsearch latency measure --model smallcnn --input-shape 1 28 28")
    assert main(["latency", "show", "--model", "smallcnn", "--target", str(out)]) == 0
    assert f"total on {table.device}" in capsys.readouterr().out
