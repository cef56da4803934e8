"""Packed 4-bit weight storage in exported ONNX models (hwsearch.onnx_pack): smaller files, same integers, same
ONNX Runtime outputs and the same optimized graph."""

from __future__ import annotations

import inspect
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hwsearch.onnx_export import export_onnx
from hwsearch.onnx_pack import PACK_OPSET, pack_low_bit_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

EIGHT_BIT = (TensorProto.INT8, TensorProto.UINT8)
FOUR_BIT = (TensorProto.INT4, TensorProto.UINT4)
HOOKED = "pack_int4" in inspect.signature(export_onnx).parameters


@pytest.fixture(scope="module")
def ws(checkpoint: Path) -> Any:
    from hwsearch.workflow import prepare

    return prepare(checkpoint)


def _export(ws: Any, w_bits: int, path: Path, pack: bool) -> Any:
    """The smallcnn at W{w_bits}A8, packed or not (through export_onnx's hook once it has one)."""
    policy = ws.uniform(w_bits, 8)
    if HOOKED:
        options: dict[str, Any] = {"pack_int4": pack}  # a keyword the unhooked export_onnx lacks
        return onnx.load(export_onnx(ws, policy, ws.calibration, path, **options))
    proto = onnx.load(export_onnx(ws, policy, ws.calibration, path))
    if pack:
        proto = pack_low_bit_weights(proto)[0]
        onnx.save(proto, path)
    return proto


def _session(proto: Any, level: Any, optimized: Path | None = None) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = level
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


def _weight_bytes(proto: Any) -> int:
    """Bytes of the integer weight initializers (2-D or more), as stored."""
    inits = [i for i in proto.graph.initializer if i.data_type in EIGHT_BIT + FOUR_BIT and len(i.dims) >= 2]
    assert inits and all(i.raw_data for i in inits)
    return sum(len(i.raw_data) for i in inits)


def _optimized_ops(proto: Any, path: Path) -> Counter[str]:
    """Op types of the graph ONNX Runtime runs (extended level: constant folding, then QDQ fusion)."""
    _session(proto, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, path)
    graph = onnx.load(path).graph
    assert not any(i.data_type in FOUR_BIT for i in graph.initializer)  # every unpacking Cast was folded
    return Counter(n.op_type for n in graph.node)


def _opsets(proto: Any) -> dict[str, int]:
    return {o.domain: o.version for o in proto.opset_import}


# ------------------------------------------------------------------------------------------------ smallcnn
@pytest.mark.parametrize("w_bits", [2, 3, 4, 5, 8])
def test_smallcnn_packs_low_bit_weights_and_runs_identically(ws: Any, w_bits: int, tmp_path: Path) -> None:
    plain = _export(ws, w_bits, tmp_path / "plain.onnx", pack=False)
    packed = _export(ws, w_bits, tmp_path / "packed.onnx", pack=True)
    weights = {
        n.input[0] for n in plain.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_int")
    }
    assert len(weights) == len(ws.layer_names)
    _, names = pack_low_bit_weights(plain)
    if w_bits > 4:  # 5 bits reach +-15, 8 bits are uint8 around 128: nothing fits
        assert names == {}
        assert packed.SerializeToString() == plain.SerializeToString()
        return
    assert names == dict.fromkeys(weights, 4)
    assert _opsets(packed)[""] >= PACK_OPSET and packed.ir_version >= 10
    plain_bytes, packed_bytes = _weight_bytes(plain), _weight_bytes(packed)
    assert 0.5 <= packed_bytes / plain_bytes <= 0.501  # two values a byte (+1 byte for an odd count)
    assert (tmp_path / "packed.onnx").stat().st_size < 0.55 * (tmp_path / "plain.onnx").stat().st_size

    # same integers, zero points untouched (the Cast route keeps them 8-bit)
    before = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    after = {i.name: i for i in packed.graph.initializer}
    for name, q in before.items():
        if name in names:
            assert after[name].data_type == TensorProto.INT4
        back = numpy_helper.to_array(after[name])
        assert np.array_equal(
            back.astype(np.int32) if name in names else back, q.astype(np.int32) if name in names else q
        )
    # ONNX Runtime: identical outputs with and without graph optimizations, and the same optimized graph
    x, _ = ws.split("test", 256)
    for level in LEVELS:
        a, b = (_session(p, level).run(None, {"input": x.numpy()})[0] for p in (plain, packed))
        assert float(np.abs(a - b).max()) <= 1e-5, level
        assert np.array_equal(a.argmax(1), b.argmax(1))
    assert _optimized_ops(packed, tmp_path / "opt_p.onnx") == _optimized_ops(plain, tmp_path / "opt_u.onnx")


