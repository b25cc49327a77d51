"""Common sub-expression elimination: equal small constants and equal ops computed twice are merged.

    c1 = [1, 2], c2 = [1, 2]               -> one constant
    a = Relu(x); b = Relu(x); f(a, b)      -> a = Relu(x); f(a, a)
"""

from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from rblnc.ir import Graph, Node

from .manager import PassContext, graph_pass

# Constants up to this many elements are compared by value (shape tensors, scalars, small
# biases); hashing every large weight at every run would cost more than it could save.
_MAX_COMPARED_ELEMENTS = 4096
# Ops whose result is not a function of their inputs, or that carry subgraphs.
_NEVER_MERGE = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan",
}


@graph_pass("eliminate_common_subexpressions")
def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> int:
    """Merge equal small constants, then nodes computing the same op on the same inputs."""
    return _merge_constants(graph) + _merge_nodes(graph)


def _merge_constants(graph: Graph) -> int:
    seen: dict[Hashable, str] = {}
    merged = 0
    protected = set(graph.outputs) | set(graph.inputs)
    for name, value in list(graph.constants.items()):
        if value.size > _MAX_COMPARED_ELEMENTS or value.dtype == object or name in protected:
            continue
        key = (value.dtype.str, value.shape, value.tobytes())
        keep = seen.setdefault(key, name)
        if keep != name:
            graph.replace_all_uses(name, keep)
            graph.remove_constant(name)
            merged += 1
    return merged


def _merge_nodes(graph: Graph) -> int:
    seen: dict[Hashable, Node] = {}
    merged = 0
    for node in graph.topological_order():
        if node.op_type in _NEVER_MERGE or node.implicit_inputs:
            continue
        key = (node.domain, node.op_type, tuple(node.inputs), len(node.outputs),
               tuple(sorted((k, _hashable(v)) for k, v in node.attrs.items())))
        keep = seen.setdefault(key, node)
        if keep is node or any(o in graph.outputs for o in node.outputs if o):
            continue  # a graph output keeps its own producer, so its name stays
        if any(o and not kept for o, kept in zip(node.outputs, keep.outputs)):
            continue  # the kept node does not produce an optional output this one does
        for out, kept_out in zip(node.outputs, keep.outputs):
            if out:
                graph.replace_all_uses(out, kept_out)
        keep.source_ops = list(dict.fromkeys(keep.source_ops + node.source_ops))
        graph.remove_node(node.name)
        merged += 1
    return merged


def _hashable(value: Any) -> Hashable:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "SerializeToString"):  # a subgraph, tensor or type attribute (protobuf)
        return (type(value).__name__, value.SerializeToString(deterministic=True))
    return value
