"""ort-cpu's measured hand-overs: where each layer lies in the exported graph, the segment from one layer to the
next (it computes what the whole model computes there), the nine exports that meet every kind pair, and how a
segment's time becomes a boundary cost."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from hwsearch.errors import ModelError
from hwsearch.policy import FLOAT_BITS, Policy
from tests.fakes import layer

ort = pytest.importorskip("onnxruntime")  # the [onnx] extra
onnx = pytest.importorskip("onnx")

from hwsearch.hardware import ort_cpu  # noqa: E402 - after the optional-dependency skip
from hwsearch.hardware.handover import KIND_BITS, KINDS, cover_policies, kind_of, pair_key  # noqa: E402
from hwsearch.hardware.onnx_segments import alone, extract, find_layers, scope, segment, segment_feed  # noqa: E402

# forward order of _net()'s layers; body.1.short reads the block's input, not body.1.conv2's output
NAMES = ["stem.0", "body.0.conv1", "body.0.conv2", "body.1.conv1", "body.1.conv2", "body.1.short", "head"]


def _net():  # type: ignore[no-untyped-def]  # torch is imported lazily in this file
    """Nested numbered modules (the exporter's scope names), residual adds, a 1x1 shortcut conv (a forward-order
    pair with no path between), a pool and a flatten between the last conv and the head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, shortcut: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(4)
            self.short = nn.Conv2d(4, 4, 1) if shortcut else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (self.short(x) if self.short is not None else x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.body = nn.Sequential(Block(False), Block(True))
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Linear(4 * 3 * 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.pool(self.body(self.stem(x))).flatten(1))

    torch.manual_seed(0)
    return Net().eval()


def _export(policy: Policy, tmp_path: Path):  # type: ignore[no-untyped-def]
    import torch

    from hwsearch.onnx_export import export_onnx
    from hwsearch.quant import calibrate

    model = _net()
    calibration = calibrate(model, torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0)))
    ranges = {n: (-20.0, 20.0) for n in NAMES}
    path = export_onnx(
        model, policy, calibration, tmp_path / "m.onnx", (1, 6, 6), style="kernels", output_ranges=ranges
    )
    return onnx.shape_inference.infer_shapes(onnx.load(path))


def _run(model, feed):  # type: ignore[no-untyped-def]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own arithmetic
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("net.features.conv1", "/net/features/conv1/"),
        ("net.layer1.0.conv1", "/net/layer1/layer1.0/conv1/"),
        ("net.features.1.conv.0.0", "/net/features/features.1/conv/conv.0/conv.0.0/"),
    ],
)
def test_scope_is_the_exporters_module_path(name: str, expected: str) -> None:
    assert scope(name) == expected


def test_scope_refuses_a_name_starting_with_a_number() -> None:
    with pytest.raises(ModelError, match="'0.conv'"):
        scope("0.conv")


@pytest.mark.parametrize("tag", list(cover_policies(NAMES)))
def test_segments_compute_what_the_whole_model_computes(tag: str, tmp_path: Path) -> None:
    """Fed the whole model's own tensors, each segment gives the whole model's tensor at the next layer's output,
    bit for bit, under every cover policy; a residual add's other operand is one more input; a pair with no path
    between (a block's shortcut conv after its second conv) has no segment."""
    model = _export(cover_policies(NAMES)[tag], tmp_path)
    layers = find_layers(model, NAMES)
    assert [ly.name for ly in layers] == NAMES
    segments = {(a.name, b.name): segment(model, a, b) for a, b in itertools.pairwise(layers)}
    assert segments.pop(("body.1.conv2", "body.1.short")) is None
    assert all(s is not None for s in segments.values())
    inputs = {pair: len(s.inputs) for pair, s in segments.items()}  # type: ignore[union-attr]
    assert inputs[("body.0.conv2", "body.1.conv1")] == 2  # block 0's add reads its input
    assert inputs[("body.0.conv1", "body.0.conv2")] == 1
    kept = {pair: s.kept for pair, s in segments.items()}  # type: ignore[union-attr]
    assert kept[("body.0.conv1", "body.0.conv2")] == ()
    assert len(kept[("stem.0", "body.0.conv1")]) == 1  # the stem's output: block 0's add reads it too
    assert len(kept[("body.0.conv2", "body.1.conv1")]) == 1  # block 0's output: block 1's shortcut reads it too
    nodes = list(model.graph.node)
    for s in segments.values():
        assert s is not None
        outside = {t for i, n in enumerate(nodes) if i not in s.nodes for t in n.input}
        assert set(s.kept) <= outside
    whole = onnx.ModelProto()
    whole.CopyFrom(model)
    shapes = {v.name: v for v in model.graph.value_info}
    for t in {t for s in segments.values() for t in (*s.inputs, s.output, *s.kept)}:  # type: ignore[union-attr]
        if t in shapes:
            whole.graph.output.append(shapes[t])
    x = np.random.default_rng(0).random((1, 1, 6, 6), dtype=np.float32)
    tensors = {"input": x, **_run(whole, {"input": x})}
    for s in segments.values():
        assert s is not None
        got = _run(extract(model, s), {t: tensors[t] for t in s.inputs})
        for t in (s.output, *s.kept):
            np.testing.assert_array_equal(got[t], tensors[t])


