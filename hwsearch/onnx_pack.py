"""Packed 4-bit storage of low-bit weights in an exported ONNX model (:func:`pack_low_bit_weights`).

:func:`hwsearch.onnx_export.export_onnx` stores every quantized weight as an int8/uint8 initializer, so a 4-bit
policy's file is as large as an 8-bit one. This pass re-stores each integer weight whose values fit the 4-bit
range (int8 in -8..7 as ONNX ``INT4``, uint8 in 0..15 as ``UINT4``; two values a byte, opset 21, IR 10), packed
by onnx itself (``numpy_helper.from_array`` of an ``ml_dtypes`` 4-bit array). Its readers see the same integers:

- by default every reader (``DequantizeLinear``, ``ConvInteger``/``MatMulInteger``, ``Cast``) reads it through one
  new ``Cast`` back to the original 8-bit type. The Cast's input is a constant, so ONNX Runtime folds it at
  session creation (basic level) and then fuses the QDQ graph into the same integer kernels (QLinearConv, QGemm)
  as the unpacked file: same optimized graph, bit-identical outputs;
- ``direct_dequantize=True`` lets ``DequantizeLinear`` read the 4-bit tensor directly (its zero point becomes 4-bit
  too, copied when something else reads it). ONNX Runtime 1.32 runs that on CPU but does not fuse a 4-bit
  ``DequantizeLinear`` into QLinearConv/QGemm: it convolves in float, slower and not bit-identical to the
  fused 8-bit kernels (exact only with graph optimizations off). For runtimes with 4-bit kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PACKED_BITS", "PACK_OPSET", "pack_low_bit_weights"]

PACKED_BITS = 4
PACK_OPSET = 21  # first opset with INT4/UINT4 in DequantizeLinear and Cast
_PACK_IR_VERSION = 10  # first IR version with INT4/UINT4

# (op type, input index) pairs that read a weight
_DQ_INPUT = ("DequantizeLinear", 0)
_CAST_READERS = {("ConvInteger", 1), ("MatMulInteger", 1), ("Cast", 0)}


def _ranges() -> dict[int, tuple[int, int, int]]:
    """8-bit data type -> (4-bit data type, lowest value, highest value)."""
    from onnx import TensorProto

    return {TensorProto.INT8: (TensorProto.INT4, -8, 7), TensorProto.UINT8: (TensorProto.UINT4, 0, 15)}


def _to_4bit(values: np.ndarray, name: str, data_type: int) -> Any:
    """A 4-bit initializer holding ``values``, packed two a byte in ``raw_data`` by onnx itself."""
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    dtype = ml_dtypes.int4 if data_type == TensorProto.INT4 else ml_dtypes.uint4
    return numpy_helper.from_array(values.astype(dtype), name)


def _fits(values: np.ndarray, lo: int, hi: int) -> bool:
    return values.size > 0 and int(values.min()) >= lo and int(values.max()) <= hi


def _subgraph_names(graph: Any) -> set[str]:
    """Every name a node inside a subgraph (If/Loop/Scan bodies) reads: initializers read there are left alone."""
    from onnx import AttributeProto

    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names.update(i for n in sub.node for i in n.input)
                names |= _subgraph_names(sub)
    return names


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when taken; the result is marked taken."""
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _readers(graph: Any, inits: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """Initializer name -> (node index, input index) of every top-level node input reading it."""
    out: dict[str, list[tuple[int, int]]] = {}
    for i, node in enumerate(graph.node):
        for k, name in enumerate(node.input):
            if name in inits:
                out.setdefault(name, []).append((i, k))
    return out


def _choose(proto: Any, direct: bool) -> list[str]:
    """The initializers :func:`pack_low_bit_weights` packs (see its docstring for the rule)."""
    from onnx import numpy_helper

    ranges = _ranges()
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    readers = _readers(graph, inits)
    blocked = _subgraph_names(graph) | {o.name for o in graph.output}
    chosen = []
    for name, init in inits.items():
        uses = [(graph.node[i], k) for i, k in readers.get(name, [])]
        if init.data_type not in ranges or name in blocked or not uses or int(np.prod(init.dims)) <= 1:
            continue
        if any((n.op_type, k) != _DQ_INPUT and (n.op_type, k) not in _CAST_READERS for n, k in uses):
            continue
        _, lo, hi = ranges[init.data_type]
        if not _fits(numpy_helper.to_array(init), lo, hi):
            continue
        zps = {n.input[2] for n, k in uses if (n.op_type, k) == _DQ_INPUT and len(n.input) > 2 and n.input[2]}
        if not direct or all(
            z in inits
            and z not in blocked
            and inits[z].data_type == init.data_type
            and _fits(numpy_helper.to_array(inits[z]), lo, hi)
            for z in zps
        ):  # else a zero point computed at run time or outside the 4-bit range: its type cannot change
            chosen.append(name)
    return chosen


def _at_opset(proto: Any) -> Any:
    """A copy of ``proto`` at default-domain opset >= 21 and IR version >= 10, other domains as they are."""
    import onnx

    model = onnx.ModelProto()
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    if version < PACK_OPSET:  # the converter rewrites ops whose signature changed (ReduceMax's axes, ...)
        model = onnx.version_converter.convert_version(proto, PACK_OPSET)
    else:
        model.CopyFrom(proto)
    # the converter adds the shapes it inferred: keep the file's own, less any of an initializer (its type changes)
    inits = {i.name for i in proto.graph.initializer}
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in proto.graph.value_info if v.name not in inits)
    model.ir_version = max(model.ir_version, _PACK_IR_VERSION)
    return model


