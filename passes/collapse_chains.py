"""Reshape and Transpose chain collapse: a chain of layout ops becomes one op (or none).

    Reshape/Flatten/Squeeze/Unsqueeze(Reshape/Flatten/Squeeze/Unsqueeze(x)) -> Reshape(x, final shape)
    Squeeze/Unsqueeze(x) with static shapes                                 -> Reshape(x, shape)
    Transpose(Transpose(x, p1), p2)                                         -> Transpose(x, p1[p2])
                                                                           (removed when that is the identity)

The outer op is rewritten to read the chain's input; the inner one stays for its other
readers and is otherwise left to dead-code elimination, so no rewrite adds an op.
"""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import add_constant, bypass, producer, replace_nodes, rewrite_each, static_shape

RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@graph_pass("collapse_reshapes")
def collapse_reshapes(graph: Graph, ctx: PassContext) -> int:
    """Turn chains of Reshape/Flatten/Squeeze/Unsqueeze (and lone Squeeze/Unsqueeze) into one Reshape."""
    return rewrite_each(graph, ctx, _collapse_reshape, op_types=RESHAPE_LIKE)


def _collapse_reshape(graph: Graph, node: Node, ctx: PassContext) -> bool:
    inner = producer(graph, node.inputs[0], *RESHAPE_LIKE)
    if inner is None and node.op_type in ("Reshape", "Flatten"):
        return False  # already a single op the NPU takes
    source = inner.inputs[0] if inner is not None else node.inputs[0]
    shape = static_shape(graph, node.outputs[0])
    if shape is None or 0 in shape or static_shape(graph, source) is None:
        return False  # (a 0 in Reshape's shape would mean "copy this dimension")
    target = add_constant(graph, f"{node.name}_shape", np.asarray(shape, dtype=np.int64))
    replace_nodes(graph, [node], [Node(node.name, "Reshape", [source, target], list(node.outputs),
                                       source_ops=_sources(inner, node))],
                  inherit_sources=False)
    return True


@graph_pass("collapse_transposes")
def collapse_transposes(graph: Graph, ctx: PassContext) -> int:
    """Compose Transpose(Transpose(x)) into one Transpose, or remove both when they cancel."""
    return rewrite_each(graph, ctx, collapse_transpose, op_types=["Transpose"])


def collapse_transpose(graph: Graph, node: Node, ctx: PassContext) -> bool:
    inner = producer(graph, node.inputs[0], "Transpose")
    if inner is None:
        return False
    first, second = permutation(graph, inner), permutation(graph, node)
    if first is None or second is None:
        return False
    composed = [first[i] for i in second]
    source = inner.inputs[0]
    if composed == list(range(len(composed))) and bypass(graph, node, source):
        return True
    replace_nodes(graph, [node], [Node(node.name, "Transpose", [source], list(node.outputs),
                                       {"perm": composed}, source_ops=_sources(inner, node))],
                  inherit_sources=False)
    return True


def permutation(graph: Graph, node: Node) -> list[int] | None:
    """A Transpose's perm, resolving the default (reverse the axes) from the input's rank."""
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    shape = static_shape(graph, node.inputs[0])
    return None if shape is None else list(reversed(range(len(shape))))


def _sources(inner: Node | None, outer: Node) -> list[str]:
    ops = (inner.source_ops if inner is not None else []) + outer.source_ops
    return list(dict.fromkeys(ops))
