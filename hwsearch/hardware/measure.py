"""Measured cost tables: time each quantizable layer alone on this machine, per runtime and precision.

Each layer is a micro-benchmark: the layer alone, on a random input of its traced shape (batch 1), timed as the
median of ``repeats`` runs after ``warmup`` runs. Only precisions the runtime really executes are timed, and a
quantized kernel is kept only when its output matches the float layer's (so a runtime that silently does
something else is not recorded); a precision it cannot run or that disagrees is absent from the entries, never
invented, and its reason is kept (``rejected`` of :func:`measure_layers`, ``generator["rejected"]`` of the table).

Int8 is computed in the form that is exact on this CPU (:mod:`hwsearch.hardware.cpu`): ONNX Runtime times int8
weights on x86 with VNNI and aarch64, uint8 weights with zero point 128 (its u8u8 kernels) on other x86; PyTorch's
fbgemm gets its input quantized with ``reduce_range`` (7-bit activations, as PyTorch's own x86 qconfig does) on
every CPU. Either way the kernel timed is the one that runs the layer at 8 bits.

Runtimes and the table keys they fill (``W{w}A{a}``, 32 = float):

- ``torch``: ``W32A32`` (eager fp32) and ``W8A8`` (PyTorch's x86/fbgemm quantized conv/linear, quint8 in/out).
- ``onnxruntime``: each layer as a one-node ONNX graph on the CPU execution provider: ``W32A32`` (Conv / Gemm),
  ``W8A8`` (QLinearConv / QLinearMatMul, uint8 activations, 8-bit weights per output channel for convs, per
  tensor for linears; QLinearMatMul has no bias input, so the linear's bias add is not timed), and for linear
  layers weight-only ``W{b}A32`` for each ``b`` in 2, 4, 8 that ``com.microsoft.MatMulNBits`` runs (float
  activations, blockwise weights, block 32). Convolutions get no sub-8-bit entries: ONNX Runtime has no N-bit
  convolution kernel (MatMulNBits is a MatMul; int4 QDQ around a Conv is dequantized and run in float).
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from hwsearch.checks import check_int
from hwsearch.errors import ConfigError, TableError
from hwsearch.hardware.cpu import U8_ZERO_POINT, check_int8_form
from hwsearch.hardware.table import CostTable
from hwsearch.layers import LayerInfo

__all__ = [
    "RUNTIMES",
    "NBITS_WEIGHT_BITS",
    "MeasureConfig",
    "median_ms",
    "measure_layers",
    "measured_table",
    "runtime_version",
]

RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")
_INT8_TOL = 0.1  # relative RMS error an int8 kernel may have against the float layer (see _close)
_REDUCED_U8_MAX = 127
NBITS_WEIGHT_BITS: tuple[int, ...] = (2, 4, 8)
_NBITS_BLOCK = 32
_OPSET = 17


@dataclass(frozen=True)
class MeasureConfig:
    """How to time: runs per median, warm-up runs, intra-op threads, the seed of the random inputs, and the int8
    form of ONNX Runtime's weights (``auto``: the exact one for this CPU, see :mod:`hwsearch.hardware.cpu`)."""

    repeats: int = 20
    warmup: int = 5
    threads: int = 1
    seed: int = 0
    int8_form: str = "auto"

    def __post_init__(self) -> None:
        for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1), ("seed", 0)):
            check_int(getattr(self, name), name, low)
        check_int8_form(self.int8_form)


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` untimed runs."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def runtime_version(runtime: str) -> str:
    """``name version`` of a runtime, for a table's ``source``."""
    if runtime == "torch":
        return f"torch {torch.__version__}"
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    raise ConfigError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def _rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """RMS error relative to the reference's RMS spread (inf for a wrong shape or non-finite output)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return math.inf
    spread = float(np.sqrt(np.mean((ref - ref.mean()) ** 2))) or 1.0
    return float(np.sqrt(np.mean((out - ref) ** 2))) / spread


def _close(out: np.ndarray, ref: np.ndarray, tol: float) -> bool:
    """RMS error within ``tol`` of the reference's RMS spread: a check that the kernel computed this layer.

    An exact int8 kernel misses the float layer by its rounding (a few percent); one that saturates or computes
    something else (wrong layout, a silent no-op) misses by tens of percent or ~100%.
    """
    return _rel_error(out, ref) <= tol


# ---------------------------------------------------------------------------------------------- PyTorch


_Rejected = dict[str, str]


def _torch_int8_runner(module: nn.Module, x: torch.Tensor, rejected: _Rejected) -> Callable[[], Any] | None:
    """A quantized (x86/fbgemm) copy of a conv/linear and its quantized input, or None (reason in ``rejected``)."""
    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "fbgemm" if "fbgemm" in engines else None
    if engine is None:
        rejected["W8A8"] = f"no x86/fbgemm quantized engine in this torch (engines: {', '.join(engines) or 'none'})"
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.quantized.engine = engine
            import torch.ao.nn.quantized as nnq
            from torch.ao.quantization import get_default_qconfig

            module = module.float().eval()
            module.qconfig = get_default_qconfig(engine)
            observed = torch.ao.quantization.prepare(nn.Sequential(module), inplace=False)
            with torch.no_grad():
                observed(x)
                ref = module(x)
            quantized = (nnq.Conv2d if isinstance(module, nn.Conv2d) else nnq.Linear).from_float(observed[0])
            # reduce_range: quint8 values in [0, 127], so no pair of products saturates fbgemm's int16 sums on CPUs
            # without VNNI (the observer above does the same for the output, as PyTorch's x86 qconfig does)
            scale = float(x.abs().max()) / _REDUCED_U8_MAX or 1.0
            qx = torch.quantize_per_tensor(x, scale=scale, zero_point=0, dtype=torch.quint8)
            with torch.no_grad():
                out = quantized(qx).dequantize()
        err = _rel_error(out.numpy(), ref.numpy())
        if not err <= _INT8_TOL:
            rejected["W8A8"] = f"output disagrees with float (relative RMS error {err:.3g} > {_INT8_TOL})"
            return None
        return lambda: quantized(qx)
    except Exception as exc:  # noqa: BLE001 - a precision the runtime cannot run is absent, never invented
        rejected["W8A8"] = (
            f"{engine} cannot run it: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        return None


def _torch_runners(module: nn.Module, x: torch.Tensor, rejected: _Rejected) -> dict[str, Callable[[], Any]]:
    mod = copy.deepcopy(module).float().eval()
    runners: dict[str, Callable[[], Any]] = {"W32A32": lambda: mod(x)}
    int8 = _torch_int8_runner(copy.deepcopy(mod), x, rejected)
    if int8 is not None:
        runners["W8A8"] = int8
    return runners


# ------------------------------------------------------------------------------------------ ONNX Runtime


def _session(graph: Any, threads: int) -> Any:
    import onnx
    import onnxruntime as ort

    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", _OPSET), onnx.helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _graph(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: Mapping[str, np.ndarray]) -> Any:
    from onnx import helper, numpy_helper

    return helper.make_graph(
        nodes, "layer", inputs, outputs, [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()]
    )


def _conv_attrs(mod: nn.Conv2d) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "kernel_shape": list(mod.kernel_size),
        "strides": list(mod.stride),
        "dilations": list(mod.dilation),
        "group": int(mod.groups),
    }
    if isinstance(mod.padding, str):
        attrs["auto_pad"] = "SAME_UPPER" if mod.padding == "same" else "VALID"
    else:
        ph, pw = mod.padding
        attrs["pads"] = [ph, pw, ph, pw]
    return attrs


def _u8(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Asymmetric uint8 quantization of an activation tensor: (values, scale, zero point)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.clip(np.round(x / scale) + zp, 0, 255).astype(np.uint8), scale, zp


def _ort_runners(
    module: nn.Conv2d | nn.Linear, x: torch.Tensor, threads: int, form: str, rejected: _Rejected
) -> dict[str, Callable[[], Any]]:
    from onnx import TensorProto, helper

    xf = x.numpy().astype(np.float32)
    w = module.weight.detach().float().numpy()
    b = module.bias.detach().float().numpy() if module.bias is not None else np.zeros(w.shape[0], np.float32)
    with torch.no_grad():
        ref = module.float().eval()(x).numpy()
    is_conv = isinstance(module, nn.Conv2d)
    out_shape = list(ref.shape)
    f_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(xf.shape))
    f_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    runners: dict[str, Callable[[], Any]] = {}

    def keep(key: str, graph: Any, feed: dict[str, np.ndarray], expect: np.ndarray, decode: Callable, tol: float):
        try:
            sess = _session(graph, threads)
            out = decode(sess.run(None, feed)[0])
        except Exception as exc:  # noqa: BLE001 - a precision the runtime cannot run is absent, never invented
            first = str(exc).splitlines()[0] if str(exc) else ""
            rejected[key] = f"onnxruntime cannot run it: {type(exc).__name__}: {first[:200]}"
            return
        err = _rel_error(out, expect)
        if err <= tol:
            runners[key] = lambda: sess.run(None, feed)
        else:
            rejected[key] = f"output disagrees with float (relative RMS error {err:.3g} > {tol})"

    # fp32
    if is_conv:
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **_conv_attrs(cast(nn.Conv2d, module)))
        graph = _graph([node], [f_in], [f_out], {"w": w, "b": b})
    else:
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        graph = _graph([node], [f_in], [f_out], {"w": w, "b": b})
    keep("W32A32", graph, {"x": xf}, ref, lambda y: y, 1e-3)

    # int8: uint8 activations in and out; int8 weights, or uint8 with zero point 128 where u8s8 saturates
    wdtype = np.int8 if form == "s8" else np.uint8
    wzero = 0 if form == "s8" else U8_ZERO_POINT

    def wint(q: np.ndarray) -> np.ndarray:
        return (q.astype(np.int16) + wzero).astype(wdtype)

    xq, xs, xzp = _u8(xf)
    _, ys, yzp = _u8(ref)
    q_in = helper.make_tensor_value_info("x", TensorProto.UINT8, list(xf.shape))
    q_out = helper.make_tensor_value_info("y", TensorProto.UINT8, out_shape)

    def dequant(y: np.ndarray) -> np.ndarray:
        return (y.astype(np.float32) - yzp) * ys

    scalars = {
        "xs": np.array(xs, np.float32),
        "xz": np.array(xzp, np.uint8),
        "ys": np.array(ys, np.float32),
        "yz": np.array(yzp, np.uint8),
    }
    if is_conv:
        ws = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), 1e-12) / 127
        wq = wint(np.clip(np.round(w / ws[:, None, None, None]), -127, 127))
        bq = np.round(b / (xs * ws)).astype(np.int32)
        node = helper.make_node(
            "QLinearConv",
            ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
            ["y"],
            **_conv_attrs(cast(nn.Conv2d, module)),
        )
        inits = {**scalars, "w": wq, "ws": ws.astype(np.float32), "wz": np.full(w.shape[0], wzero, wdtype), "b": bq}
        expect = ref
    else:
        ws = max(float(np.abs(w).max()), 1e-12) / 127
        wq = wint(np.clip(np.round(w.T / ws), -127, 127))
        node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
        inits = {**scalars, "w": wq, "ws": np.array(ws, np.float32), "wz": np.array(wzero, wdtype)}
        expect = ref - b  # QLinearMatMul has no bias input
    keep("W8A8", _graph([node], [q_in], [q_out], inits), {"x": xq}, expect, dequant, 0.1)

    # weight-only N-bit linear (MatMulNBits)
    if not is_conv:
        n, k = w.shape
        for bits in NBITS_WEIGHT_BITS:
            packed, scales, wdq = _nbits_pack(w, bits)
            node = helper.make_node(
                "MatMulNBits",
                ["x", "w", "ws"],
                ["y"],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=_NBITS_BLOCK,
            )
            inits = {"w": packed, "ws": scales}
            f_nb = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
            keep(f"W{bits}A32", _graph([node], [f_in], [f_nb], inits), {"x": xf}, xf @ wdq.T, lambda y: y, 1e-2)
    return runners


def _nbits_pack(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits weights: ``(N, blocks, block*bits/8)`` uint8 (low bits first), scales ``(N*blocks,)`` and the
    dequantized weights they stand for (default zero point ``2**(bits-1)``, symmetric scale per block)."""
    n, k = w.shape
    blocks = -(-k // _NBITS_BLOCK)
    padded = np.zeros((n, blocks * _NBITS_BLOCK), np.float32)
    padded[:, :k] = w
    grid = padded.reshape(n, blocks, _NBITS_BLOCK)
    zp = 2 ** (bits - 1)
    top = max(zp - 1, 1)
    scales = np.maximum(np.abs(grid).max(axis=2), 1e-12) / top
    q = np.clip(np.round(grid / scales[..., None]) + zp, 0, 2**bits - 1).astype(np.uint8)
    deq = ((q.astype(np.float32) - zp) * scales[..., None]).reshape(n, -1)[:, :k]
    per_byte = 8 // bits
    q = q.reshape(n, blocks, _NBITS_BLOCK // per_byte, per_byte)
    packed = np.zeros(q.shape[:3], np.uint8)
    for i in range(per_byte):
        packed |= (q[..., i] << (i * bits)).astype(np.uint8)
    return packed, scales.reshape(-1).astype(np.float32), deq


# ------------------------------------------------------------------------------------------- measuring


def _layer_input(layer: LayerInfo, gen: torch.Generator) -> torch.Tensor:
    if layer.kind == "conv":
        return torch.rand((1, layer.in_channels, *layer.in_hw), generator=gen)
    return torch.rand((1, layer.in_channels), generator=gen)


def measure_layers(
    net: nn.Module,
    layers: Sequence[LayerInfo],
    *,
    runtime: str = "torch",
    config: MeasureConfig | None = None,
    rejected: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Median ms per layer at batch 1, ``{layer name: {"W32A32": ms, "W8A8": ms, ...}}``; see the module doc.

    Layers with the same signature are timed once and share the result. ``rejected``, when given, receives
    ``{layer name: {key: reason}}`` for every precision tried and left out (cannot run, or disagrees).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    cfg = config or MeasureConfig()
    form = check_int8_form(cfg.int8_form)
    gen = torch.Generator().manual_seed(cfg.seed)
    reasons: dict[str, _Rejected] = {}
    modules = dict(net.named_modules())
    by_sig: dict[str, dict[str, float]] = {}
    out: dict[str, dict[str, float]] = {}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for layer in layers:
            sig = layer.signature(1)
            if sig not in by_sig:
                mod = modules.get(layer.name)
                if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                    raise TableError(f"layer {layer.name!r} is not a Conv2d/Linear of this model; list it again")
                x = _layer_input(layer, gen)
                # NCHW, as every stored table was timed (runtime.to_device gives models channels-last on x86 CPUs)
                mod = copy.deepcopy(mod).float().eval().to(memory_format=torch.contiguous_format)
                why = reasons.setdefault(sig, {})
                runners = (
                    _torch_runners(mod, x, why) if runtime == "torch" else _ort_runners(mod, x, cfg.threads, form, why)
                )
                by_sig[sig] = {k: median_ms(fn, cfg.repeats, cfg.warmup) for k, fn in runners.items()}
            out[layer.name] = dict(by_sig[sig])
            if rejected is not None and reasons[sig]:
                rejected[layer.name] = dict(reasons[sig])
    finally:
        torch.set_num_threads(old_threads)
    return out


def measured_table(
    results: Mapping[str, Mapping[str, float]],
    layers: Sequence[LayerInfo],
    *,
    runtime: str,
    config: MeasureConfig,
    device: str | None = None,
    model: str | None = None,
    generator: Mapping[str, Any] | None = None,
    rejected: Mapping[str, Mapping[str, str]] | None = None,
) -> CostTable:
    """A ``measured`` table (batch 1, ms per image, no energy) from :func:`measure_layers`' results.

    ``rejected`` (from :func:`measure_layers`) is kept in ``generator["rejected"]`` by layer signature, so a
    precision missing from the table says why.
    """
    entries: dict[str, dict[str, Any]] = {}  # raw cells: CostTable validates them into TableEntry
    why: dict[str, dict[str, str]] = {}
    for layer in layers:
        row = {k: {"latency": max(v, 1e-9), "energy": None} for k, v in results[layer.name].items() if math.isfinite(v)}
        if row:
            entries.setdefault(layer.signature(1), row)
        if rejected and rejected.get(layer.name):
            why.setdefault(layer.signature(1), dict(rejected[layer.name]))
    if not entries:
        raise TableError(f"runtime {runtime!r} ran none of the {len(layers)} layers; nothing to tabulate")
    name = device or f"cpu-{platform.machine() or 'unknown'}-{runtime}"
    return CostTable(
        device=name,
        batch=1,
        method="measured",
        source=(
            f"median of {config.repeats} runs after {config.warmup} warm-up, {runtime_version(runtime)}, "
            f"{config.threads} thread(s), {platform.processor() or platform.machine()}"
        ),
        entries=entries,
        model=model,
        generator={
            "runtime": runtime,
            "threads": config.threads,
            "seed": config.seed,
            "int8_form": check_int8_form(config.int8_form) if runtime == "onnxruntime" else "reduce_range",
            **({"rejected": why} if why else {}),
            **dict(generator or {}),
        },
    )
