"""The ort-cpu target: names, the per-machine cache, pricing every searchable pair, the budget walk on a
non-monotone table, the kernels export style, and verify."""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from hwsearch.envs import EnvConfig, MixedPrecisionEnv

from hwsearch.cli import main
from hwsearch.errors import ConfigError
from hwsearch.hardware import bit_grid, get_cost_model
from hwsearch.policy import FLOAT_BITS, Policy, uniform_policy
from tests.fakes import FakeCost, FakeEvaluator, fake_layers, layer

ort = pytest.importorskip("onnxruntime")  # the [onnx] extra
pytest.importorskip("onnx")

from hwsearch.hardware.ort_cpu import (  # noqa: E402 - after the optional-dependency skip
    SEARCH_A_BITS,
    SEARCH_W_BITS,
    OrtCpuCostModel,
    parse_ort_cpu,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("HWSEARCH_CACHE", str(folder))
    return folder


def _model(**kw: object) -> OrtCpuCostModel:
    return OrtCpuCostModel(**{"repeats": 3, "warmup": 1, "passes": 1, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "threads"), [("ort-cpu", 1), ("ort-cpu:3", 3), ("ort-cpu:1", 1)])
def test_target_names_give_thread_counts(name: str, threads: int, cache: Path) -> None:
    assert parse_ort_cpu(name) == threads
    cm = get_cost_model(name)
    assert isinstance(cm, OrtCpuCostModel) and cm.threads == threads and cm.name == name


def test_all_means_the_cores_this_process_may_use() -> None:
    from hwsearch.cores import available_cores

    assert parse_ort_cpu("ort-cpu:all") == available_cores()


@pytest.mark.parametrize("bad", ["ort-cpu:0", "ort-cpu:x", "ort-cpu:-1"])
def test_bad_target_names_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="ort-cpu"):
        get_cost_model(bad)


def test_cells_are_measured_once_and_cached_per_identity(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conv = layer("c", 1, 8, 8, 8)
    first = _model()
    cost = first.layer_cost(conv, 8, 8)
    assert cost.latency_ms > 0 and cost.energy_mj is None
    files = list((cache / "ort-cpu").glob("*.json"))
    assert len(files) == 1 and "__t1__" in files[0].name
    data = json.loads(files[0].read_text())
    assert data["identity"]["threads"] == 1 and data["identity"]["runtime"].startswith("onnxruntime")
    assert data["identity"]["int8_form"] in ("portable", "s8")
    cell = data["cells"][conv.signature(1)]["W8A8"]
    assert cell["median_ms"] > 0 and cell["iqr_ms"] >= 0
    assert data["timing"]["repeats"] == 3 and data["call_overhead_ms"] > 0

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(OrtCpuCostModel, "_measure_cell", boom)
    again = _model()
    assert again.layer_cost(conv, 8, 8) == cost  # read from the file, not measured
    other = _model(threads=2)  # another thread count is another machine state: its own file
    with pytest.raises(AssertionError, match="measured again"):
        other.layer_cost(conv, 8, 8)


def test_every_searchable_pair_is_priced(cache: Path) -> None:
    layers = [layer("c", 0, 1, 4, 8), layer("fc", 1, 16, 4, 1, "linear")]
    cm = _model()
    assert bit_grid(cm, layers) == (SEARCH_W_BITS, SEARCH_A_BITS)
    assert FLOAT_BITS in SEARCH_W_BITS and FLOAT_BITS in SEARCH_A_BITS
    for ly in layers:
        for w in SEARCH_W_BITS:
            for a in SEARCH_A_BITS:
                assert cm.layer_cost(ly, w, a).latency_ms > 0


class _CpuLikeCost:
    """Float and integer kernels with a CPU's shape: quantizing only a float layer's input costs more."""

    name = "cpu-like"

    def layer_cost(self, ly: object, w: int, a: int) -> FakeCost:
        macs = ly.macs  # type: ignore[attr-defined]
        if w == FLOAT_BITS and a == FLOAT_BITS:
            return FakeCost(macs * 1.0, None)
        if a == FLOAT_BITS or w == FLOAT_BITS:  # weight-only or input-only quantization: float kernel + work
            return FakeCost(macs * 1.1, None)
        return FakeCost(macs * 0.5, None)

    def supported_bits(self) -> tuple[int, ...]:
        return (4, 8, FLOAT_BITS)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1.0, 1.3, 1.7, 2.0])