def test_a_layer_the_graph_lacks_is_refused(tmp_path: Path) -> None:
    model = _export(cover_policies(NAMES)["cover00"], tmp_path)
    with pytest.raises(ModelError, match="'body.2.conv1'"):
        find_layers(model, [*NAMES, "body.2.conv1"])


def test_segment_feed_matches_each_input_in_shape_and_type(tmp_path: Path) -> None:
    policy = Policy({n: (8, 8) for n in NAMES}, {})
    model = _export(policy, tmp_path)
    layers = find_layers(model, NAMES)
    s = segment(model, layers[2], layers[3])
    assert s is not None
    feed = segment_feed(model, s.inputs)
    assert set(feed) == set(s.inputs)
    assert all(a.dtype == np.float32 and a.shape == (1, 4, 6, 6) for a in feed.values())
    assert len(_run(extract(model, s), feed)) == 1 + len(s.kept)  # the extracted segment runs on it


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_nine_cover_policies_meet_every_kind_pair_of_every_layer_pair(n: int) -> None:
    names = [f"l{i}" for i in range(n)]
    covers = cover_policies(names)
    assert len(covers) == len(KINDS) ** 2
    for a, b in itertools.pairwise(names):
        met = sorted(kind_of(p[a].w, p[a].a) + kind_of(p[b].w, p[b].a) for p in covers.values())
        assert met == sorted(x + y for x, y in itertools.product(KINDS, repeat=2))


@pytest.mark.parametrize(
    ("bits", "kind"),
    [((FLOAT_BITS, FLOAT_BITS), "F"), ((4, FLOAT_BITS), "F"), ((FLOAT_BITS, 8), "Q"), ((8, 8), "I"), ((4, 8), "I")],
)
def test_kinds(bits: tuple[int, int], kind: str) -> None:
    assert kind_of(*bits) == kind
    assert kind_of(*KIND_BITS[kind]) == kind


@pytest.fixture
def cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Made-up cells (ms by pair) and no call overhead."""
    times = {"W32A32": 1.0, "W32A8": 1.5, "W8A8": 0.5}
    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        ort_cpu.OrtCpuCostModel, "_measure_cell", lambda self, ly, w, a: {"median_ms": times[f"W{w}A{a}"], "iqr_ms": 0}
    )
    monkeypatch.setattr(ort_cpu.OrtCpuCostModel, "call_overhead_ms", 0.0)
    return times


def test_a_hand_over_is_its_measured_excess_plus_the_call_it_saves(
    cells: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured for its kinds (whatever widths stand in the kind), the boundary is segment - both layers + one
    call; a kind pair or layer pair never measured hands over for free; the fitted per-element terms come on
    top."""
    monkeypatch.setattr(ort_cpu.OrtCpuCostModel, "call_overhead_ms", 0.01)
    a, b, c = layer("a", 0, 4, 4, 6), layer("b", 1, 4, 4, 6), layer("c", 2, 4, 4, 6)
    cm = ort_cpu.OrtCpuCostModel(repeats=3, warmup=1, passes=1)
    cm._handovers = {pair_key("a", "b"): {"FI": 0.25, "II": -0.2}}
    assert cm.boundary_cost(a, (FLOAT_BITS, FLOAT_BITS), b, (4, 8)) == pytest.approx(0.25 + 0.01)
    assert cm.boundary_cost(a, (8, 8), b, (4, 8)) == pytest.approx(-0.2 + 0.01)
    assert cm.boundary_cost(a, (FLOAT_BITS, 8), b, (8, 8)) == 0.0  # QI: not measured
    assert cm.boundary_cost(b, (8, 8), c, (8, 8)) == 0.0  # no segment between b and c
    cm._per_output = 1e-3
    assert cm.boundary_cost(a, (8, 8), b, (8, 8)) == pytest.approx(-0.19 + 1e-3 * 4 * 6 * 6)
    policy = Policy({"a": (FLOAT_BITS, FLOAT_BITS), "b": (8, 8), "c": (8, 8)}, {})
    cells_ms = (1.0 - 0.01) + 2 * (0.5 - 0.01)
    assert cm.predict_ms([a, b, c], policy) == pytest.approx(0.01 + cells_ms + 0.26 + 1e-3 * 4 * 6 * 6)


