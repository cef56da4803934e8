"""``ort-cpu``: ONNX Runtime on the CPU this process runs on, as a search target, measured on first use.

A layer's cost at a bit pair is the median time of that layer alone, exported exactly as ``hwsearch export
--format onnx --onnx-style kernels`` writes it (:func:`hwsearch.onnx_export.export_onnx`), run by ONNX Runtime's
CPU execution provider at batch 1. So every pair the search can choose is priced by the kernel that really
runs it: float (``W32A32``); integer weights and inputs (``W8A8``, ``W4A8``, ...: QLinearConv / QGemm, its input
quantize and output dequantize included); integer weights on float inputs (``W4A32``: the float layer on its
grid's values, priced by the float cell, :func:`timed_pair`; packed at 4 bits, a smaller file, no speed-up);
float weights on quantized inputs (``W32A8``).

The per-run cost of calling ONNX Runtime at all (an identity graph) is subtracted from every cell, so a policy's
predicted latency is the sum of its layers' cells plus one :attr:`OrtCpuCostModel.call_overhead_ms`.

A layer alone is not the whole story: the model's other nodes (normalization, pooling, residual adds) cost
time too, and the layout changes between layers: ONNX Runtime runs integer convolutions in NHWC and float ones
in its blocked NCHWc layout, converting where a run of one kind starts and ends, while each cell, timed alone,
pays its own conversions. ``calibrate`` does two things, once per machine and model:

1. it times each consecutive layer pair's *hand-over* where it happens (:mod:`hwsearch.hardware.handover`): the
   exported model's segment from the first layer's input to the second's output, at each of the nine pairs of
   layer kinds (float, float on quantized inputs, integer), less both layers cut from the same graph and timed
   in turn with it. A pool between a float and an integer convolution, which ran in plain layout as long as the
   convolution itself, is priced there;
2. it measures the whole exported model all float, all ``W8A8``, alternating (float, W8A8, float, ...) and in
   :data:`CALIBRATION_MIXES` seeded random mixes of the search's choices, all in turn
   (:meth:`OrtCpuCostModel.time_models`), and fits by least squares what cells and hand-overs leave over:

   - ``rest_ms``: the same for every policy (the nodes before the first layer and after the last, and what no
     segment sees), shared equally by the layers' cells;
   - ``per_output_ms`` per element handed between consecutive layers that are both integer kernels;
   - ``per_transition_ms`` per element handed between an integer-kernel layer and a float one, either way.

:meth:`OrtCpuCostModel.boundary_cost` charges a pair its measured hand-over and the fitted rate for the tensor
the first layer hands to the second. What stays unmodelled is what spans more than two layers: a residual add
meets a tensor from further back, whose layout depends on a third layer's kind. The calibration policies'
predictions are fits (the record keeps each one's residual); every other policy's is a prediction, and
``hwsearch latency verify`` / ``python -m benchmarks.real_cpu`` measure how far it lands. Cells stay additive and
the boundary term is pairwise: :func:`hwsearch.hardware.policy_cost`, the env's budget walk and the ILP baseline
(``ilp.solve_ilp(pairs=...)``) include it.

Cells are cached per machine in ``$HWSEARCH_CACHE`` (default ``~/.cache/hwsearch``) under ``ort-cpu/``, one file
per CPU model, ONNX Runtime version, thread count and int8 form (:mod:`hwsearch.hardware.cpu`), with warm-up,
repeats, median and spread (interquartile range) of every cell. A timing is the median of three fresh
sessions' medians (:func:`time_onnx`: one session's median moves by ~10% from the next one's), and every cell
is measured in two passes a few seconds apart, keeping the faster: on a shared host, load comes in bursts of
about a second that slow a timing by up to 60%. Not the fastest session: the shared host this was built on
also has a rare fast mode that an occasional round catches (float kernels gain more from it than integer
ones), and the fastest of nine sessions caught it by luck, so a table's calibration and a later check of the
same model could land in different modes; a median lands in the usual mode both times. Another machine, runtime or thread count gets
its own file; a cell is measured once per machine.

Device names: ``ort-cpu`` (1 thread), ``ort-cpu:N`` (N intra-op threads), ``ort-cpu:all`` (the cores this
process may run on).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwsearch.errors import ConfigError, TableError
from hwsearch.hardware.base import LayerCost, bit_key
from hwsearch.hardware.cpu import ORT_CPU, check_int8_form, cpu_model, is_ort_cpu, parse_ort_cpu
from hwsearch.hardware.handover import KIND_BITS, KINDS, kind_of, pair_key, time_handovers
from hwsearch.int_kernels import int_kernel_layer
from hwsearch.io import atomic_write_text
from hwsearch.layers import LayerInfo
from hwsearch.policy import FLOAT_BITS, VALID_BITS, LayerBits, Policy

__all__ = [
    "ORT_CPU",
    "CACHE_SCHEMA_VERSION",
    "SEARCH_W_BITS",
    "SEARCH_A_BITS",
    "OrtCpuCostModel",
    "cache_dir",
    "cpu_model",
    "is_ort_cpu",
    "parse_ort_cpu",
    "timed_pair",
    "time_onnx",
    "time_session",
]

CACHE_SCHEMA_VERSION = 7  # 4: medians of sessions (3 kept the fastest); 5: least squares; 6: hand-overs; 7: in turn
#: seeded random mixes of the search's choices that ``calibrate`` times besides all-float, all-W8A8 and alternating
CALIBRATION_MIXES = 5
#: the widths a search on this target chooses among: 4 and 8 bits run integer kernels (4 bits for a smaller
#: file), 32 keeps a layer float; inputs are 8-bit (integer kernel) or float. Lower input widths would run the
#: same 8-bit kernel, only less accurately.
SEARCH_W_BITS: tuple[int, ...] = (4, 8, FLOAT_BITS)
SEARCH_A_BITS: tuple[int, ...] = (8, FLOAT_BITS)


def cache_dir() -> Path:
    """Where measured cells live: ``$HWSEARCH_CACHE/ort-cpu`` (default ``~/.cache/hwsearch/ort-cpu``)."""
    root = os.environ.get("HWSEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hwsearch")
    return Path(root) / "ort-cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "unknown"


def _session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


SESSIONS = 3  # sessions per timing: one session's median moves by ~10% from the next one's on the same model


def time_session(session: Any, feed: Mapping[str, np.ndarray], repeats: int, warmup: int) -> tuple[float, float]:
    """Median and interquartile range (ms) of ``session.run`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


_WARM_S = 0.5  # busy time before a process's first timing: the first model timed in a cold process ran ~20% slower
_warmed: set[int] = set()


def _warm_up(threads: int) -> None:
    """Run a small convolution for ``_WARM_S`` seconds, once per process and thread count."""
    if threads in _warmed:
        return
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, 16, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "warm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = _session(model.SerializeToString(), threads)
    feed = {"x": np.ones((1, 16, 16, 16), np.float32)}
    end = time.perf_counter() + _WARM_S
    while time.perf_counter() < end:
        sess.run(None, feed)
    _warmed.add(threads)


def time_onnx(
    model_bytes: bytes,
    feed: Mapping[str, np.ndarray],
    threads: int,
    repeats: int,
    warmup: int,
    sessions: int = SESSIONS,
) -> tuple[float, float]:
    """The median of ``sessions`` fresh sessions' medians (ms), and their median IQR: a session's memory layout
    moves its timing by ~10%, so one session is one sample. The median, not the fastest: see the module
    docstring (a rare fast mode of a shared host)."""
    _warm_up(threads)
    medians, iqrs = [], []
    for _ in range(sessions):
        median, iqr = time_session(_session(model_bytes, threads), feed, repeats, warmup)
        medians.append(median)
        iqrs.append(iqr)
    return statistics.median(medians), statistics.median(iqrs)


def _one_layer(layer: LayerInfo, seed: int) -> tuple[nn.Module, str, tuple[int, int, int]]:
    """A model holding only a layer of ``layer``'s shape (random weights: time does not depend on values), built
    without touching the caller's random state (a search measures cells mid-run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_one_layer(layer)


def _build_one_layer(layer: LayerInfo) -> tuple[nn.Module, str, tuple[int, int, int]]:
    if layer.kind == "conv":
        mod: nn.Module = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel,
            stride=layer.stride,
            padding=layer.padding,
            groups=layer.groups,
        )
        return nn.Sequential(mod), "0", (layer.in_channels, *layer.in_hw)
    return nn.Sequential(nn.Flatten(), nn.Linear(layer.in_channels, layer.out_channels)), "1", (layer.in_channels, 1, 1)


def timed_pair(w_bits: int, a_bits: int, int8_form: str = "s8") -> tuple[int, int]:
    """The pair whose cell prices ``(w_bits, a_bits)`` in ``int8_form``: one cell per graph ONNX Runtime runs.

    Integer weights on float inputs are exported as the float layer holding its grid's values (packed ones behind
    a cast ONNX Runtime folds at session creation): the float graph, so they share the float cell. In the ``s8``
    form integer weights of any width on 8-bit inputs are int8 and run the very QLinearConv / QGemm kernel of
    ``W8A8`` (weights of <= 4 bits are stored packed and cast back to int8 before the fusion,
    :mod:`hwsearch.onnx_pack`), so they share its cell; the ``portable`` form stores 8-bit weights as uint8 (another
    kernel) and keeps its own cells. Timed apart, identical graphs differed by tens of percent: noise, which one
    measurement per machine would keep."""
    if a_bits == FLOAT_BITS:
        return (FLOAT_BITS, FLOAT_BITS)
    if int8_form == "s8" and a_bits == 8 and int_kernel_layer(w_bits, a_bits):
        return (8, 8)
    return (w_bits, a_bits)


def _elements(layer: LayerInfo) -> int:
    """Elements of one image's output of ``layer``."""
    return layer.out_channels * layer.out_hw[0] * layer.out_hw[1]


def _handed(layers: list[LayerInfo], policy: Policy, *, both_int: bool) -> int:
    """Elements handed between consecutive layers that are both integer kernels (``both_int``), or one of them."""
    total = 0
    for prev, layer in zip(layers, layers[1:], strict=False):
        a = int_kernel_layer(policy[prev.name].w, policy[prev.name].a)
        b = int_kernel_layer(policy[layer.name].w, policy[layer.name].a)
        if (a and b) if both_int else (a != b):
            total += _elements(prev)
    return total


def _fit_terms(
    layers: list[LayerInfo],
    policies: Mapping[str, Policy],
    measured: Mapping[str, float],
    raw: Callable[[list[LayerInfo], Policy], float],
) -> tuple[tuple[float, float, float], dict[str, float]]:
    """``rest_ms``, ``per_output_ms`` and ``per_transition_ms`` that best explain, in least squares, what each
    measured model took beyond its cells (``raw(layers, policy)``), and each model's residual (fit - measured,
    ms); a term no model exercises (a one-layer model hands nothing on) stays 0."""
    tags = list(policies)
    features = np.array(
        [[1.0, _handed(layers, policies[t], both_int=True), _handed(layers, policies[t], both_int=False)] for t in tags]
    )
    target = np.array([measured[t] - raw(layers, policies[t]) for t in tags])
    used = np.flatnonzero(np.abs(features).max(axis=0) > 0)
    scale = features[:, used].max(axis=0)  # elements run to 1e5: scaled, the columns are comparable
    coef, *_ = np.linalg.lstsq(features[:, used] / scale, target, rcond=None)
    terms = np.zeros(3)
    terms[used] = coef / scale
    residuals = features @ terms - target
    return (float(terms[0]), float(terms[1]), float(terms[2])), {
        t: float(r) for t, r in zip(tags, residuals, strict=True)
    }


class OrtCpuCostModel:
    """Latency (ms per image, batch 1) of each layer at each bit pair on this CPU under ONNX Runtime.

    ``layer_cost`` measures a cell the first time it is asked for and caches it (see the module docstring);
    ``measure`` fills many at once. No energy figures: budget latency or size.
    """

    def __init__(
        self,
        threads: int = 1,
        *,
        repeats: int = 50,
        warmup: int = 10,
        int8_form: str = "auto",
        cache: str | os.PathLike[str] | None = None,
        name: str | None = None,
        passes: int = 2,
    ) -> None:
        checks = (("threads", threads, 1), ("repeats", repeats, 1), ("warmup", warmup, 0), ("passes", passes, 1))
        for what, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"ort-cpu {what} = {value!r} must be an integer >= {low}")
        try:
            import onnxruntime
        except ImportError:  # pragma: no cover - optional dependency
            raise ConfigError("the ort-cpu target needs onnxruntime and onnx; pip install 'hwsearch[onnx]'") from None
        self.threads = threads
        self.repeats = repeats
        self.warmup = warmup
        self.int8_form = check_int8_form(int8_form)
        self.name = name or (ORT_CPU if threads == 1 else f"{ORT_CPU}:{threads}")
        self.runtime = f"onnxruntime {onnxruntime.__version__}"
        self.cpu = cpu_model()
        folder = Path(cache) if cache is not None else cache_dir()
        key = f"{_slug(self.cpu)}__{_slug(platform.machine())}__ort-{onnxruntime.__version__}__t{threads}__{self.int8_form}"
        self.path = folder / f"{key}.json"
        self._cells: dict[str, dict[str, dict[str, float]]] = {}
        self._fresh: set[tuple[str, str]] = set()  # cells measured by this instance (a pass keeps the fastest)
        self.passes = passes
        self._overhead: float | None = None
        self._models: dict[str, dict[str, Any]] = {}
        self._extra: dict[str, float] = {}  # layer name -> its share of rest_ms (set by calibrate)
        self._per_output = 0.0
        self._per_transition = 0.0
        self._handovers: dict[str, dict[str, float]] = {}  # pair_key -> kinds -> hand-over less a call (calibrate)
        self.calibration: dict[str, Any] | None = None
        self._load()

    # -- the cache ------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "machine": platform.machine(),
            "runtime": self.runtime,
            "threads": self.threads,
            "int8_form": self.int8_form,
        }

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TableError(f"ort-cpu cache {self.path} is unreadable ({exc}); delete it to measure again") from None
        if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA_VERSION:
            return  # another version's cache: measured again and overwritten
        if data.get("identity") != self._identity():
            return
        self._cells = {s: dict(row) for s, row in data.get("cells", {}).items()}
        self._overhead = data.get("call_overhead_ms")
        self._models = {k: dict(v) for k, v in data.get("models", {}).items()}

    def _save(self) -> None:
        data = {
            "schema": CACHE_SCHEMA_VERSION,
            "identity": self._identity(),
            "timing": {"repeats": self.repeats, "warmup": self.warmup, "batch": 1, "statistic": "median, IQR"},
            "call_overhead_ms": self._overhead,
            "cells": self._cells,
            "models": self._models,
        }
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    # -- measuring ------------------------------------------------------------------------------------
    @property
    def call_overhead_ms(self) -> float:
        """Median time of running an identity graph: paid once per inference, subtracted from each cell."""
        if self._overhead is None:
            from onnx import TensorProto, helper

            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
            graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            model.ir_version = 8
            feed = {"x": np.zeros((1, 16), np.float32)}
            median, _ = time_onnx(model.SerializeToString(), feed, self.threads, self.repeats, self.warmup)
            self._overhead = median
            self._save()
        return self._overhead

    def _measure_cell(self, layer: LayerInfo, w_bits: int, a_bits: int) -> dict[str, float]:
        from hwsearch.onnx_export import export_onnx
        from hwsearch.quant import Calibration, apply_policy
        from hwsearch.quant.calibration import ActRange

        model, name, shape = _one_layer(layer, seed=0)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((4, *shape), generator=gen)
        lo = -1.0 if layer.is_input_layer else 0.0  # the model's first layer sees normalized (signed) input
        if lo < 0:
            x = x * 2 - 1
        calibration = Calibration({name: ActRange(lo, 1.0)}, "minmax")
        policy = Policy({name: LayerBits(w_bits, a_bits)}, {})
        qmodel = apply_policy(model, policy, calibration).eval()
        with torch.no_grad():
            out = qmodel(x)
        ranges = {name: (float(out.min()), float(out.max()))}
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(
                model,
                policy,
                calibration,
                Path(tmp) / "layer.onnx",
                shape,
                int8_form=self.int8_form,
                style="kernels",
                output_ranges=ranges,
            )
            data = path.read_bytes()
        median, iqr = time_onnx(data, {"input": x[:1].numpy()}, self.threads, self.repeats, self.warmup)
        return {"median_ms": median, "iqr_ms": iqr}

    def measure(self, layers: Iterable[LayerInfo], pairs: Iterable[tuple[int, int]]) -> int:
        """Measure every (layer, pair) cell not cached yet; returns how many were measured."""
        pairs = list(dict.fromkeys(timed_pair(w, a, self.int8_form) for w, a in pairs))
        todo = []
        for layer in layers:
            row = self._cells.get(layer.signature(1), {})
            todo += [(layer, w, a) for w, a in pairs if bit_key(w, a) not in row and (layer, w, a) not in todo]
        _ = self.call_overhead_ms
        seen: dict[tuple[str, str], tuple[LayerInfo, int, int]] = {}
        for layer, w, a in todo:
            seen.setdefault((layer.signature(1), bit_key(w, a)), (layer, w, a))
        for _ in range(self.passes):  # load on a shared host comes in bursts of a second or so: keep each cell's
            for (sig, key), (layer, w, a) in seen.items():  # fastest pass, the passes seconds apart
                cell = self._measure_cell(layer, w, a)
                old = self._cells.setdefault(sig, {}).get(key)
                if old is None or cell["median_ms"] < old["median_ms"] or (sig, key) not in self._fresh:
                    self._cells[sig][key] = cell
                self._fresh.add((sig, key))
        if seen:
            self._save()
        return len(seen)

    def _bare_ms(self, layer: LayerInfo, w_bits: int, a_bits: int) -> float:
        """A cell less the call overhead (measured first if missing), without calibration terms."""
        w_bits, a_bits = timed_pair(w_bits, a_bits, self.int8_form)
        key = bit_key(w_bits, a_bits)
        if key not in self._cells.get(layer.signature(1), {}):
            self.measure([layer], [(w_bits, a_bits)])
        return max(self._cells[layer.signature(1)][key]["median_ms"] - self.call_overhead_ms, 1e-6)

    def _raw(self, layers: list[LayerInfo], policy: Policy) -> float:
        """The policy's bare cells, measured hand-overs and one call overhead (no fitted terms)."""
        bits = [(policy[ly.name].w, policy[ly.name].a) for ly in layers]
        cells = sum(self._bare_ms(ly, *b) for ly, b in zip(layers, bits, strict=True))
        pairs = zip(layers, layers[1:], bits, bits[1:], strict=False)
        return self.call_overhead_ms + cells + sum(self._handover_ms(*p) for p in pairs)

    def _handover_ms(
        self, prev: LayerInfo, layer: LayerInfo, prev_bits: tuple[int, int], bits: tuple[int, int]
    ) -> float:
        """The measured hand-over from ``prev`` to ``layer`` (:mod:`hwsearch.hardware.handover`): their segment's
        time at their kinds less both layers' (each of the three timings pays one call, the hand-over none); 0
        where none was measured (no path between)."""
        excess = self._handovers.get(pair_key(prev.name, layer.name), {}).get(kind_of(*prev_bits) + kind_of(*bits))
        return 0.0 if excess is None else excess + self.call_overhead_ms

    def _time_graph(self, data: bytes, feed: dict[str, np.ndarray]) -> float:
        """One timing of a graph, as a cell's (the median of three sessions' medians)."""
        return time_onnx(data, feed, self.threads, self.repeats, self.warmup)[0]

    def time_model(
        self, path: str | os.PathLike[str], input_shape: tuple[int, ...], rounds: int = 3, pause_s: float = 1.0
    ) -> float:
        """Latency (ms, batch 1) of an ONNX file under this target's threads (:meth:`time_models` of one file)."""
        return self.time_models([path], input_shape, rounds, pause_s)[0]

    def time_models(
        self,
        paths: Iterable[str | os.PathLike[str]],
        input_shape: tuple[int, ...],
        rounds: int = 3,
        pause_s: float = 1.0,
    ) -> list[float]:
        """Latency (ms, batch 1) of each ONNX file under this target's threads: the median of ``rounds`` timings
        (each the median of three fresh sessions' medians over at least 100 runs), ``pause_s`` apart so that a
        burst of load on a shared host (about a second) slows one round, not all. Each round times every file in
        turn, so files compared with each other (a policy and its float model, the calibration's three) meet the
        same host: on a shared machine whose speed drifts by tens of percent over minutes, their ratio holds
        where their separate timings would not."""
        datas = [Path(p).read_bytes() for p in paths]
        x = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
        feeds = [{_session(d, self.threads).get_inputs()[0].name: x} for d in datas]
        timings: list[list[float]] = [[] for _ in datas]
        for i in range(rounds):
            if i:
                time.sleep(pause_s)
            for j, (data, feed) in enumerate(zip(datas, feeds, strict=True)):
                timings[j].append(time_onnx(data, feed, self.threads, max(self.repeats, 100), self.warmup)[0])
        return [statistics.median(t) for t in timings]

    def calibrate(self, ws: Any) -> dict[str, Any]:
        """Measure ``ws``'s whole model under the calibration policies (once per machine; cached) and charge the
        rest of the graph to the layers as the module docstring says. Returns the calibration record."""
        from hwsearch.onnx_export import export_onnx

        layers = list(ws.layers)
        shape = tuple(int(d) for d in ws.splits.input_shape)
        key = hashlib.sha1(
            json.dumps(
                [ws.model_name, list(shape), [ly.name for ly in layers], [ly.signature(1) for ly in layers]]
            ).encode()
        ).hexdigest()[:16]
        names = [ly.name for ly in layers]
        rng = random.Random(0)
        choices = [LayerBits(w, a) for w in SEARCH_W_BITS for a in SEARCH_A_BITS]
        policies = {
            "float": Policy({n: LayerBits(FLOAT_BITS, FLOAT_BITS) for n in names}, {}),
            "int8": Policy({n: LayerBits(8, 8) for n in names}, {}),
            "alternating": Policy(
                {n: LayerBits(8, 8) if i % 2 else LayerBits(FLOAT_BITS, FLOAT_BITS) for i, n in enumerate(names)}, {}
            ),
            **{f"mix{k}": Policy({n: rng.choice(choices) for n in names}, {}) for k in range(CALIBRATION_MIXES)},
        }
        record = self._models.get(key)
        if record is None:
            self.measure(layers, [KIND_BITS[k] for k in KINDS])
            self._handovers = time_handovers(ws, self.int8_form, key, self._time_graph, self.passes)
            with tempfile.TemporaryDirectory() as tmp:
                paths = [
                    export_onnx(
                        ws, policy, None, Path(tmp) / f"{tag}.onnx", shape, int8_form=self.int8_form, style="kernels"
                    )
                    for tag, policy in policies.items()
                ]
                measured = dict(zip(policies, self.time_models(paths, shape), strict=True))
            (rest, per_output, per_transition), residuals = _fit_terms(layers, policies, measured, self._raw)
            record = {
                "model": ws.model_name,
                **{f"{tag}_ms": ms for tag, ms in measured.items()},
                "rest_ms": rest,
                "per_output_ms": per_output,
                "per_transition_ms": per_transition,
                "fit": "least squares",
                "residual_ms": residuals,
                "handovers_ms": self._handovers,
            }
            self._models[key] = record
            self._save()
        self._handovers = {k: dict(v) for k, v in record["handovers_ms"].items()}
        self._extra = {n: record["rest_ms"] / len(layers) for n in names}
        self._per_output = record["per_output_ms"]
        self._per_transition = record["per_transition_ms"]
        self.calibration = dict(record)
        return dict(record)

    def predict_ms(self, layers: Iterable[LayerInfo], policy: Policy) -> float:
        """Predicted latency of a whole exported model: the policy's cost (cells and boundaries) plus one call
        overhead."""
        layers = list(layers)
        total = self.call_overhead_ms
        for i, ly in enumerate(layers):  # what hardware.policy_cost sums (not imported: it imports this module)
            bits = (policy[ly.name].w, policy[ly.name].a)
            total += self.layer_cost(ly, *bits).latency_ms
            if i:
                prev = layers[i - 1]
                total += self.boundary_cost(prev, (policy[prev.name].w, policy[prev.name].a), ly, bits)
        return max(total, 0.0)

    # -- the CostModel protocol -----------------------------------------------------------------------
    def supported_bits(self) -> tuple[int, ...]:
        return VALID_BITS

    def search_bits(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (weight, input) widths a search on this target chooses among (see ``SEARCH_W_BITS``)."""
        return SEARCH_W_BITS, SEARCH_A_BITS

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        if w_bits not in VALID_BITS or a_bits not in VALID_BITS:
            raise TableError(f"layer {layer.name!r}: W{w_bits}A{a_bits} is not a bit pair (1..8 or 32)")
        return LayerCost(latency_ms=max(self._bare_ms(layer, w_bits, a_bits) + self._extra.get(layer.name, 0.0), 1e-6))

    def boundary_cost(
        self, prev: LayerInfo, prev_bits: tuple[int, int], layer: LayerInfo, bits: tuple[int, int]
    ) -> float:
        """Latency (ms, may be negative) of handing ``prev``'s output to ``layer``, the next layer in forward order,
        beyond both cells: ``per_output_ms`` per element when both run integer kernels, ``per_transition_ms`` when
        one does, else 0."""
        measured = self._handover_ms(prev, layer, prev_bits, bits)
        a, b = int_kernel_layer(*prev_bits), int_kernel_layer(*bits)
        if a and b:
            return measured + self._per_output * _elements(prev)
        if a != b:
            return measured + self._per_transition * _elements(prev)
        return measured