def test_budget_walk_meets_the_budget_and_never_raises_a_layers_cost(seed: int, budget: float) -> None:
    from hwsearch.budget import Budget

    cfg = EnvConfig(budget=Budget("latency", budget), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS)
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), _CpuLikeCost(), cfg)
    table = env.cost_table()
    rng = np.random.default_rng(seed)
    for _ in range(20):
        choice = np.stack([rng.integers(0, 3, env.n_layers), rng.integers(0, 2, env.n_layers)], axis=1)
        enforced = env.enforce_budget(choice)
        assert env.cost_of(enforced, "latency") <= env.budget_limit + 1e-9
        for i in range(env.n_layers):
            assert table[i, enforced[i, 0], enforced[i, 1]] <= table[i, choice[i, 0], choice[i, 1]] + 1e-12


def test_float_is_a_choice_of_the_env() -> None:
    from hwsearch.budget import Budget

    cfg = EnvConfig(budget=Budget("latency", 2.0), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS)
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), _CpuLikeCost(), cfg)
    names = [ly.name for ly in fake_layers()]
    policy = uniform_policy(names, FLOAT_BITS)
    actions = env.actions_for(policy)
    env.reset(seed=0)
    for a in actions[:-1]:
        env.step(np.array([a], np.float32))
    *_, info = env.step(np.array([actions[-1]], np.float32))
    assert info["policy"] == policy  # float everywhere fits a 2x-W8A8 budget here


# --------------------------------------------------------------------------- export and verify (a real model)


@pytest.fixture(scope="module")
def ws(checkpoint: Path):  # type: ignore[no-untyped-def]
    from hwsearch.workflow import prepare

    return prepare(checkpoint)


def _optimized_ops(path: Path, tmp: Path) -> list[str]:
    import onnx

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp / "opt.onnx")).graph.node]


