"""Cost table format: build, save/load, lookups, validation, HAQ and APQ imports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hwsearch.errors import TableError
from hwsearch.hardware import (
    CostTable,
    TableCostModel,
    build_table,
    get_cost_model,
    import_apq_json,
    import_haq_npy,
    load_table,
    policy_cost,
    save_table,
)
from hwsearch.layers import LayerInfo, discover_layers
from hwsearch.policy import uniform_policy
from tests.ci import requires

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
HAQ = REF / "haq_qmobilenetv2_imagenet100_batch16_latency_table.npy"
APQ = REF / "apq_BitFusion_new.b1.json"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(512, 10)
    )


@pytest.fixture(scope="module")
def small_table() -> tuple[CostTable, list[LayerInfo]]:
    layers = discover_layers(_net(), (3, 8, 8))
    model = get_cost_model("bitfusion-edge")
    table = build_table(model, layers, batch=1, model="tiny", bits=(2, 4, 8), generator={"device": "bitfusion-edge"})
    return table, layers


def _good() -> dict:
    return {
        "schema": 1,
        "device": "dev",
        "batch": 1,
        "method": "measured",
        "source": "test",
        "units": {"latency": "ms", "energy": "mJ"},
        "entries": {"conv-sig": {"W8A8": {"latency": 1.5, "energy": None}}},
    }


def test_round_trip_and_same_costs_as_analytical(small_table, tmp_path: Path) -> None:
    table, layers = small_table
    path = save_table(table, tmp_path / "sub" / "t.json")
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]  # atomic: no temp file left
    loaded = load_table(path)
    assert loaded == table or loaded.to_dict() == table.to_dict()
    assert loaded.method == "analytical" and loaded.batch == 1 and loaded.model == "tiny"
    names = [x.name for x in layers]
    for bits in (2, 4, 8):
        pol = uniform_policy(names, bits)
        ours = policy_cost(TableCostModel(loaded), layers, pol)
        ref = policy_cost(get_cost_model("bitfusion-edge"), layers, pol)
        assert ours.latency_ms == pytest.approx(ref.latency_ms, rel=1e-12)
        assert ours.energy_mj == pytest.approx(ref.energy_mj, rel=1e-12)
    assert TableCostModel(loaded).supported_bits() == (2, 4, 8)


def test_missing_signature_names_it_and_the_build_command(small_table) -> None:
    table, _ = small_table
    other = LayerInfo("head", "conv", 0, 3, 64, (7, 7), (2, 2), (3, 3), 1, (224, 224), (112, 112), 9408, True)
    with pytest.raises(TableError) as exc:
        TableCostModel(table).layer_cost(other, 8, 8)
    msg = str(exc.value)
    assert other.signature(1) in msg and "'head'" in msg
    assert "hwsearch latency build --target bitfusion-edge --model tiny" in msg


def test_missing_bit_pair_lists_present_pairs(small_table) -> None:
    table, layers = small_table
    with pytest.raises(TableError, match=r"no W3A3 cost .* it has W2A2"):
        TableCostModel(table).layer_cost(layers[0], 3, 3)


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"schema": 2}, "schema 2 is not supported"),
        ({"method": "guessed"}, "method"),
        ({"batch": 0}, "batch"),
        ({"units": {"latency": "s", "energy": "mJ"}}, "latency unit 's'"),
        ({"units": {"latency": "ms", "energy": "J"}}, "energy unit 'J'"),
        ({"units": {"latency": "cycles", "energy": "mJ"}}, "clock_hz"),
        ({"entries": {}}, "no entries"),
        ({"entries": {"s": {"W9A8": {"latency": 1.0}}}}, "bit key 'W9A8'"),
        ({"entries": {"s": {"W8A8": {"latency": -1.0}}}}, "must be positive"),
        ({"entries": {"s": {"W8A8": {"latency": 0.0}}}}, "must be positive"),
        ({"entries": {"s": {"W8A8": {"latency": math.inf}}}}, "not finite"),
        ({"entries": {"s": {"W8A8": {"latency": 1.0, "energy": math.nan}}}}, "not finite"),
        ({"entries": {"s": {"W8A8": {"latency": "fast"}}}}, "not a number"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_bad_tables_are_rejected(tmp_path: Path, patch: dict, match: str) -> None:
    data = {**_good(), **patch}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TableError, match=match):
        load_table(path)


def test_good_minimal_table_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(_good()))
    t = load_table(path)
    assert t.entry("conv-sig", 8, 8).latency == 1.5 and t.entry("conv-sig", 8, 8).energy is None


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(TableError, match="not valid JSON"):
        load_table(path)
    with pytest.raises(TableError, match="does not exist"):
        load_table(tmp_path / "absent.json")


@requires(HAQ.is_file(), f"HAQ reference table not found at {HAQ}")
def test_haq_import_totals_on_mobilenet_v2(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no weights initialised, no arithmetic
        net = torchvision.models.mobilenet_v2(num_classes=100)
    layers = discover_layers(net, (3, 224, 224))
    assert len(layers) == 53
    table = import_haq_npy(HAQ, layers, model="mobilenet_v2", clock_hz=500e6)
    assert table.method == "imported" and table.units["latency"] == "cycles" and table.batch == 16
    total = {b: sum(table.entry(x.signature(16), b, b).latency for x in layers) for b in (8, 2)}
    assert total == {8: 39_624_933, 2: 7_063_425}
    loaded = load_table(save_table(table, tmp_path / "haq.json"))
    cost = policy_cost(TableCostModel(loaded), layers, uniform_policy([x.name for x in layers], 8))
    assert cost.latency_ms == pytest.approx(39_624_933 / 500e6 * 1e3 / 16)
    assert cost.energy_mj is None


@requires(HAQ.is_file(), f"HAQ reference table not found at {HAQ}")
def test_haq_import_refuses_wrong_layer_count() -> None:
    layers = discover_layers(_net(), (3, 8, 8))
    with pytest.raises(TableError, match="53 layers but the model has 3"):
        import_haq_npy(HAQ, layers)


@requires(APQ.is_file(), f"APQ reference table not found at {APQ}")
def test_apq_import_looks_up_known_key() -> None:
    raw = json.loads(APQ.read_text())
    key = "(96, 456, 14, 1, 1, 0, 1)-W4A4"
    table = import_apq_json(APQ)
    assert table.batch == 1 and table.units["latency"] == "ms"
    layer = LayerInfo("blk", "conv", 5, 96, 456, (1, 1), (1, 1), (0, 0), 1, (14, 14), (14, 14), 96 * 456, False)
    cost = TableCostModel(table).layer_cost(layer, 4, 4)
    assert cost.latency_ms == raw[key]["latency"] and cost.energy_mj == raw[key]["energy"]
    assert TableCostModel(table).supported_bits() == (4, 6, 8)


def test_cli_build_then_show_from_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from hwsearch.cli_latency import add_latency_parser

    parser = argparse.ArgumentParser()
    add_latency_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "t.json"
    args = parser.parse_args(["latency", "build", "--target", "bismo-edge", "--model", "smallcnn", "--out", str(out)])
    assert args.func(args) == 0
    table = load_table(out)
    assert table.device == "bismo-edge" and table.model == "smallcnn" and table.method == "analytical"
    args = parser.parse_args(["latency", "show", "--model", "smallcnn", "--table", str(out)])
    assert args.func(args) == 0
    assert "total on bismo-edge" in capsys.readouterr().out
    args = parser.parse_args(["latency", "show", "--model", "smallcnn", "--target", "nope"])
    with pytest.raises(TableError, match="unknown device 'nope'"):
        args.func(args)


# ------------------------------------------------------------------ shipped tables, table devices, bit grids

SHIPPED_SMALL = ["bismo-edge__smallcnn", "bitfusion-edge__smallcnn"]


def _all_shipped() -> list[str]:
    from hwsearch.hardware.regenerate import shipped_table_name, shipped_tables

    return [shipped_table_name(d, m.name).removesuffix(".json") for d, m in shipped_tables()]


def test_the_table_checks_cover_every_shipped_file() -> None:
    from hwsearch.hardware.regenerate import shipped_dir

    on_disk = {p.stem for p in shipped_dir().glob("*__*.json")}
    assert set(_all_shipped()) == on_disk and len(on_disk) == 25
    assert set(SHIPPED_SMALL) <= on_disk


@pytest.mark.slow  # all 25 take about 70 s on 2 cores (the ImageNet-shape models dominate)
@pytest.mark.parametrize("stem", [s for s in _all_shipped() if s not in SHIPPED_SMALL])
def test_every_other_shipped_table_rebuilds_byte_for_byte(stem: str) -> None:
    from hwsearch.hardware.regenerate import regenerate, shipped_dir

    assert regenerate(shipped_dir(), only=[stem], check=True) == [(shipped_dir() / f"{stem}.json", "unchanged")]


@pytest.mark.parametrize("stem", SHIPPED_SMALL)
def test_shipped_table_regenerates_exactly(stem: str, tmp_path: Path) -> None:
    from hwsearch.hardware.regenerate import regenerate, shipped_dir

    shipped = shipped_dir() / f"{stem}.json"
    assert regenerate(shipped_dir(), only=[stem], check=True) == [(shipped, "unchanged")]
    [(path, status)] = regenerate(tmp_path, only=[stem])
    assert status == "written" and path.read_bytes() == shipped.read_bytes()


def test_cli_build_command_recorded_in_table_reproduces_it(tmp_path: Path) -> None:
    import shlex

    from hwsearch.cli import main
    from hwsearch.hardware.regenerate import shipped_table_path

    shipped = shipped_table_path("bismo-edge", "smallcnn")
    command = json.loads(shipped.read_text())["generator"]["command"]
    assert (
        command == "hwsearch latency build --target bismo-edge --model smallcnn --input-shape 1 28 28 --num-classes 10"
    )
    out = tmp_path / shipped.name
    assert main([*shlex.split(command)[1:], "--out", str(out)]) == 0
    assert out.read_bytes() == shipped.read_bytes()


def test_every_shipped_table_is_present_small_and_complete() -> None:
    from hwsearch.hardware import list_devices
    from hwsearch.hardware.regenerate import SHIPPED_MODELS, shipped_dir, shipped_table_name

    names = {m.name for m in SHIPPED_MODELS}
    assert {"smallcnn", "resnet20", "mobilenet_v2", "resnet18"} <= names
    total = 0
    for device in list_devices():
        for model in SHIPPED_MODELS:
            path = shipped_dir() / shipped_table_name(device, model.name)
            total += path.stat().st_size
            assert path.stat().st_size < 200_000, path.name
            table = load_table(path)
            assert (table.device, table.model, table.method) == (device, model.name, "analytical")
            assert table.generator["input_shape"] == list(model.input_shape)
            assert table.generator["num_classes"] == model.num_classes
            cost = TableCostModel(table)
            assert cost.supported_bits() == tuple(range(1, 9))
            assert cost.supported_pairs() == {(w, a) for w in range(1, 9) for a in range(1, 9)}
    assert total < 3_000_000
    extra = {p.name for p in shipped_dir().glob("*.json")} - {
        shipped_table_name(d, m.name) for d in list_devices() for m in SHIPPED_MODELS
    }
    assert not extra, f"unregistered tables {extra}: add them to SHIPPED_MODELS or remove them"


def test_shipped_table_prices_like_the_device_model() -> None:
    from hwsearch.hardware.regenerate import shipped_table_path
    from hwsearch.models import build_model

    torch.manual_seed(0)
    layers = discover_layers(build_model("resnet20", 10, (3, 32, 32)), (3, 32, 32))
    table = get_cost_model(str(shipped_table_path("bitfusion-edge", "resnet20")))
    analytical = get_cost_model("bitfusion-edge")
    for bits in (2, 5, 8):
        pol = uniform_policy([x.name for x in layers], bits)
        assert policy_cost(table, layers, pol) == policy_cost(analytical, layers, pol)


def test_missing_shipped_table_names_the_build_command() -> None:
    from hwsearch.hardware.regenerate import shipped_table_path

    with pytest.raises(TableError, match="hwsearch latency build --target bitfusion --model resnet99"):
        shipped_table_path("bitfusion", "resnet99")


def test_unknown_table_stem_is_refused() -> None:
    from hwsearch.hardware.regenerate import regenerate

    with pytest.raises(TableError, match="unknown shipped table"):
        regenerate(only=["bitfusion__nope"], check=True)


def test_get_cost_model_reads_a_table_path(small_table, tmp_path: Path) -> None:
    from hwsearch.hardware import is_table_path

    table, layers = small_table
    path = save_table(table, tmp_path / "t.json")
    for spec in (str(path), path):
        model = get_cost_model(spec)
        assert isinstance(model, TableCostModel) and model.name == "bitfusion-edge"
        assert model.supported_bits() == (2, 4, 8)
        assert model.supported_pairs(layers) == {(w, a) for w in (2, 4, 8) for a in (2, 4, 8)}
    assert is_table_path("x.json") and is_table_path("dir/x") and not is_table_path("bitfusion-edge")
    with pytest.raises(TableError, match="does not exist"):
        get_cost_model(tmp_path / "absent.json")


def _pairs_table(rows: dict[str, list[str]]) -> TableCostModel:
    entries = {sig: {k: {"latency": 1.0, "energy": None} for k in keys} for sig, keys in rows.items()}
    return TableCostModel(CostTable(device="t", batch=1, method="measured", source="", entries=entries))


_L0 = LayerInfo("a", "conv", 0, 3, 8, (3, 3), (1, 1), (1, 1), 1, (8, 8), (8, 8), 216, True)
_L1 = LayerInfo("b", "linear", 1, 8, 10, (1, 1), (1, 1), (0, 0), 1, (1, 1), (1, 1), 80, False)


@pytest.mark.parametrize(
    ("rows", "grid"),
    [
        ({_L0.signature(1): ["W32A32", "W8A8"], _L1.signature(1): ["W32A32", "W8A8", "W4A32"]}, ((8,), (8,))),
        (
            {
                _L0.signature(1): ["W4A4", "W4A8", "W8A4", "W8A8", "W2A8"],
                _L1.signature(1): ["W4A4", "W4A8", "W8A4", "W8A8"],
            },
            ((4, 8), (4, 8)),
        ),
        (
            {_L0.signature(1): ["W2A8", "W4A8", "W8A8", "W8A4"], _L1.signature(1): ["W2A8", "W4A8", "W8A8"]},
            ((2, 4, 8), (8,)),
        ),
    ],
)
def test_bit_grid_of_a_table(rows: dict[str, list[str]], grid: tuple) -> None:
    from hwsearch.hardware import bit_grid, supported_pairs

    model = _pairs_table(rows)
    pairs = supported_pairs(model, [_L0, _L1])
    assert all(p in pairs for w in grid[0] for a in grid[1] for p in [(w, a)])
    assert bit_grid(model, [_L0, _L1]) == grid


def test_bit_grid_of_devices_and_failures() -> None:
    from hwsearch.hardware import bit_grid

    assert bit_grid(get_cost_model("bismo-edge"), [_L0], range(2, 9)) == (tuple(range(2, 9)), tuple(range(2, 9)))
    only_float = _pairs_table({_L0.signature(1): ["W32A32"], _L1.signature(1): ["W32A32"]})
    with pytest.raises(TableError, match="prices no bit pair among"):
        bit_grid(only_float, [_L0, _L1])
    with pytest.raises(TableError, match=r"no entry for layer 'b'"):
        bit_grid(_pairs_table({_L0.signature(1): ["W8A8"]}), [_L0, _L1])


def test_cli_show_accepts_a_table_as_device(small_table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwsearch.cli import main
    from hwsearch.hardware.regenerate import shipped_table_path

    path = shipped_table_path("bismo-edge", "smallcnn")
    assert main(["latency", "show", "--model", "smallcnn", "--target", str(path)]) == 0
    assert "total on bismo-edge" in capsys.readouterr().out


def test_saved_table_is_compact_one_line_per_signature(small_table, tmp_path: Path) -> None:
    table, _ = small_table
    text = save_table(table, tmp_path / "t.json").read_text()
    lines = text.splitlines()
    assert len(lines) == 3 + len(table.entries) and ": " not in lines[0]
    assert json.loads(text) == table.to_dict()
