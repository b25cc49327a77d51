"""Legalisation: ops beyond a target's limits are rewritten into ops within them, before the
support check decides what falls back to the host (as Vela legalises before its
supported-operator check). Each rewrite is exact; an op no rewrite keeps is left as it is.

    AveragePool/MaxPool over the whole input (a global pool with a big kernel)
        -> GlobalAveragePool / GlobalMaxPool, or ReduceMean / ReduceMax over the spatial axes
    AveragePool/MaxPool with stride == kernel, no padding, a kernel side above the limit
        -> a chain of pools whose kernels multiply to it (32 = 8 x 4), each within the limits:
           the mean of block means over equal blocks is the block mean, and max of maxes the max
    LSTM over a few fixed steps (no recurrent kernel on the NPU)
        -> each step's cell arithmetic: MatMul, Add, Split, Sigmoid, Tanh, Mul (legalize_lstm.py)
    1-D Conv beyond the kernel or stride limit whose stride divides its kernel (an STFT)
        -> framing (Reshape, Slice, Concat) and one MatMul (legalize_framed_conv.py)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node
from ..ir.shape_inference import ShapeInferenceError, infer_node
from ..target import TargetSpec
from .legalize_framed_conv import framed_conv
from .legalize_lstm import lstm_as_cells
from .support import check_npu_support

_POOLS = {"AveragePool": ("GlobalAveragePool", "ReduceMean"), "MaxPool": ("GlobalMaxPool", "ReduceMax")}


@dataclass(frozen=True)
class Legalisation:
    """One op rewritten: what it was, what it became, and why."""

    node: str
    op_type: str
    became: tuple[str, ...]
    reason: str


def legalize_graph(graph: Graph, target: TargetSpec, keep: frozenset[str] = frozenset()) -> list[Legalisation]:
    """Rewrite every op the target cannot run as it is but can run rewritten (op types in `keep`,
    the user's host_ops, stay as they are); returns what changed."""
    done: list[Legalisation] = []
    for node in graph.topological_order():
        if node.domain or node.op_type not in _REWRITES or node.op_type in keep:
            continue
        verdict = check_npu_support(node, graph, target)
        if verdict.supported:
            continue
        rewrite = next((r for r in (rewrite(node, graph, target) for rewrite in _REWRITES[node.op_type]) if r), None)
        if rewrite is None:
            continue
        new_nodes, added_constants = rewrite
        if not _all_supported(new_nodes, added_constants, node, graph, target):
            continue
        done.append(Legalisation(node.name, node.op_type, tuple(n.op_type for n in new_nodes), verdict.reason))
    return done


def _pool_geometry(node: Node, graph: Graph):
    """(spatial input shape, kernel, strides) of a pool without padding or dilation, else None."""
    info = graph.tensors.get(node.inputs[0])
    if info is None or not info.is_static or len(info.shape) < 3:
        return None
    spatial = tuple(info.shape[2:])
    kernel = tuple(node.attrs.get("kernel_shape", ()))
    if len(kernel) != len(spatial):
        return None
    if any(node.attrs.get("pads", [0] * 2 * len(kernel))) or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return None
    if any(d != 1 for d in node.attrs.get("dilations", [1] * len(kernel))):
        return None
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        return None  # the Indices output has no rewrite
    strides = tuple(node.attrs.get("strides", [1] * len(kernel)))
    return spatial, kernel, strides


def _global_pool(node: Node, graph: Graph, target: TargetSpec):
    geometry = _pool_geometry(node, graph)
    if geometry is None:
        return None
    spatial, kernel, _ = geometry
    if kernel != spatial:
        return None
    global_op, reduce_op = _POOLS[node.op_type]
    if global_op in target.supported_ops:
        replacement = [Node(node.name, global_op, [node.inputs[0]], [node.outputs[0]], {},
                            source_ops=list(node.source_ops), source_location=node.source_location)]
    else:
        axes = list(range(2, 2 + len(spatial)))
        replacement = [Node(node.name, reduce_op, [node.inputs[0]], [node.outputs[0]], {"axes": axes, "keepdims": 1},
                            source_ops=list(node.source_ops), source_location=node.source_location)]
        replacement = _axes_as_input(replacement[0], graph, axes)
    return replacement, [n for n in replacement[0].inputs[1:] if graph.is_constant(n)]


def _axes_as_input(node: Node, graph: Graph, axes: list[int]) -> list[Node]:
    """ReduceMean and ReduceMax take axes as an attribute up to opset 17, as an input from 18."""
    if graph.opset < 18:
        return [node]
    name = graph.add_constant(graph.unique_name(f"{node.name}_axes"), np.asarray(axes, dtype=np.int64))
    node.inputs.append(name)
    node.attrs.pop("axes")
    return [node]


def _split_pool(node: Node, graph: Graph, target: TargetSpec):
    geometry = _pool_geometry(node, graph)
    if geometry is None or node.attrs.get("ceil_mode", 0):
        return None
    _, kernel, strides = geometry
    # Pooling is separable by axis, so each axis gets its own list of (window, stride) steps:
    # a side within the limit pools once, a big side with stride == window in factors.
    per_axis = []
    for k, s in zip(kernel, strides):
        if k <= target.max_kernel_size:
            per_axis.append([(k, s)])
            continue
        factors = _factor(k, min(target.max_kernel_size, target.max_stride)) if s == k else None
        if factors is None:
            return None  # overlapping windows or a prime side: no exact split into smaller pools
        per_axis.append([(f, f) for f in factors])
    steps = max(len(a) for a in per_axis)
    per_axis = [a + [(1, 1)] * (steps - len(a)) for a in per_axis]
    kept = {k: v for k, v in node.attrs.items() if k in ("count_include_pad", "storage_order")}
    nodes, current = [], node.inputs[0]
    for i in range(steps):
        last = i == steps - 1
        out = node.outputs[0] if last else graph.unique_name(f"{node.name}_split{i}")
        attrs = dict(kept, kernel_shape=[a[i][0] for a in per_axis], strides=[a[i][1] for a in per_axis])
        nodes.append(Node(node.name if last else out, node.op_type, [current], [out], attrs,
                          source_ops=list(node.source_ops), source_location=node.source_location))
        current = out
    return nodes, []


def _factor(k: int, limit: int) -> list[int] | None:
    """k as a product of factors each at most `limit`, fewest first (largest factor first)."""
    factors = []
    while k > limit:
        divisor = next((d for d in range(limit, 1, -1) if k % d == 0), None)
        if divisor is None:
            return None
        factors.append(divisor)
        k //= divisor
    return factors + ([k] if k > 1 else [])


def _all_supported(new_nodes: list[Node], added_constants: list[str], old: Node, graph: Graph,
                   target: TargetSpec) -> bool:
    """Put the rewrite in place if the NPU runs every new op and every output keeps its shape;
    else leave the graph as it was (the rewrite's constants removed too)."""
    output_infos = {o: graph.tensors[o] for o in old.outputs if o and o in graph.tensors}
    graph.remove_node(old.name)
    added: list[Node] = []
    try:
        for new in new_nodes:
            graph.add_node(new)
            added.append(new)
            infos = infer_node(graph, new)
            for out, info in zip(new.outputs, infos):
                graph.tensors[out] = info
        ok = all(graph.producer(o) is not None and graph.tensors[o].shape == info.shape
                 for o, info in output_infos.items() if graph.consumers(o) or o in graph.outputs) and all(
            check_npu_support(n, graph, target).supported for n in new_nodes)
    except ShapeInferenceError:
        ok = False
    if ok:
        return True
    for new in reversed(added):
        graph.remove_node(new.name)
        for out in new.outputs:
            if out not in output_infos:
                graph.tensors.pop(out, None)
    for name in added_constants:
        if not graph.consumers(name):
            graph.remove_constant(name)
    graph.add_node(old)
    graph.tensors.update(output_infos)
    return False


_REWRITES = {
    "AveragePool": [_global_pool, _split_pool],
    "MaxPool": [_global_pool, _split_pool],
    "LSTM": [lambda node, graph, target: lstm_as_cells(node, graph)],
    "Conv": [framed_conv],
}