@pytest.mark.parametrize("style", ["qdq", "kernels"])
def test_kernels_style_runs_every_integer_layer_as_an_integer_kernel(ws, style: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwsearch.onnx_export import export_onnx

    path = export_onnx(ws, ws.uniform(8), None, tmp_path / "m.onnx", int8_form="s8", style=style, pack_int4=False)
    ops = _optimized_ops(path, tmp_path)
    integer = sum(op in ("QLinearConv", "QGemm", "QLinearMatMul") for op in ops)
    if style == "kernels":
        assert integer == len(ws.layers)  # every layer, the logits' and the first's included
    else:
        assert integer < len(ws.layers)  # the qdq style leaves the logits layer a float Gemm on dequantized weights


# every layer an integer kernel; then integer kernels feeding float layers, float-weight layers on quantized inputs
# (W32A8) and integer weights on float inputs (W4A32), which ONNX Runtime's WeightBiasQuantization pass would
# requantize to per-tensor int8 if a per-tensor DequantizeLinear fed them
KERNEL_MIXES = {
    "w8a8": ((8, 8),),
    "w4a8": ((4, 8), (8, 8)),
    "float-neighbours": ((8, 8), (FLOAT_BITS, FLOAT_BITS), (FLOAT_BITS, 8), (4, FLOAT_BITS), (4, 8)),
}


@pytest.mark.parametrize("mix", list(KERNEL_MIXES))
def test_the_kernels_file_is_its_deployed_model_biases_on_the_accumulator_grid(ws, mix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import onnx
    import torch
    from onnx import numpy_helper

    from hwsearch.hardware.cpu import int8_form
    from hwsearch.int_kernels import calibrate_output_ranges
    from hwsearch.onnx_export import _OnnxQuantLayer, deployed_model, export_onnx
    from hwsearch.quant import apply_policy

    choices = KERNEL_MIXES[mix]
    policy = Policy({n: choices[i % len(choices)] for i, n in enumerate(ws.layer_names)}, {})
    qmodel = apply_policy(ws.model, policy, ws.calibration).eval()
    ranges = calibrate_output_ranges(qmodel, ws.split("train", 256)[0])
    path = export_onnx(
        ws, policy, None, tmp_path / "m.onnx", int8_form=int8_form(), style="kernels", output_ranges=ranges
    )
    model = deployed_model(qmodel, ws.splits.input_shape, output_ranges=ranges)
    kernels = [m for m in model.modules() if isinstance(m, _OnnxQuantLayer) and m.out_q]
    assert len(kernels) == sum(b.w != FLOAT_BITS and b.a not in (FLOAT_BITS, 1) for b in policy.layers.values())
    for m in kernels:  # each bias an integer number of accumulator steps, as the fused kernel adds it
        if m.bias is not None:
            steps = m.bias / (m.act_scale * m.weight_scale)
            assert torch.allclose(steps, steps.round(), atol=1e-3)
    graph = onnx.load(str(path)).graph
    made_by = {o: n for n in graph.node for o in n.output}
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:  # no float weights read through a per-tensor DequantizeLinear
        dq = made_by.get(node.input[0])
        if node.op_type in ("Conv", "Gemm") and node.input[1] in consts and dq and dq.op_type == "DequantizeLinear":
            assert consts[dq.input[1]].size > 1, node.name
    x, _ = ws.split("test")
    with torch.no_grad():
        want = model(x).numpy()
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level  # the file's float reading, then its integer kernels
        got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[
            0
        ]
        assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.998
        assert np.median(np.abs(got - want)) <= 1e-3 * np.abs(want).max()


@pytest.mark.parametrize("mixed", [False, True], ids=["w8a8", "mixed"])
def test_the_search_scores_an_ort_cpu_policy_as_onnx_runtime_runs_it(ws, mixed: bool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from hwsearch.evaluate import Evaluator, EvaluatorConfig
    from hwsearch.hardware.cpu import int8_form
    from hwsearch.int_kernels import OUTPUT_RANGE_IMAGES
    from hwsearch.onnx_export import export_onnx
    from hwsearch.quant import QuantWrapper, quant_wrappers

    names = ws.layer_names
    choices = ((8, 8), (4, 8), (FLOAT_BITS, FLOAT_BITS), (4, FLOAT_BITS))
    policy = Policy({n: choices[i % 4] for i, n in enumerate(names)}, {}) if mixed else ws.uniform(8)
    x, y = ws.split("test")
    config = EvaluatorConfig(export_style="kernels")
    with pytest.raises(ConfigError, match="range_images"):
        Evaluator(ws.model, ws.calibration, x, y, config)
    ev = Evaluator(ws.model, ws.calibration, x, y, config, range_images=ws.split("train", OUTPUT_RANGE_IMAGES)[0])
    qmodel = ev.quantize(policy)
    kept = {n for n, _ in quant_wrappers(qmodel)}  # the wrappers stay: attacks' gradient modes still reach them
    assert kept == {n for n in names if (policy[n].w, policy[n].a) != (FLOAT_BITS, FLOAT_BITS)}
    assert any(isinstance(m, QuantWrapper) and m.integer_bias for m in qmodel.modules())
    with torch.no_grad():
        scored = qmodel(x).argmax(1).numpy()
    assert ev.evaluate(policy).accuracy == pytest.approx(float(np.mean(scored == y.numpy())))
    path = export_onnx(ws, policy, None, tmp_path / "m.onnx", int8_form=int8_form(), style="kernels")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.mean(sess.run(None, {"input": x.numpy()})[0].argmax(1) == scored) >= 0.995


def test_kernels_style_needs_output_ranges_without_a_workspace(ws, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwsearch.onnx_export import export_onnx
    from hwsearch.quant import apply_policy

    qmodel = apply_policy(ws.model, ws.uniform(8), ws.calibration)
    with pytest.raises(ConfigError, match="output_ranges"):
        export_onnx(qmodel, None, ws.calibration, tmp_path / "m.onnx", (1, 28, 28), style="kernels")


def test_verify_reports_prediction_and_agreement(ws, cache: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from hwsearch.onnx_export import export_onnx
    from hwsearch.verify import onnx_policy, verify_onnx

    names = ws.layer_names
    policy = Policy({n: (8, 8) if i % 2 else (FLOAT_BITS, FLOAT_BITS) for i, n in enumerate(names)}, {})
    cm = get_cost_model("ort-cpu")
    path = export_onnx(ws, policy, None, tmp_path / "m.onnx", int8_form=cm.int8_form, style="kernels")
    assert onnx_policy(path) == policy
    v = verify_onnx(ws, path, "ort-cpu", images=300)
    from hwsearch.hardware import policy_cost

    again = get_cost_model("ort-cpu")  # reads what verify measured and calibrated from the cache
    again.calibrate(ws)  # type: ignore[attr-defined]
    overhead = again.call_overhead_ms  # type: ignore[attr-defined]
    assert v.predicted_ms == pytest.approx(policy_cost(again, ws.layers, policy).latency_ms + overhead)
    assert v.images == 300 and v.agreement >= 0.99
    assert v.predicted_ms > 0 and v.measured_ms > 0 and v.fp32_ms > 0
    float_policy = Policy({n: (FLOAT_BITS, FLOAT_BITS) for n in names}, {})
    assert v.predicted_fp32_ms == pytest.approx(policy_cost(again, ws.layers, float_policy).latency_ms + overhead)
    # anchored: the prediction at the float model's speed now, i.e. the predicted speed-up over float
    assert v.anchored_ms == pytest.approx(v.predicted_ms * v.fp32_ms / v.predicted_fp32_ms)
    assert v.error_anchored == pytest.approx((v.predicted_ms / v.predicted_fp32_ms) / (v.measured_ms / v.fp32_ms) - 1.0)
    assert abs(v.accuracy_onnx - v.accuracy_fake_quant) <= 1 - v.agreement + 1e-9
    assert abs(v.accuracy_onnx - v.accuracy_plain) <= 1 - v.agreement_plain + 1e-9
    calibration = json.loads(next((cache / "ort-cpu").glob("*.json")).read_text())["models"]
    assert len(calibration) == 1 and {"float_ms", "int8_ms", "rest_ms", "per_output_ms"} <= set(
        next(iter(calibration.values()))
    )
    record = next(iter(calibration.values()))
    from hwsearch.hardware.ort_cpu import CALIBRATION_MIXES

    assert set(record["residual_ms"]) == {"float", "int8", "alternating"} | {
        f"mix{k}" for k in range(CALIBRATION_MIXES)
    }  # every calibration model's misfit is kept with the fit


def test_verify_cli(checkpoint: Path, cache: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from hwsearch.onnx_export import export_onnx
    from hwsearch.workflow import prepare

    ws = prepare(checkpoint)
    path = export_onnx(ws, ws.uniform(8), None, tmp_path / "m.onnx", int8_form="auto", style="kernels")
    out = tmp_path / "v.json"
    code = main(
        [
            "latency",
            "verify",
            "--onnx",
            str(path),
            "--checkpoint",
            str(checkpoint),
            "--images",
            "200",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "predicted" in text and "agreement" in text and "faster than float" in text
    data = json.loads(out.read_text())
    assert data["images"] == 200 and data["agreement"] >= 0.99


def test_verify_refuses_a_missing_file_and_another_target(checkpoint: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["latency", "verify", "--onnx", str(tmp_path / "none.onnx"), "--checkpoint", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" in err and "Traceback" not in err


class _WithBoundary(_CpuLikeCost):
    """Consecutive integer layers save part of the tensor they pass (the transposes they share)."""

    def boundary_cost(self, prev: object, prev_bits: tuple[int, int], ly: object, bits: tuple[int, int]) -> float:
        from hwsearch.int_kernels import int_kernel_layer

        both = int_kernel_layer(*prev_bits) and int_kernel_layer(*bits)
        return -0.1 * prev.macs if both else 0.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(3))
def test_env_and_policy_cost_price_boundaries_alike(seed: int) -> None:
    from hwsearch.budget import Budget
    from hwsearch.hardware import policy_cost

    cm = _WithBoundary()
    cfg = EnvConfig(budget=Budget("latency", 2.0), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS)
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), cm, cfg)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        choice = np.stack([rng.integers(0, 3, env.n_layers), rng.integers(0, 2, env.n_layers)], axis=1)
        policy = env.policy_of(choice)
        cells = sum(cm.layer_cost(ly, policy[ly.name].w, policy[ly.name].a).latency_ms for ly in env.layers)
        total = policy_cost(cm, env.layers, policy).latency_ms
        assert env.cost_of(choice, "latency") == pytest.approx(total)
        ints = [not (b.w == FLOAT_BITS or b.a == FLOAT_BITS) for b in policy.layers.values()]
        adjacent = sum(a and b for a, b in zip(ints, ints[1:], strict=False))
        assert (total < cells) == (adjacent > 0)


@pytest.mark.parametrize("budget", [1.0, 1.3, 1.6, 2.0])
@pytest.mark.parametrize("seed", range(3))
def test_action_wall_never_traps_an_episode_with_boundary_costs(budget: float, seed: int) -> None:
    """With pairwise boundaries (integer neighbours save part of the tensor they pass) the wall's bound is exact:
    every step leaves a completion that fits, so the walk at the end has nothing to do."""
    from hwsearch.budget import Budget

    cfg = EnvConfig(budget=Budget("latency", budget), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS)
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), _WithBoundary(), cfg)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        env.reset(seed=0)
        for a in rng.uniform(-1, 1, env.n_steps):
            *_, info = env.step(np.array([a], dtype=np.float32))
        assert env.cost_of(env._choice, "latency") <= env.budget_limit * (1 + 1e-9)
        assert np.array_equal(env.enforce_budget(env._choice), env._choice)
        assert info["policy"] == env.policy_of(env._choice)


@pytest.mark.parametrize("budget", [1.3, 1.6])
def test_ilp_prices_the_boundaries_it_is_held_to(budget: float) -> None:
    """The ILP's answer fits the budget with the boundaries counted (the env's own cost), so playing it changes
    nothing."""
    from hwsearch.budget import Budget
    from hwsearch.ilp import ilp_policy, play_actions

    cfg = EnvConfig(budget=Budget("latency", budget), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS)
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), _WithBoundary(), cfg)
    assert env.boundary_table() is not None
    ilp = ilp_policy(env)
    assert env.cost_of(ilp.choice, "latency") <= env.budget_limit * (1 + 1e-9)
    assert play_actions(env, env.actions_for(ilp.policy))["policy"] == ilp.policy


def test_measuring_a_cell_leaves_the_random_state_alone(cache: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _model().layer_cost(layer("c", 1, 4, 4, 6), 8, 8)  # a search measures cells mid-run: its draws must not move
    assert torch.equal(torch.rand(3), expected)


def _bn_model():  # type: ignore[no-untyped-def]  # torch is imported lazily in this file
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),  # in place, as torchvision's: its reader still counts as the only one
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )
    for m in model.modules():  # a trained-looking batch norm: nontrivial statistics, some negative gammas
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 2.0)
            with torch.no_grad():
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _export_kernels(model, policy: Policy, calibration, tmp_path: Path, ranges, **kw):  # type: ignore[no-untyped-def]
    """The 6x6 test models' ``kernels`` file, with the given output ranges."""
    from hwsearch.onnx_export import export_onnx

    return export_onnx(
        model, policy, calibration, tmp_path / "m.onnx", (1, 6, 6), style="kernels", output_ranges=ranges, **kw
    )


def _quantized_with_chains(model, policy: Policy, method: str):  # type: ignore[no-untyped-def]
    """Seeded 6x6 images, the model calibrated on them with ``method``, quantized by ``policy``, and its chains."""
    import torch

    from hwsearch.int_kernels import layer_chains
    from hwsearch.quant import apply_policy, calibrate

    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, x, method=method)
    qmodel = apply_policy(model, policy, calibration).eval()
    return x, calibration, qmodel, layer_chains(qmodel, (1, 6, 6))