def test_calibration_times_every_pair_at_every_kind_once_per_machine(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every consecutive pair of the real model's layers, at all nine kind pairs, from the file the export writes;
    a second cost model on the same machine reads them from the cache and prices a policy alike."""
    import zlib

    from hwsearch.workflow import prepare

    ws = prepare(checkpoint)
    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_cpu.time, "sleep", lambda s: None)
    monkeypatch.setattr(  # arbitrary but repeatable: one figure per graph
        ort_cpu, "time_onnx", lambda data, *args: (0.01 + zlib.crc32(data) % 1000 / 1e5, 0.0)
    )
    record = ort_cpu.OrtCpuCostModel(repeats=3, warmup=1, passes=1).calibrate(ws)
    names = [ly.name for ly in ws.layers]
    segments = record["handovers_ms"]
    assert list(segments) == [pair_key(a, b) for a, b in itertools.pairwise(names)]  # smallcnn is a chain
    assert all(sorted(v) == sorted(x + y for x, y in itertools.product(KINDS, repeat=2)) for v in segments.values())
    policy = Policy({n: [(8, 8), (FLOAT_BITS, FLOAT_BITS), (FLOAT_BITS, 8)][i % 3] for i, n in enumerate(names)}, {})
    cm = ort_cpu.OrtCpuCostModel(repeats=3, warmup=1, passes=1)
    cm.calibrate(ws)
    predicted = cm.predict_ms(ws.layers, policy)
    monkeypatch.setattr(ort_cpu, "time_onnx", lambda *args: pytest.fail("measured again"))
    again = ort_cpu.OrtCpuCostModel(repeats=3, warmup=1, passes=1)
    again.calibrate(ws)
    assert again.predict_ms(ws.layers, policy) == predicted


def test_hand_overs_are_timed_in_turn_with_their_layers(checkpoint: Path, tmp_path: Path) -> None:
    """Each segment is timed within three timings of both its layers (cut from the same export), and its
    hand-over is what it ran beyond them: with a timer that charges a graph one unit per node, the excess is the
    segment's node count less both layers'. A shared host's speed drifts within a minute: what is compared must
    be timed together."""
    from hwsearch.hardware.handover import time_handovers
    from hwsearch.onnx_export import export_onnx
    from hwsearch.workflow import prepare

    ws = prepare(checkpoint)
    names = [ly.name for ly in ws.layers]
    calls: list[frozenset[str]] = []

    def timer(data: bytes, feed: dict[str, np.ndarray]) -> float:
        graph = onnx.load_from_string(data).graph
        calls.append(frozenset(n for n in names if any(x.name.startswith(scope(n)) for x in graph.node)))
        return float(len(graph.node))

    out = time_handovers(ws, "s8", "test", timer, passes=2)
    assert len(calls) == 2 * 9 * (2 * len(names) - 1)  # every layer once and every segment once per cover
    for k, scopes in enumerate(calls):
        if len(scopes) == 2:
            assert all(frozenset([n]) in calls[max(k - 3, 0) : k] for n in scopes)
    for tag, policy in cover_policies(names).items():
        shape = tuple(int(d) for d in ws.splits.input_shape)
        path = export_onnx(ws, policy, None, tmp_path / f"{tag}.onnx", shape, int8_form="s8", style="kernels")
        model = onnx.shape_inference.infer_shapes(onnx.load(path))
        layers = find_layers(model, names)
        for first, second in itertools.pairwise(layers):
            s = segment(model, first, second)
            assert s is not None  # smallcnn is a chain
            kinds = kind_of(policy[first.name].w, policy[first.name].a) + kind_of(
                policy[second.name].w, policy[second.name].a
            )
            count = len(extract(model, s).graph.node)
            singles = [len(extract(model, alone(ly)).graph.node) for ly in (first, second)]
            assert out[pair_key(first.name, second.name)][kinds] == count - sum(singles)
