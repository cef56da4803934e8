"""Where each layer lies in an exported ONNX graph, and the segment of the graph from one layer to the next.

The ``ort-cpu`` target times each layer alone (a cell), but what ONNX Runtime does *between* two layers depends
on both: a float convolution hands its blocked (NCHWc) output on to a float neighbour directly and converts it
back to plain layout before an integer one, and a pooling node between them runs in whichever layout it is
handed, at very different speeds. A *segment* is the exported model's subgraph from one layer's input to the next
layer's output, the nodes between them included (a residual add's other operand becomes one more input), so
timing it at each pair of layer kinds measures that hand-over where it happens (:mod:`hwsearch.hardware.ort_cpu`).

A layer's nodes are found by name, not by position: PyTorch's exporter names every node by the path of the module
that emitted it (``/net/layer1/layer1.0/conv1/Conv`` for ``net.layer1.0.conv1``: each atom of the qualified name,
a numeric one joined to the atom before it), so the layer's scope holds its convolution or matrix product and the
nodes the export adds around it: input quantizer, folded activation, output requantizer. Weights are no guide:
the exporter renames a float weight it folds a batch norm into.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwsearch.errors import ModelError

__all__ = [
    "LayerNodes",
    "Segment",
    "alone",
    "constant_tensors",
    "extract",
    "find_layers",
    "scope",
    "segment",
    "segment_feed",
]

_MAIN_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"})
# ONNX element types a segment input can carry (float activations; uint8 / int8 integer activations)
_NUMPY_TYPES: dict[int, Any] = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16}


@dataclass(frozen=True)
class LayerNodes:
    """One layer's place in the graph: its input tensor, its output tensor and its nodes (indices, graph order)."""

    name: str
    input: str
    output: str
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    """A subgraph from one layer's input to the next layer's output: its nodes, the tensors it is fed, and
    ``kept``: tensors it computes that the model also reads elsewhere (a block's output read by the next block's
    residual add), kept as outputs so that ONNX Runtime cannot fuse them away where the whole model could not."""

    inputs: tuple[str, ...]
    output: str
    nodes: tuple[int, ...]
    kept: tuple[str, ...] = ()


def constant_tensors(model: Any) -> set[str]:
    """Initializers and every tensor computed from them alone (weight dequantization, Identity-shared zero
    points, Constant nodes): what a segment carries with it rather than being fed."""
    const = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # graph order is topological
        if all(t in const for t in node.input if t):
            const.update(node.output)
    return const


def scope(layer: str) -> str:
    """The ONNX scope PyTorch's exporter gives the nodes of module ``layer`` (a qualified name)."""
    atoms = layer.split(".")
    parts: list[str] = []
    for k, atom in enumerate(atoms):
        parts.append(f"{parts[-1]}.{atom}" if atom.isnumeric() and parts else atom)
        if k == 0 and atom.isnumeric():
            raise ModelError(f"layer {layer!r}: a qualified name cannot start with a number")
    return "/" + "/".join(parts) + "/"


def find_layers(model: Any, layer_names: Sequence[str]) -> list[LayerNodes]:
    """Each named layer's input, output and nodes in an ``export_onnx`` graph; a ModelError names a layer whose
    nodes cannot be found (a graph this module does not understand is refused, never guessed at)."""
    nodes = list(model.graph.node)
    const = constant_tensors(model)
    graph_outputs = {o.name for o in model.graph.output}
    found = []
    for name in layer_names:
        prefix = scope(name)
        members = [i for i, n in enumerate(nodes) if n.name.startswith(prefix) and not set(n.output) <= const]
        main = [i for i in members if nodes[i].op_type in _MAIN_OPS and "/" not in nodes[i].name[len(prefix) :]]
        if len(main) != 1:
            raise ModelError(
                f"layer {name!r}: expected one convolution or matrix product named {prefix}*, found {len(main)}"
            )
        produced = {t for i in members for t in nodes[i].output}
        inputs = list(dict.fromkeys(t for i in members for t in nodes[i].input if t and t not in produced | const))
        outside = {t for i, n in enumerate(nodes) if i not in members for t in n.input} | graph_outputs
        outputs = [t for t in produced if t in outside]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"layer {name!r}: expected one input and one output in scope {prefix!r}, found {inputs} and {outputs}"
            )
        found.append(LayerNodes(name, inputs[0], outputs[0], tuple(members)))
    return found


def segment(model: Any, first: LayerNodes, second: LayerNodes, const: set[str] | None = None) -> Segment | None:
    """The subgraph from ``first``'s input to ``second``'s output: the nodes on a path between them (both layers',
    and what lies between); None when ``second`` does not read from ``first`` (no path). ``const``: the model's
    :func:`constant_tensors`, when the caller cuts many segments of one model."""
    nodes = list(model.graph.node)
    const = constant_tensors(model) if const is None else const
    reached = {first.input}
    forward: set[int] = set()
    for i, node in enumerate(nodes):
        if any(t in reached for t in node.input):
            forward.add(i)
            reached.update(node.output)
    if second.output not in reached:
        return None
    wanted = {second.output}
    members: set[int] = set()
    for i in reversed(range(len(nodes))):
        if i in forward and any(t in wanted for t in nodes[i].output):
            members.add(i)
            wanted.update(nodes[i].input)
    produced = {t for i in members for t in nodes[i].output}
    inputs = dict.fromkeys(t for i in sorted(members) for t in nodes[i].input if t and t not in produced | const)
    read_elsewhere = {t for i, n in enumerate(nodes) if i not in members for t in n.input}
    read_elsewhere |= {o.name for o in model.graph.output}
    kept = tuple(t for i in sorted(members) for t in nodes[i].output if t in read_elsewhere and t != second.output)
    return Segment(tuple(inputs), second.output, tuple(sorted(members)), kept)


def alone(layer: LayerNodes) -> Segment:
    """The layer's own nodes as a segment: what a hand-over's segment is compared with."""
    return Segment((layer.input,), layer.output, layer.nodes)


def extract(model: Any, seg: Segment) -> Any:
    """The segment as a model of its own (constants carried along), by ONNX's own extractor."""
    import onnx.utils

    return onnx.utils.Extractor(model).extract_model(list(seg.inputs), [seg.output, *seg.kept])


def segment_feed(model: Any, names: Iterable[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for timing: each tensor at its inferred shape (a symbolic batch is 1), random values of its type.
    ``model`` must carry inferred shapes (``onnx.shape_inference.infer_shapes``)."""
    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    rng = np.random.default_rng(seed)
    feed = {}
    for name in names:
        if name not in infos:
            raise ModelError(f"tensor {name!r} has no inferred shape; run onnx.shape_inference first")
        tensor = infos[name].type.tensor_type
        dtype = _NUMPY_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise ModelError(f"tensor {name!r} has ONNX element type {tensor.elem_type}, which a segment cannot feed")
        shape = [d.dim_value or 1 for d in tensor.shape.dim]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            feed[name] = rng.integers(max(info.min, -128), min(info.max, 255), size=shape, endpoint=True).astype(dtype)
        else:
            feed[name] = rng.random(shape).astype(dtype)
    return feed