@pytest.mark.parametrize("form", ["portable", "s8"])
def test_kernels_style_folds_batch_norm_and_relu_exactly(form: str, tmp_path: Path) -> None:
    import torch

    model = _bn_model()
    policy = Policy({"0": (8, 8), "3": (6, 8), "6": (FLOAT_BITS, FLOAT_BITS)}, {})
    x, calibration, qmodel, chains = _quantized_with_chains(model, policy, "minmax")
    assert chains["0"].bn == "1" and chains["0"].act == "2" and chains["0"].feeds == "3"
    assert chains["3"].bn == "4" and chains["3"].act is None and chains["3"].feeds is None  # Flatten reads it
    path = _export_kernels(model, policy, calibration, tmp_path, {"3": (-8.0, 8.0)}, int8_form=form)
    ops = _optimized_ops(path, tmp_path)
    assert "BatchNormalization" not in ops and ops.count("QLinearConv") == 2
    from hwsearch.hardware.cpu import int8_form

    opts = ort.SessionOptions()
    if form not in ("portable", int8_form()):  # s8 kernels saturate on x86 without VNNI: check the file's values
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qmodel(x).numpy()
    # layer 0 requantizes onto layer 3's own input grid (no extra error); layer 3's output gets one 8-bit
    # rounding over [-8, 8] (step 16/255), which the float linear layer then mixes
    step = 16 / 255
    w = model[6].weight.detach().abs().sum(dim=1).max().item()
    assert abs(got - ref).max() <= 0.5 * step * w + 1e-4