def test_smallcnn_direct_dequantize_stores_zero_points_in_4_bits(ws: Any, tmp_path: Path) -> None:
    """DequantizeLinear reading INT4 itself: zero points follow; the file's values (no fusion) are exact. ONNX
    Runtime 1.32 does not fuse a 4-bit DequantizeLinear into its integer kernels, so optimized runs compute in
    float: close to, not bit-equal to, the fused 8-bit ones."""
    plain = _export(ws, 4, tmp_path / "plain.onnx", pack=False)
    packed, names = pack_low_bit_weights(plain, direct_dequantize=True)
    assert len(names) == len(ws.layer_names) and "Cast" not in {n.op_type for n in packed.graph.node}
    before = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    after = {i.name: i for i in packed.graph.initializer}
    weight_dq = [n for n in packed.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in names]
    assert len(weight_dq) == len(names)
    for node in weight_dq:
        for name in (node.input[0], node.input[2]):
            assert after[name].data_type == TensorProto.INT4
            assert np.array_equal(numpy_helper.to_array(after[name]).astype(np.int8), before[name])
    x, _ = ws.split("test", 256)
    a, b = (_session(p, LEVELS[0]).run(None, {"input": x.numpy()})[0] for p in (plain, packed))
    assert np.array_equal(a, b)
    a, b = (_session(p, LEVELS[1]).run(None, {"input": x.numpy()})[0] for p in (plain, packed))
    assert float((a.argmax(1) == b.argmax(1)).mean()) >= 0.99


@pytest.mark.skipif(not HOOKED, reason="export_onnx has no pack_int4 keyword yet")
def test_export_onnx_records_what_it_packed(ws: Any, tmp_path: Path) -> None:
    proto = onnx.load(export_onnx(ws, ws.uniform(3, 8), ws.calibration, tmp_path / "m.onnx"))  # packs by default
    props = {p.key: p.value for p in proto.metadata_props}
    recorded = json.loads(props["hwsearch.packed_weights"])
    assert recorded == {f"{n}.weight_int": 4 for n in ws.layer_names}
    assert "hwsearch.policy" in props
    plain = onnx.load(export_onnx(ws, ws.uniform(8, 8), ws.calibration, tmp_path / "p.onnx"))
    assert "hwsearch.packed_weights" not in {p.key for p in plain.metadata_props}
    assert _opsets(plain)[""] == 13


# --------------------------------------------------------------------------------------------- hand-built graphs
def _model(nodes: list[Any], inputs: list[Any], output: Any, inits: dict[str, np.ndarray]) -> Any:
    graph = helper.make_graph(nodes, "g", inputs, [output], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=7)
    onnx.checker.check_model(model)
    return model


