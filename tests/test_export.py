"""Policy file formats, quantized checkpoints, ONNX export and the export/evaluate/show commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from hwsearch.cli_export import add_export_parser
from hwsearch.errors import CheckpointError, ConfigError, HwsearchError, PolicyError
from hwsearch.onnx_export import export_onnx
from hwsearch.policy import Policy
from hwsearch.policy_formats import POLICY_FORMATS, load_policy, policy_from_text, save_policy
from hwsearch.quant import apply_policy, quant_wrappers
from hwsearch.quant.quantizers import quantize_weight
from hwsearch.quantized import integer_weight, load_quantized, save_quantized

NAMES = ["net.features.conv1", "net.features.conv2", "net.features.conv3", "net.classifier.fc1", "net.classifier.fc2"]
MIXED = Policy(
    dict(zip(NAMES, [(8, 8), (4, 4), (2, 3), (1, 32), (32, 32)], strict=True)), {"kind": "test", "n": [1, 2]}
)
LOW = Policy(dict(zip(NAMES, [(3, 1), (5, 1), (6, 2), (7, 5), (1, 1)], strict=True)), {})


@pytest.fixture(scope="module")
def ws(checkpoint: Path):  # type: ignore[no-untyped-def]
    from hwsearch.workflow import prepare

    return prepare(checkpoint)


# ------------------------------------------------------------------------------------------- policy files
@pytest.mark.parametrize("fmt", POLICY_FORMATS)
@pytest.mark.parametrize("policy", [MIXED, LOW], ids=["mixed", "low"])
def test_policy_round_trip_in_every_format(fmt: str, policy: Policy, tmp_path: Path) -> None:
    path = save_policy(policy, tmp_path / f"p.{fmt}", fmt)
    back = load_policy(path, fmt, layer_names=NAMES)
    assert back == policy
    assert back.names() == policy.names()  # forward order kept
    if fmt in ("json", "yaml"):
        assert back.meta == policy.meta
    else:
        assert back.meta == {}  # csv and haq carry bits only (documented)
    assert load_policy(path, layer_names=NAMES) == policy  # format from the extension


def test_json_export_is_the_schema_v1_a_search_writes(tmp_path: Path) -> None:
    assert Policy.from_json(save_policy(MIXED, tmp_path / "p.json").read_text()) == MIXED
    assert (tmp_path / "p.csv").exists() is False
    text = save_policy(MIXED, tmp_path / "p.csv").read_text()
    assert text.splitlines()[0] == "layer,w_bits,a_bits"
    assert text.splitlines()[1] == "net.features.conv1,8,8"
    assert save_policy(MIXED, tmp_path / "p.haq").read_text().strip() == "[[8, 8], [4, 4], [2, 3], [1, 32], [32, 32]]"


@pytest.mark.parametrize(
    ("fmt", "text", "needle"),
    [
        ("json", "{not json", "not valid JSON"),
        ("json", '{"schema": 2, "layers": {}}', "schema 2"),
        ("yaml", "layers: [unclosed", "not valid YAML"),
        ("yaml", "- 1\n- 2\n", "must be a JSON object"),
        ("yaml", "schema: 1\nlayers:\n  a: {w: 9, a: 8}\n", "out of range"),
        ("csv", "", "empty CSV"),
        ("csv", "name,w,a\nx,8,8\n", "header"),
        ("csv", "layer,w_bits,a_bits\nx,8\n", "row 2 has 2 cells"),
        ("csv", "layer,w_bits,a_bits\nx,eight,8\n", "row 2 w_bits"),
        ("csv", "layer,w_bits,a_bits\nx,8,8\nx,4,4\n", "repeats layer 'x'"),
        ("csv", "layer,w_bits,a_bits\nx,8,0\n", "out of range"),
        ("haq", "[[8, 8], [4, 4]]", "has 2 pairs but the model has 5"),
        ("haq", "[[8, 8, 8]]", "list of [w, a] pairs"),
        ("haq", "import os", "not a HAQ strategy"),
        ("haq", "[[8, 8], [4, 4], [2, 3], [1, 3], [33, 8]]", "out of range"),
    ],
)
def test_malformed_policy_files_raise_one_line(fmt: str, text: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / f"bad.{fmt}"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path, fmt, layer_names=NAMES)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and str(path) in msg


def test_policy_file_user_mistakes(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="HAQ strategy has no layer names"):
        policy_from_text("[[8, 8]]", "haq")
    with pytest.raises(PolicyError, match="format 'xml' is unknown"):
        save_policy(MIXED, tmp_path / "p.xml", "xml")
    with pytest.raises(PolicyError, match="cannot tell the policy format"):
        load_policy(tmp_path / "p.xml")
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.json")


def test_haq_accepts_python_literals_but_never_code() -> None:
    assert policy_from_text("[(8, 8), (4, 2)]", "haq", layer_names=["a", "b"]) == Policy({"a": (8, 8), "b": (4, 2)})
    with pytest.raises(PolicyError, match="not a HAQ strategy"):
        policy_from_text("__import__('os').getcwd()", "haq", layer_names=["a"])


def test_export_is_atomic_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = save_policy(MIXED, tmp_path / "p.json")
    bad = Policy({"x": (8, 8)}, {"obj": object()})
    with pytest.raises(PolicyError, match="meta"):
        save_policy(bad, path)
    assert load_policy(path) == MIXED
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


# ------------------------------------------------------------------------------------------- integer weights
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_integer_weights_times_scale_are_the_fake_quant_weights(bits: int) -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(bits))
    q, scale = integer_weight(w, bits)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    qmax = 1 if bits == 1 else 2 ** (bits - 1) - 1
    assert int(q.abs().max()) <= qmax
    assert torch.equal(q.float() * scale.view(-1, 1, 1, 1), quantize_weight(w, bits))


# ------------------------------------------------------------------------------------------- quantized checkpoint
@pytest.mark.parametrize("policy", [MIXED, LOW], ids=["mixed", "low"])
def test_quantized_checkpoint_round_trip_gives_identical_outputs(ws, policy: Policy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = save_quantized(tmp_path / "q.pt", ws, policy, ws.calibration, {"note": "hi"})
    raw = torch.load(path, weights_only=True)  # plain tensors and primitives only
    qmodel, back, meta = load_quantized(path)
    assert back == policy and meta["note"] == "hi" and meta["model_name"] == "smallcnn"
    ref = apply_policy(ws.model, policy, ws.calibration).eval()
    x, _ = ws.split("test", 256)
    with torch.no_grad():
        assert torch.equal(qmodel(x), ref(x))
    wrappers = dict(quant_wrappers(ref))
    for name, rec in raw["quantized"].items():
        if rec["w_bits"] != 32:
            assert rec["weight_int"].dtype == torch.int8
            shape = (-1,) + (1,) * (rec["weight_int"].dim() - 1)
            assert torch.equal(
                rec["weight_int"].float() * rec["weight_scale"].view(shape), wrappers[name].quantized_weight()
            )
    assert set(raw["quantized"]) == {n for n in NAMES if policy[n].w != 32 or policy[n].a != 32}


def test_quantized_checkpoint_is_also_a_float_checkpoint(ws, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwsearch.checkpoint import model_from_checkpoint

    path = save_quantized(tmp_path / "q.pt", ws, MIXED)
    model, _ = model_from_checkpoint(path)
    x, _ = ws.split("test", 64)
    with torch.no_grad():
        assert torch.equal(model(x), ws.model(x))


def test_load_quantized_refuses_float_checkpoints_and_save_needs_meta(ws, checkpoint: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match="float checkpoint, not a quantized one"):
        load_quantized(checkpoint)
    with pytest.raises(CheckpointError, match="model_name"):
        save_quantized(tmp_path / "q.pt", ws.model, MIXED, ws.calibration)
    with pytest.raises(PolicyError, match="misses layer"):
        save_quantized(tmp_path / "q.pt", ws, Policy({NAMES[0]: (8, 8)}))
    assert not (tmp_path / "q.pt").exists()


# ------------------------------------------------------------------------------------------------------ ONNX
def _ort_session(path: Path, optimize: bool):  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:  # no QDQ fusion: every DequantizeLinear runs in float, the file's values exactly
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _weight_initializers(proto) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Integer weight initializers (the first input of a DequantizeLinear, 2-D or more; a packed 4-bit one through
    its unpacking Cast, in the type the Cast gives) by name, as arrays."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    casts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] in inits}
    out = {}
    for n in proto.graph.node:
        src, cast = n.input[0] if n.input else "", None
        if n.op_type == "DequantizeLinear" and src in casts:
            cast = casts[src]
            src = cast.input[0]
        if n.op_type == "DequantizeLinear" and src in inits and len(inits[src].dims) >= 2:
            q = numpy_helper.to_array(inits[src])
            out[src] = q if cast is None else q.astype(helper.tensor_dtype_to_np_dtype(cast.attribute[0].i))
    return out


@pytest.mark.parametrize("form", ["portable", "s8"])
@pytest.mark.parametrize("policy", [None, MIXED, LOW], ids=["w8a8", "mixed", "low"])
def test_onnx_runtime_agrees_with_fake_quant_model(ws, policy: Policy | None, form: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from hwsearch.hardware.cpu import int8_form

    onnx = pytest.importorskip("onnx")  # the [onnx] extra

    policy = policy or ws.uniform(8)
    path = export_onnx(ws, policy, ws.calibration, tmp_path / "m.onnx", ws.splits.input_shape, int8_form=form)
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    assert Policy.from_dict(json.loads(props["hwsearch.policy"])) == policy
    assert props["hwsearch.int8_form"].startswith(form)
    ops = [n.op_type for n in proto.graph.node]
    n_weight_dq = sum(policy[n].w != 32 for n in NAMES)
    n_act_q = sum(policy[n].a != 32 and not (policy[n].a == 1 and n == NAMES[0]) for n in NAMES)
    assert ops.count("QuantizeLinear") == n_act_q
    assert ops.count("DequantizeLinear") == n_weight_dq + n_act_q
    assert len(_weight_initializers(proto)) == n_weight_dq

    x, y = ws.split("test")
    with torch.no_grad():
        ref = apply_policy(ws.model, policy, ws.calibration).eval()(x)
    # the integer kernels ONNX Runtime fuses are exact in the form this CPU needs, on every CPU; the file's
    # values (no fusion) are exact in both forms
    for optimize in (True, False) if form == int8_form() or form == "portable" else (False,):
        out = torch.from_numpy(_ort_session(path, optimize).run(None, {"input": x.numpy()})[0])
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        assert len(y) >= 500 and agree >= 0.99, (optimize, agree)


@pytest.mark.parametrize("policy", [None, MIXED, LOW], ids=["w8a8", "mixed", "low"])
def test_portable_onnx_cannot_saturate_and_holds_the_s8_values(ws, policy: Policy | None, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Portable: no int8 weight reaches the 8-bit grid (u8s8 pair sums then fit int16), 8-bit grids are uint8 at
    zero point 128, no activation is int8; and it dequantizes to exactly the s8 file's weights and outputs."""
    import numpy as np

    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    policy = policy or ws.uniform(8)
    files = {
        f: export_onnx(ws, policy, ws.calibration, tmp_path / f"{f}.onnx", int8_form=f) for f in ("portable", "s8")
    }
    protos = {f: onnx.load(p) for f, p in files.items()}
    port, s8 = (_weight_initializers(protos[f]) for f in ("portable", "s8"))
    assert port.keys() == s8.keys()
    for name, q in port.items():
        layer = name.rsplit(".", 1)[0]
        w_bits = policy[layer].w
        assert s8[name].dtype == np.int8
        if w_bits == 8:
            assert q.dtype == np.uint8 and np.array_equal(q.astype(np.int16) - 128, s8[name].astype(np.int16))
        else:
            assert q.dtype == np.int8 and int(np.abs(q.astype(np.int16)).max()) <= 63
            assert np.array_equal(q, s8[name])
    graph = protos["portable"].graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    inits |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    inits |= {n.output[0]: inits[n.input[0]] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert inits[node.input[2]].dtype == np.uint8
    x, _ = ws.split("test", 64)
    outs = [_ort_session(files[f], optimize=False).run(None, {"input": x.numpy()})[0] for f in ("portable", "s8")]
    assert np.array_equal(outs[0], outs[1])


def test_onnx_export_of_an_already_quantized_model_and_bad_inputs(ws, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    qmodel = apply_policy(ws.model, MIXED, ws.calibration)
    assert export_onnx(qmodel, None, None, tmp_path / "a.onnx", (1, 28, 28)).stat().st_size > 1000
    with pytest.raises(PolicyError, match="differs"):
        export_onnx(qmodel, LOW, None, tmp_path / "b.onnx", (1, 28, 28))
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        export_onnx(ws.model, MIXED, ws.calibration, tmp_path / "c.onnx", (28, 28))
    with pytest.raises(PolicyError, match="needs a policy"):
        export_onnx(ws.model, None, ws.calibration, tmp_path / "d.onnx", (1, 28, 28))
    assert not (tmp_path / "b.onnx").exists()


# --------------------------------------------------------------------------------------------------- commands
def _run(argv: list[str]) -> int:
    """Parse with the commands' own parser and call the handler, as ``hwsearch.cli.main`` will."""
    parser = argparse.ArgumentParser(prog="hwsearch")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize("fmt", ["yaml", "csv", "haq"])
def test_cli_export_policy_formats(
    fmt: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = save_policy(MIXED, tmp_path / "p.json")
    out = tmp_path / f"out.{fmt}"
    assert _run(["export", "--policy", str(src), "--format", fmt, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert load_policy(out, layer_names=NAMES) == MIXED
    back = tmp_path / "back.json"  # and back, naming the haq file's layers from the checkpoint
    assert (
        _run(["export", "--policy", str(out), "--format", "json", "--out", str(back), "--checkpoint", str(checkpoint)])
        == 0
    )
    assert load_policy(back) == MIXED


def test_cli_export_checkpoint_onnx_then_evaluate_and_show(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = save_policy(LOW, tmp_path / "p.json")  # accelerators price 1..8 bits only
    qpt, onnx_path = tmp_path / "q.pt", tmp_path / "m.onnx"
    common = ["--policy", str(src), "--checkpoint", str(checkpoint)]
    assert _run(["export", *common, "--format", "checkpoint", "--out", str(qpt)]) == 0
    assert _run(["export", *common, "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert qpt.stat().st_size > 0 and onnx_path.stat().st_size > 0
    capsys.readouterr()

    assert _run(["evaluate", *common]) == 0
    a = capsys.readouterr().out
    assert _run(["evaluate", "--quantized", str(qpt)]) == 0
    b = capsys.readouterr().out
    for text in (a, b):
        assert "test accuracy" in text and "speed-up vs fixed 8-bit" in text and "ms/image" in text
    pick = [ln for ln in a.splitlines() if "test accuracy" in ln]
    assert pick == [ln for ln in b.splitlines() if "test accuracy" in ln]  # same model, same figure

    assert _run(["show", "--policy", str(src)]) == 0
    plain = capsys.readouterr().out
    assert "net.classifier.fc2" in plain and "share" not in plain
    assert [ln.split()[1:] for ln in plain.splitlines()[1:6]] == [[str(b.w), str(b.a)] for b in LOW.layers.values()]
    assert _run(["show", "--policy", str(save_policy(MIXED, tmp_path / "m.json"))]) == 0
    assert "fp  fp" in capsys.readouterr().out  # float layers marked
    assert _run(["show", *common, "--target", "bitfusion-edge"]) == 0
    priced = capsys.readouterr().out
    assert "share" in priced and "%" in priced and "total on" in priced


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["export", "--policy", "{p}", "--format", "onnx", "--out", "m.onnx"], "needs --checkpoint"),
        (["export", "--policy", "{d}/nope.json", "--format", "csv", "--out", "x.csv"], "does not exist"),
        (["export", "--policy", "{d}/p.haq", "--format", "json", "--out", "x.json"], "pass --checkpoint"),
        (["evaluate", "--policy", "{p}"], "--policy and --checkpoint go together"),
        (["evaluate"], "either --policy"),
        (["evaluate", "--quantized", "{p}", "--target", "no-such-device"], "no-such-device"),
        (["show", "--policy", "{p}", "--target", "bitfusion-edge"], "needs --checkpoint"),
    ],
)
def test_cli_user_mistakes_raise_hwsearch_errors(argv: list[str], needle: str, tmp_path: Path) -> None:
    p = save_policy(MIXED, tmp_path / "p.json")
    save_policy(MIXED, tmp_path / "p.haq")
    argv = [a.format(p=p, d=tmp_path) for a in argv]
    with pytest.raises(HwsearchError) as info:
        _run(argv)
    assert needle in str(info.value) and "\n" not in str(info.value)