def _residual_model(kind: str):  # type: ignore[no-untyped-def]
    """Two residual shapes whose functional reads (no module to hook) the kernels chains must see."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.stem_bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.head = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem_bn(self.stem(x))
            if kind == "inverted":  # mobilenet_v2's stride-1 block: its input feeds the conv and the add
                out = x + self.bn(self.conv(x))
            else:  # torchvision's BasicBlock: an in-place add between the batch norm and the ReLU
                out = self.bn(self.conv(x))
                out += x
                out = self.relu(out)
            return self.head(out.flatten(1))

    torch.manual_seed(0)
    return Block().eval()


@pytest.mark.parametrize("kind", ["inverted", "basic"])
def test_kernels_chains_see_functional_reads_and_the_export_keeps_the_residual(kind: str, tmp_path: Path) -> None:
    import torch

    model = _residual_model(kind)
    policy = Policy({"stem": (8, 8), "conv": (8, 8), "head": (FLOAT_BITS, FLOAT_BITS)}, {})
    # percentile ranges clip: a residual add reading its input on a reader's grid would read it clipped
    x, calibration, qmodel, chains = _quantized_with_chains(model, policy, "percentile")
    assert chains["stem"].bn == "stem_bn" and chains["stem"].feeds is None  # the add reads it too
    assert chains["conv"].bn == "bn" and chains["conv"].act is None  # the add comes before the ReLU
    path = _export_kernels(model, policy, calibration, tmp_path, {n: (-50.0, 50.0) for n in ("stem", "conv")})
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the file's own values
    got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qmodel(x).numpy()
    # two 8-bit roundings over [-50, 50] (stem and conv outputs), mixed by the float head: not a clipped input
    w = model.head.weight.detach().abs().sum(dim=1).max().item()
    assert abs(got - ref).max() <= 2 * 0.5 * (100 / 255) * w + 1e-3


class _RandomBoundaries(_CpuLikeCost):
    """Seeded arbitrary cells and boundaries: the per-layer cheapest choices need not make the cheapest policy."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def _draw(self, *key: object) -> float:
        return float(np.random.default_rng([self.seed, zlib.crc32(repr(key).encode())]).uniform(0.2, 1.0))

    def layer_cost(self, ly: object, w: int, a: int) -> FakeCost:
        return FakeCost(self._draw(ly.name, w, a), None)  # type: ignore[attr-defined]

    def boundary_cost(self, prev: object, prev_bits: tuple[int, int], ly: object, bits: tuple[int, int]) -> float:
        return self._draw(prev.name, prev_bits, ly.name, bits)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(6))