def _int_op_model(kind: str, rng: np.random.Generator) -> tuple[Any, dict[str, np.ndarray]]:
    """A weight initializer ``W`` read by an integer op (or a Cast), plus 1-element zero points left alone."""
    f32 = TensorProto.FLOAT
    if kind == "convinteger":
        w = rng.integers(-8, 8, size=(3, 2, 3, 3)).astype(np.int8)
        nodes = [helper.make_node("ConvInteger", ["x", "W", "xzp", "wzp"], ["y"], pads=[1, 1, 1, 1])]
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 2, 5, 5])
        feeds = {"x": rng.integers(0, 256, size=(2, 2, 5, 5)).astype(np.uint8)}
        inits = {"W": w, "xzp": np.array(7, np.uint8), "wzp": np.array(0, np.int8)}
        out_shape = [None, 3, 5, 5]
    elif kind == "cast":
        w = rng.integers(-8, 8, size=(6, 4)).astype(np.int8)
        nodes = [helper.make_node("Cast", ["W"], ["Wf"], to=f32), helper.make_node("MatMul", ["x", "Wf"], ["y"])]
        x = helper.make_tensor_value_info("x", f32, [None, 6])
        feeds = {"x": rng.standard_normal((3, 6)).astype(np.float32)}
        inits = {"W": w}
        out_shape = [None, 4]
    else:  # matmulinteger with an int8 or a uint8 weight
        dtype = np.int8 if kind == "matmulinteger-s8" else np.uint8
        w = (rng.integers(-8, 8, size=(6, 4)) if dtype == np.int8 else rng.integers(0, 16, size=(6, 4))).astype(dtype)
        nodes = [helper.make_node("MatMulInteger", ["x", "W", "xzp", "wzp"], ["y"])]
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 6])
        feeds = {"x": rng.integers(0, 256, size=(3, 6)).astype(np.uint8)}
        inits = {"W": w, "xzp": np.array(3, np.uint8), "wzp": np.array(1, dtype)}
        out_shape = [None, 4]
    out = helper.make_tensor_value_info("y", f32 if kind == "cast" else TensorProto.INT32, out_shape)
    if kind != "cast":  # a second reader of the same weight shares the one unpacking Cast
        nodes.append(helper.make_node("Cast", ["W"], ["W_f"], to=f32))
        nodes.append(helper.make_node("ReduceSum", ["W_f"], ["w_sum"], keepdims=0))
        nodes.append(helper.make_node("Cast", ["y"], ["y_f"], to=f32))
        nodes.append(helper.make_node("Add", ["y_f", "w_sum"], ["z"]))
        out = helper.make_tensor_value_info("z", f32, out_shape)
    return _model(nodes, [x], out, inits), feeds


