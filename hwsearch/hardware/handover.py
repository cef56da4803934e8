"""What handing a tensor from one layer to the next costs under ONNX Runtime, measured where it happens.

A layer's cell (:mod:`hwsearch.hardware.ort_cpu`) is timed alone; in the whole model, the work between two layers
depends on what both run. ONNX Runtime keeps a run of float convolutions in its blocked NCHWc layout and converts
where the run ends; integer convolutions run in NHWC and hand uint8 straight on; a pooling node between a float
and an integer layer ran in plain layout, as long as the float convolution before it (smallcnn, 1 thread). So a
layer pair's hand-over is timed on the exported model's own *segment* from the first layer's input to the second
layer's output (:mod:`hwsearch.hardware.onnx_segments`), at each pair of layer *kinds*:

- ``F``: a float kernel on float inputs (float layers, and integer weights on float inputs: the same graph);
- ``Q``: a float kernel on quantized inputs (``W32A8``: a quantize / dequantize pair before a float convolution);
- ``I``: an integer kernel (integer weights and inputs: QLinearConv / QGemm).

Nine exports cover every kind pair of every consecutive layer pair (:func:`cover_policies`): layer ``i`` of
export ``(a, b)`` has kind ``(a + b * i) mod 3``, so pair ``(i, i + 1)`` meets kinds ``(a + b i, a + b i + b)``,
all nine as ``a`` and ``b`` run over 0..2. The hand-over is the segment's time less both layers', the layers cut
from the same export and timed in turn with the segment, plus the one call the three timings paid beyond it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwsearch.int_kernels import int_kernel_layer
from hwsearch.policy import FLOAT_BITS, LayerBits, Policy

__all__ = ["KINDS", "KIND_BITS", "cover_policies", "kind_of", "pair_key", "time_handovers"]

KINDS: tuple[str, ...] = ("F", "Q", "I")
#: the bit pair that stands for each kind in the cover exports (and whose cells calibration measures first)
KIND_BITS: dict[str, tuple[int, int]] = {"F": (FLOAT_BITS, FLOAT_BITS), "Q": (FLOAT_BITS, 8), "I": (8, 8)}
_EXPORTS: dict[tuple[str, ...], bytes] = {}  # the last model's cover exports: thread counts share them


def kind_of(w_bits: int, a_bits: int) -> str:
    """``I`` for an integer kernel, ``F`` for a float kernel on float inputs, ``Q`` for one on quantized inputs."""
    if int_kernel_layer(w_bits, a_bits):
        return "I"
    return "F" if a_bits == FLOAT_BITS else "Q"


def pair_key(first: str, second: str) -> str:
    """How a hand-over between two layers is keyed in the cache."""
    return f"{first}>{second}"


def cover_policies(names: Sequence[str]) -> dict[str, Policy]:
    """Nine policies in which every consecutive pair of ``names`` meets every pair of kinds exactly once."""
    out = {}
    for a in range(len(KINDS)):
        for b in range(len(KINDS)):
            bits = {n: KIND_BITS[KINDS[(a + b * i) % len(KINDS)]] for i, n in enumerate(names)}
            out[f"cover{a}{b}"] = Policy({n: LayerBits(*wa) for n, wa in bits.items()}, {})
    return out


def _exports(ws: Any, policies: Mapping[str, Policy], int8_form: str, key: str) -> dict[str, bytes]:
    """The cover policies exported as ``hwsearch export --onnx-style kernels`` writes them (kept in memory for the
    last model, so a second thread count does not export them again)."""
    import tempfile

    from hwsearch.onnx_export import export_onnx

    shape = tuple(int(d) for d in ws.splits.input_shape)
    out = {}
    for tag, policy in policies.items():
        memo = (key, int8_form, tag, hashlib.sha1(repr(policy.key()).encode()).hexdigest())
        if memo not in _EXPORTS:
            if _EXPORTS and next(iter(_EXPORTS))[:2] != memo[:2]:
                _EXPORTS.clear()
            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(ws, policy, None, Path(tmp) / "m.onnx", shape, int8_form=int8_form, style="kernels")
                _EXPORTS[memo] = path.read_bytes()
        out[tag] = _EXPORTS[memo]
    return out


def time_handovers(
    ws: Any,
    int8_form: str,
    key: str,
    timer: Callable[[bytes, dict[str, np.ndarray]], float],
    passes: int = 2,
) -> dict[str, dict[str, float]]:
    """Each consecutive layer pair's hand-over less one call (ms): its segment's time less both layers' times, the
    three timed in turn (``timer``'s figure), the median over ``passes``; keyed by :func:`pair_key` and then
    ``"FI"``-style kind pairs. Pairs the graph does not connect (the second layer does not read the first's
    output) are left out: nothing is handed over between them.

    The layers are cut from the same export as the segment and timed right before and after it: a hand-over is a
    few microseconds between timings of tens, and a shared host's speed drifts by tens of percent within a
    minute, so a segment timed long after the cells it is compared with carried that drift into every hand-over."""
    import onnx
    from onnx import shape_inference

    from hwsearch.hardware.onnx_segments import alone, constant_tensors, extract, find_layers, segment, segment_feed

    names = [ly.name for ly in ws.layers]
    policies = cover_policies(names)
    runs: dict[str, dict[str, list[float]]] = {}
    graphs = []
    for tag, data in _exports(ws, policies, int8_form, key).items():
        model = shape_inference.infer_shapes(onnx.load_from_string(data))
        nodes = find_layers(model, names)
        const = constant_tensors(model)
        singles = [(extract(model, alone(n)).SerializeToString(), segment_feed(model, [n.input])) for n in nodes]
        pairs = []
        for i, (first, second) in enumerate(itertools.pairwise(nodes)):
            seg = segment(model, first, second, const)
            if seg is None:
                continue
            kinds = kind_of(*_bits(policies[tag], first.name)) + kind_of(*_bits(policies[tag], second.name))
            sub = (extract(model, seg).SerializeToString(), segment_feed(model, seg.inputs))
            pairs.append((i, pair_key(first.name, second.name), kinds, sub))
        graphs.append((singles, pairs))
    for _ in range(passes):
        for singles, pairs in graphs:
            times: dict[int, float] = {}
            for i, pair, kinds, (data, feed) in pairs:  # layer i, layer i + 1, then their segment
                for j in (i, i + 1):
                    if j not in times:
                        times[j] = timer(*singles[j])
                excess = timer(data, feed) - times[i] - times[i + 1]
                runs.setdefault(pair, {}).setdefault(kinds, []).append(excess)
    return {pair: {k: float(np.median(v)) for k, v in by_kind.items()} for pair, by_kind in runs.items()}


def _bits(policy: Policy, name: str) -> tuple[int, int]:
    return policy[name].w, policy[name].a