def test_budget_walk_meets_any_budget_the_cheapest_policy_meets(seed: int) -> None:
    """HAQ's walk moves one layer at a time by its own cost; with boundaries that can stall above a budget that
    another policy meets, so its last resort is the exact cheapest policy (which the env checked fits)."""
    from hwsearch.budget import Budget

    cm = _RandomBoundaries(seed)
    probe = MixedPrecisionEnv(
        fake_layers(),
        FakeEvaluator(),
        cm,
        EnvConfig(budget=Budget("latency", 10.0), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS),
    )
    cheapest = probe.cheapest_choice()
    floor = probe.cost_of(cheapest, "latency") / probe.cost_ref
    cfg = EnvConfig(
        budget=Budget("latency", floor * (1 + 1e-9)), w_bits=SEARCH_W_BITS, a_bits=SEARCH_A_BITS, enforce="walk"
    )
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), cm, cfg)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        choice = np.stack([rng.integers(0, 3, env.n_layers), rng.integers(0, 2, env.n_layers)], axis=1)
        assert env.cost_of(env.enforce_budget(choice), "latency") <= env.budget_limit * (1 + 1e-9)
    best = min(  # brute force over every policy: the env's cheapest is the cheapest
        env.cost_of(np.array(c).reshape(-1, 2), "latency")
        for c in itertools.product(*[[(w, a) for w in range(3) for a in range(2)]] * env.n_layers)
    )
    assert env.cost_of(cheapest, "latency") == pytest.approx(best)