def pack_low_bit_weights(proto: Any, *, direct_dequantize: bool = False) -> tuple[Any, dict[str, int]]:
    """Return a copy of ``proto`` with every 4-bit-range integer weight stored packed, and ``{name: 4}`` for each.

    A weight is an INT8/UINT8 initializer of more than one element read only as ``DequantizeLinear`` input 0,
    ``ConvInteger``/``MatMulInteger`` input 1 or ``Cast`` input 0 (never a graph output, nor inside a subgraph);
    with ``direct_dequantize`` its ``DequantizeLinear`` zero points must be initializers in the 4-bit range too.
    Nothing fits: ``proto`` itself is returned, unchanged. Otherwise the default-domain opset becomes at least 21
    (through onnx's version converter, which rewrites ops whose signature changed) and the IR version at least
    10; other domains are kept. The result passes ``onnx.checker.check_model``.
    """
    import onnx
    from onnx import helper, numpy_helper

    chosen = _choose(proto, direct_dequantize)
    if not chosen:
        return proto, {}
    model = _at_opset(proto)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = _readers(graph, inits)
    taken = set(inits) | {v.name for v in (*graph.input, *graph.output)}
    taken |= {o for n in graph.node for o in (*n.input, *n.output, n.name)}
    four_bit_of = {e: f for e, (f, _, _) in _ranges().items()}

    def repack(init: Any, name: str, data_type: int) -> Any:
        return _to_4bit(numpy_helper.to_array(init), name, data_type)

    packed: dict[str, int] = {}
    zp_copies: dict[str, str] = {}  # zero point also read elsewhere -> its 4-bit copy
    casts: list[tuple[int, Any]] = []  # (index of the weight's first reader, Cast node before it)
    chosen_set = set(chosen)
    for name in chosen:
        eight_bit = inits[name].data_type
        four_bit = four_bit_of[eight_bit]
        cast_out = None
        for i, k in readers[name]:
            node = graph.node[i]
            if not direct_dequantize or (node.op_type, k) != _DQ_INPUT:
                if cast_out is None:
                    cast_out = _unique(f"{name}_unpacked", taken)
                    cast = helper.make_node(
                        "Cast", [name], [cast_out], name=_unique(f"{name}_Cast", taken), to=eight_bit
                    )
                    casts.append((i, cast))
                node.input[k] = cast_out
            elif len(node.input) > 2 and node.input[2]:
                zp = node.input[2]
                alone = all(
                    (graph.node[j].op_type, m) == ("DequantizeLinear", 2) and graph.node[j].input[0] in chosen_set
                    for j, m in readers[zp]
                )
                if alone:
                    if inits[zp].data_type == eight_bit:  # not converted yet for another weight sharing it
                        inits[zp].CopyFrom(repack(inits[zp], zp, four_bit))
                else:
                    if zp not in zp_copies:
                        zp_copies[zp] = _unique(f"{zp}_int4", taken)
                        graph.initializer.append(repack(inits[zp], zp_copies[zp], four_bit))
                    node.input[2] = zp_copies[zp]
        inits[name].CopyFrom(repack(inits[name], name, four_bit))
        packed[name] = PACKED_BITS
    for index, cast in sorted(casts, key=lambda c: c[0], reverse=True):
        graph.node.insert(index, cast)
    onnx.checker.check_model(model)
    return model, packed
