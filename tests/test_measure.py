"""Measured tables: per-layer timing with PyTorch and ONNX Runtime, absent precisions, and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwsearch.errors import ConfigError, TableError
from hwsearch.hardware import TableCostModel, bit_grid, get_device, load_table, save_table
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


def test_runtime_that_cannot_run_leaves_precisions_absent(net_layers, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    net, layers = net_layers

    def refuse(*_a, **_k):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(M, "_session", refuse)
    res = M.measure_layers(net, layers, runtime="onnxruntime", config=FAST)
    assert all(cells == {} for cells in res.values())
    with pytest.raises(TableError, match="ran none of the 4 layers"):
        M.measured_table(res, layers, runtime="onnxruntime", config=FAST)


def test_wrong_output_is_not_recorded(net_layers, monkeypatch: pytest.MonkeyPatch) -> None:
    net, layers = net_layers
    monkeypatch.setattr(M, "_close", lambda *a, **k: False)
    res = M.measure_layers(net, layers[:1], runtime="torch", config=FAST)
    assert set(res[layers[0].name]) == {"W32A32"}  # fp32 eager is the reference; int8 failed its check


def test_measured_table_round_trips_and_restricts_bits(net_layers, ort_results, tmp_path: Path) -> None:
    _, layers = net_layers
    table = M.measured_table(ort_results, layers, runtime="onnxruntime", config=FAST, model="tiny")
    assert table.method == "measured" and table.batch == 1 and table.device.endswith("-onnxruntime")
    assert "onnxruntime" in table.source and table.generator["runtime"] == "onnxruntime"
    path = save_table(table, tmp_path / "m.json")
    model = get_device(str(path))
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
    assert main(["latency", "show", "--model", "smallcnn", "--device", str(out)]) == 0
    assert f"total on {table.device}" in capsys.readouterr().out