@pytest.fixture
def timed_cells(cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pairs a cost model measures, in order (each cell a different, made-up time; no call overhead)."""
    timed: list[str] = []

    def fake(self: OrtCpuCostModel, ly: object, wb: int, ab: int) -> dict[str, float]:
        timed.append(f"W{wb}A{ab}")
        return {"median_ms": 1.0 + 0.1 * len(timed), "iqr_ms": 0.0}

    monkeypatch.setattr(OrtCpuCostModel, "_measure_cell", fake)
    monkeypatch.setattr(OrtCpuCostModel, "call_overhead_ms", 0.0)
    return timed


@pytest.mark.parametrize("w", [1, 4, 8])
def test_integer_weights_on_float_inputs_share_the_float_cell(w: int, timed_cells: list[str]) -> None:
    """Their export is the float graph: one measurement, so noise cannot price the same graph twice."""
    conv = layer("c", 1, 8, 8, 8)
    cm = _model()
    assert cm.layer_cost(conv, w, FLOAT_BITS) == cm.layer_cost(conv, FLOAT_BITS, FLOAT_BITS)
    assert cm.measure([conv], [(w, FLOAT_BITS), (FLOAT_BITS, FLOAT_BITS), (8, 8)]) == 1  # only W8A8 was missing
    assert timed_cells == ["W32A32", "W8A8"]


@pytest.mark.parametrize("w", [1, 2, 4, 8])
def test_integer_weights_on_8_bit_inputs_share_the_w8a8_cell_in_the_s8_form(w: int, timed_cells: list[str]) -> None:
    """In the s8 form every width of integer weights on 8-bit inputs runs W8A8's kernel (packed 4-bit weights are
    cast back to int8 before the fusion): one measurement; lower input widths add a clip, so they keep their own."""
    conv = layer("c", 1, 8, 8, 8)
    cm = _model(int8_form="s8")
    assert cm.layer_cost(conv, w, 8) == cm.layer_cost(conv, 8, 8)
    assert timed_cells == ["W8A8"]
    assert cm.layer_cost(conv, w, 4) != cm.layer_cost(conv, 8, 8)
    assert cm.measure([conv], [(w, 8), (8, 8), (FLOAT_BITS, 8)]) == 1  # only W32A8 was missing
    assert timed_cells == ["W8A8", f"W{w}A4", "W32A8"]


def test_the_portable_form_times_8_bit_weights_apart(timed_cells: list[str]) -> None:
    """Portable stores 8-bit weights as uint8 (ONNX Runtime's u8u8 kernel) and narrower ones as int8 (u8s8)."""
    conv = layer("c", 1, 8, 8, 8)
    cm = _model(int8_form="portable")
    assert cm.layer_cost(conv, 4, 8) != cm.layer_cost(conv, 8, 8)
    assert timed_cells == ["W4A8", "W8A8"]


def _identity_onnx(path: Path, name: str) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])],
        name,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("rounds", [1, 3])
