"""The exported graph made parseable by TensorRT's ONNX parser, without touching its weights.

torch's dynamo exporter (with `optimize=False`, which keeps initializer names for refit) leaves two things the
parser refuses:

- reduction axes computed at run time from constants (`ReduceMean(x, Reshape(Constant, Constant))`): "Axis input
  must resolve to a build-time constant". Every node whose inputs are all Constant nodes is evaluated here (ONNX's
  reference evaluator) and becomes a Constant, repeatedly, so such chains fold to literal values.
- `torch.chunk` / `torch.split` as `SplitToSequence` + `SequenceAt`, which the parser does not take. Where the split
  sizes (or the dimension a chunk size divides) are known, they become one `Split` whose outputs are the
  `SequenceAt` results, named as before.

Initializers (the weights) are never folded or renamed: a node that reads one is left as exported, so LoRA refit
by initializer name and the FP8 Q/DQ graph find the same names. Values are unchanged; export/ checks ONNX Runtime
against torch after the cleanup, as before.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Largest constant a fold may produce: shape arithmetic and axes, not tensors worth storing in the graph.
MAX_FOLDED_ELEMENTS = 1 << 16
# Ops whose result is not a function of their inputs alone, or that are best left to the runtime.
_NEVER_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    (value,) = ReferenceEvaluator(node).run(None, {})
    return np.asarray(value)


def _constant_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def fold_constants(graph: onnx.GraphProto) -> int:
    """Replace every standard-domain node fed only by Constant nodes with Constants of its outputs; returns how many
    nodes were folded. Nodes reading an initializer, a graph input or a subgraph are kept."""
    values: dict[str, np.ndarray] = {}
    folded = 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not node.input:
            values[node.output[0]] = _constant_value(node)
            nodes.append(node)
            continue
        inputs = [i for i in node.input if i]
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NEVER_FOLD
            and inputs
            and all(i in values for i in inputs)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        )
        if foldable:
            feeds = {i: values[i] for i in inputs}
            try:
                outputs = ReferenceEvaluator(node).run(None, feeds)
            except Exception:  # an op the reference evaluator lacks: leave it to the runtime
                outputs = None
            if outputs is not None and all(np.asarray(o).size <= MAX_FOLDED_ELEMENTS for o in outputs):
                for name, value in zip(node.output, outputs, strict=True):
                    if name:
                        values[name] = np.asarray(value)
                        nodes.append(_constant_node(name, value))
                folded += 1
                continue
        nodes.append(node)
    _replace_nodes(graph, nodes)
    return folded


def _static_dims(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    """value name -> its dims as far as the graph records them (None where symbolic or unknown)."""
    dims = {}
    for v in (*graph.input, *graph.value_info, *graph.output):
        shape = v.type.tensor_type.shape
        if v.type.tensor_type.HasField("shape"):
            dims[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return dims


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {n.output[0]: _constant_value(n) for n in graph.node if n.op_type == "Constant" and not n.input}


def split_sequences(graph: onnx.GraphProto, dims: dict[str, list[int | None]]) -> int:
    """Rewrite `SplitToSequence(x, split)` whose every use is `SequenceAt(seq, constant index)` into one `Split`;
    returns how many were rewritten. The split sizes must be known: a 1-D split of static length (its values may be
    computed at run time), or a scalar chunk size over an axis of static size; `dims`: the shapes ONNX's shape
    inference knows (_static_dims of an inferred copy)."""
    constants = _constants(graph)
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> its replacement
    dropped: set[int] = set()
    rewritten = 0
    for node in graph.node:
        if node.op_type != "SplitToSequence" or len(node.input) < 2 or not node.input[1]:
            continue
        seq = node.output[0]
        uses = users.get(seq, [])
        indexed = all(u.op_type == "SequenceAt" and u.input[1] in constants for u in uses)
        if seq in graph_outputs or not uses or not indexed:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", 0))
        x, split = node.input[0], node.input[1]
        sizes = None  # a constant 1-D split, or None when the split tensor is computed at run time
        if split in constants and constants[split].ndim == 0:
            x_dims = dims.get(x)
            length = x_dims[axis] if x_dims is not None and -len(x_dims) <= axis < len(x_dims) else None
            if length is None:
                continue
            chunk = int(constants[split])
            sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
            count = len(sizes)
        elif split in constants:
            sizes = [int(s) for s in constants[split].reshape(-1)]
            count = len(sizes)
        else:
            split_dims = dims.get(split)
            if split_dims is None or len(split_dims) != 1 or split_dims[0] is None:
                continue
            count = split_dims[0]
        names = [f"{seq}_part{k}" for k in range(count)]
        for use in uses:
            index = int(constants[use.input[1]])
            names[index % count] = use.output[0]
            dropped.add(id(use))
        split_input = split
        extra: list[onnx.NodeProto] = []
        if sizes is not None:
            split_input = f"{seq}_sizes"
            extra.append(_constant_node(split_input, np.array(sizes, dtype=np.int64)))
        split_node = helper.make_node("Split", [x, split_input], names, name=f"{node.name}_split", axis=axis)
        replaced[id(node)] = [*extra, split_node]
        rewritten += 1
    nodes = []
    for node in graph.node:
        if id(node) in dropped:
            continue
        nodes.extend(replaced.get(id(node), [node]))
    _replace_nodes(graph, nodes)
    return rewritten


def remove_unused_constants(graph: onnx.GraphProto) -> int:
    """Constant nodes nobody reads any more (left behind by the folds)."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    removed = len(graph.node) - len(keep)
    _replace_nodes(graph, keep)
    return removed


def _replace_nodes(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> None:
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def clean(model: onnx.ModelProto) -> dict[str, int]:
    """Both rewrites, until nothing changes (a fold can make a split's sizes constant); what each did."""
    counts = {"folded": 0, "splits": 0, "removed_constants": 0}
    while True:
        folded = fold_constants(model.graph)
        # Shapes by ONNX's inference with data propagation: a split tensor built by Concat of sizes has a length.
        dims = _static_dims(onnx.shape_inference.infer_shapes(model, data_prop=True).graph)
        splits = split_sequences(model.graph, dims)
        counts["folded"] += folded
        counts["splits"] += splits
        if not folded and not splits:
            break
    counts["removed_constants"] = remove_unused_constants(model.graph)
    return counts