@pytest.mark.parametrize("kind", ["matmulinteger-s8", "matmulinteger-u8", "convinteger", "cast"])
def test_integer_ops_read_the_packed_weight_through_one_folded_cast(kind: str, tmp_path: Path) -> None:
    model, feeds = _int_op_model(kind, np.random.default_rng(len(kind)))
    packed, names = pack_low_bit_weights(model)
    assert names == {"W": 4}
    assert _opsets(packed) == {"": PACK_OPSET, "com.microsoft": 1} and packed.ir_version >= 10
    inits = {i.name: i for i in packed.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["W"].data_type == (TensorProto.UINT4 if kind == "matmulinteger-u8" else TensorProto.INT4)
    assert np.array_equal(numpy_helper.to_array(inits["W"]).astype(original["W"].dtype), original["W"])
    for zp in set(inits) - {"W"}:  # 1-element zero points: not weights, same type and value
        assert inits[zp].data_type == model.graph.initializer[list(original).index(zp)].data_type
        assert np.array_equal(numpy_helper.to_array(inits[zp]), original[zp])
    casts = [n for n in packed.graph.node if n.op_type == "Cast" and n.input[0] == "W"]
    assert len(casts) == 1 and casts[0].attribute[0].i == model.graph.initializer[0].data_type
    assert all("W" not in n.input for n in packed.graph.node if n is not casts[0] and n.op_type != "Cast")
    assert sum(n.input[0] == "W" for n in packed.graph.node) == 1
    for level in (*LEVELS, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED):
        a, b = (_session(p, level).run(None, feeds)[0] for p in (model, packed))
        assert a.dtype == b.dtype and np.array_equal(a, b), level
    assert _optimized_ops(packed, tmp_path / "p.onnx") == _optimized_ops(model, tmp_path / "u.onnx")


def _qdq_model(shared_zp: bool) -> tuple[Any, dict[str, np.ndarray]]:
    """x -> Q/DQ (scale s, zero point zp) -> MatMul with DQ(W, s, zp or its own wzp)."""
    rng = np.random.default_rng(7)
    wzp = "zp" if shared_zp else "wzp"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["W", "s", wzp], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits: dict[str, np.ndarray] = {"W": rng.integers(-8, 8, size=(5, 3)).astype(np.int8)}
    inits["s"] = np.array(0.1, np.float32)
    inits |= {"zp": np.array(2, np.int8), "wzp": np.array(-3, np.int8)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    return _model(nodes, [x], y, inits), {"x": rng.standard_normal((4, 5)).astype(np.float32)}


@pytest.mark.parametrize("shared_zp", [True, False], ids=["shared-zero-point", "own-zero-point"])
def test_direct_dequantize_converts_or_copies_the_zero_point(shared_zp: bool) -> None:
    model, feeds = _qdq_model(shared_zp)
    packed, names = pack_low_bit_weights(model, direct_dequantize=True)
    assert names == {"W": 4}
    inits = {i.name: i for i in packed.graph.initializer}
    weight_dq = next(n for n in packed.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "W")
    zp = weight_dq.input[2]
    assert inits[zp].data_type == TensorProto.INT4
    assert int(numpy_helper.to_array(inits[zp]).astype(np.int8)) == (2 if shared_zp else -3)
    if shared_zp:  # the activation Q/DQ keeps its int8 zero point; the weight reads a 4-bit copy
        assert zp != "zp" and inits["zp"].data_type == TensorProto.INT8
        assert [n.input[2] for n in packed.graph.node[:2]] == ["zp", "zp"]
    else:
        assert zp == "wzp" and "wzp_2" not in inits
    a, b = (_session(p, LEVELS[0]).run(None, feeds)[0] for p in (model, packed))
    assert np.array_equal(a, b)
    # the Cast route leaves zero points alone and keeps the graph ONNX Runtime optimizes
    packed, names = pack_low_bit_weights(model)
    assert names == {"W": 4} and {i.name: i.data_type for i in packed.graph.initializer}["zp"] == TensorProto.INT8
    for level in LEVELS:
        a, b = (_session(p, level).run(None, feeds)[0] for p in (model, packed))
        assert np.array_equal(a, b)


def _lone_weight(w: np.ndarray, op: str = "MatMulInteger", graph_output: bool = False) -> Any:
    """``W`` read by one MatMulInteger (a weight) or one Add (not a weight), optionally also a graph output."""
    matmul = op == "MatMulInteger"
    x = helper.make_tensor_value_info("x", TensorProto.UINT8 if matmul else TensorProto.INT8, [2, w.shape[0]])
    y_shape = [2, w.shape[1]] if matmul else list(w.shape)
    y = helper.make_tensor_value_info("y", TensorProto.INT32 if matmul else TensorProto.INT8, y_shape)
    if not matmul:
        x = helper.make_tensor_value_info("x", TensorProto.INT8, list(w.shape))
    model = _model([helper.make_node(op, ["x", "W"], ["y"])], [x], y, {"W": w})
    if graph_output:
        model.graph.output.append(helper.make_tensor_value_info("W", TensorProto.INT8, list(w.shape)))
    return model


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (lambda: _lone_weight(np.array([[-9, 0], [1, 2]], np.int8)), "below -8"),
        (lambda: _lone_weight(np.array([[8, 0], [1, 2]], np.int8)), "above 7"),
        (lambda: _lone_weight(np.array([[3]], np.int8)), "one element"),
        (lambda: _lone_weight(np.array([[1, 2], [3, 4]], np.int8), op="Add"), "read by Add, not a weight reader"),
        (lambda: _lone_weight(np.array([[1, 2], [3, 4]], np.int8), graph_output=True), "a graph output"),
        (lambda: _qdq_model(True)[0], "activation zero point, 1 element"),
    ],
    ids=["below-range", "above-range", "scalar", "add", "graph-output", "zero-points"],
)
def test_non_weights_and_out_of_range_weights_are_left_alone(model: Any, why: str) -> None:
    proto = model()
    if why.startswith("activation"):  # only W fits; drop it and nothing is left
        proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((5, 3), 9, np.int8), "W"))
    before = proto.SerializeToString()
    out, names = pack_low_bit_weights(proto)
    assert names == {} and out is proto and proto.SerializeToString() == before, why


def test_direct_dequantize_leaves_a_weight_whose_zero_point_does_not_fit() -> None:
    model, _ = _qdq_model(False)
    model.graph.initializer[3].CopyFrom(numpy_helper.from_array(np.array(-20, np.int8), "wzp"))
    assert pack_low_bit_weights(model, direct_dequantize=True)[1] == {}
    assert pack_low_bit_weights(model)[1] == {"W": 4}  # the Cast route keeps the 8-bit zero point