def test_files_compared_are_timed_in_turn_and_keep_their_fastest_round(
    rounds: int, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round by round, every file in turn (so a drift of the host's speed hits all of them alike); each file's
    figure is its median round (a burst of load and a rare fast mode both drop out); each file is fed under its
    own input name."""
    from hwsearch.hardware import ort_cpu

    paths = [_identity_onnx(tmp_path / f"{n}.onnx", n) for n in ("a", "b", "c")]
    order: list[str] = []
    times = iter([5.0, 7.0, 9.0, 4.0, 8.0, 9.5, 4.5, 6.5, 1.0])

    def fake_time_onnx(data, feed, threads, repeats, warmup):  # type: ignore[no-untyped-def]
        (name,) = feed
        order.append(name)
        return next(times), 0.0

    monkeypatch.setattr(ort_cpu, "time_onnx", fake_time_onnx)
    monkeypatch.setattr(ort_cpu.time, "sleep", lambda s: None)
    got = _model().time_models(paths, (3,), rounds=rounds)
    assert order == ["a", "b", "c"] * rounds
    assert got == ([5.0, 7.0, 9.0] if rounds == 1 else [4.5, 7.0, 9.0])  # a: 5, 4, 4.5; b: 7, 8, 6.5; c: 9, 9.5, 1


def test_a_timing_is_the_median_session_not_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fastest of a few sessions catches a shared host's rare fast mode by luck; the median does not."""
    from hwsearch.hardware import ort_cpu

    medians = iter([(0.18, 0.01), (0.12, 0.02), (0.19, 0.03)])
    monkeypatch.setattr(ort_cpu, "_warm_up", lambda threads: None)
    monkeypatch.setattr(ort_cpu, "_session", lambda data, threads: None)
    monkeypatch.setattr(ort_cpu, "time_session", lambda session, feed, repeats, warmup: next(medians))
    assert ort_cpu.time_onnx(b"", {}, 1, 10, 1) == (0.18, 0.02)


@pytest.mark.parametrize("n_mixes", [0, 5])
def test_calibration_terms_are_the_least_squares_fit(n_mixes: int) -> None:
    """Timings that are exactly cells + rest + rates x elements handed give those terms back, from the three
    structured models alone or with random mixes; a term no model exercises (one layer hands nothing) is 0."""
    import random

    from hwsearch.hardware.ort_cpu import _fit_terms, _handed

    layers = fake_layers()
    names = [ly.name for ly in layers]
    rng = random.Random(1)
    policies = {
        "float": Policy({n: (FLOAT_BITS, FLOAT_BITS) for n in names}, {}),
        "int8": Policy({n: (8, 8) for n in names}, {}),
        "alternating": Policy({n: (8, 8) if i % 2 else (FLOAT_BITS, FLOAT_BITS) for i, n in enumerate(names)}, {}),
        **{
            f"mix{k}": Policy({n: rng.choice([(8, 8), (4, 8), (32, 8), (FLOAT_BITS, FLOAT_BITS)]) for n in names}, {})
            for k in range(n_mixes)
        },
    }

    def raw(ls, policy):  # type: ignore[no-untyped-def]
        return 0.01 * sum(policy[ly.name].w for ly in ls)

    rest, per_output, per_transition = 0.05, -2e-7, 3e-7
    measured = {
        t: raw(layers, p)
        + rest
        + per_output * _handed(layers, p, both_int=True)
        + per_transition * _handed(layers, p, both_int=False)
        for t, p in policies.items()
    }
    terms, residuals = _fit_terms(layers, policies, measured, raw)
    assert terms == pytest.approx((rest, per_output, per_transition))
    assert set(residuals) == set(policies) and max(map(abs, residuals.values())) < 1e-9
    one = layers[:1]
    solo = {t: Policy({names[0]: p[names[0]]}, {}) for t, p in policies.items()}
    got, _ = _fit_terms(one, solo, {t: raw(one, p) + rest for t, p in solo.items()}, raw)
    assert got == pytest.approx((rest, 0.0, 0.0))
