"""Identity and no-op removal: ops whose output equals their input are bypassed.

    Identity(x), Dropout(x) (inference), Cast(x) to x's type      -> x
    Reshape/Flatten/Squeeze/Unsqueeze/Expand(x) to x's own shape  -> x
    Transpose(x) by the identity permutation, Pad(x) by zeros     -> x
    Slice(x) of all of x, Concat/Sum/Max/Min/Mean of x alone      -> x
    x + 0, x - 0, x * 1, x / 1, x ^ 1 (constant, not broadcasting) -> x
"""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import bypass, constant, info, rewrite_each, static_shape

_SAME_SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"}
_SINGLE_INPUT_OPS = {"Concat", "Sum", "Max", "Min", "Mean"}
# op -> (input positions that may hold the neutral constant, its value)
_NEUTRAL_OPERANDS = {"Add": ((0, 1), 0.0), "Sub": ((1,), 0.0), "Mul": ((0, 1), 1.0),
                     "Div": ((1,), 1.0), "Pow": ((1,), 1.0)}


@graph_pass("remove_identities")
def remove_identities(graph: Graph, ctx: PassContext) -> int:
    """Bypass ops whose output equals their input (Identity, Dropout, no-op Cast/Reshape/Transpose...)."""
    return rewrite_each(graph, ctx, _remove_if_identity)


def _remove_if_identity(graph: Graph, node: Node, ctx: PassContext) -> bool:
    if node.domain:
        return False
    source = _identity_source(graph, node)
    if source is None:
        return False
    out = info(graph, node.outputs[0])
    src = info(graph, source)
    if out is None or src is None or out.dtype != src.dtype or out.shape != src.shape:
        return False  # never change a value's type, even where the op would have been a no-op
    if bypass(graph, node, source):
        return True
    ctx.note(node.name, "no-op kept: it copies a graph input or constant into a graph output")
    return False


def _identity_source(graph: Graph, node: Node) -> str | None:
    """The input `node` passes through unchanged, or None."""
    op = node.op_type
    first = node.inputs[0] if node.inputs else ""
    if not first:
        return None
    if op == "Identity":
        return first
    if op == "Dropout":
        training = node.inputs[2] if len(node.inputs) > 2 else ""
        if training and not (constant(graph, training) is not None and not constant(graph, training).any()):
            return None  # training mode (or unknown) drops values
        return first
    if op == "Cast":
        src = info(graph, first)
        return first if src is not None and graph.tensors.get(node.outputs[0]) == src else None
    if op in _SAME_SHAPE_OPS:
        shape = static_shape(graph, first)
        return first if shape is not None and shape == static_shape(graph, node.outputs[0]) else None
    if op == "Transpose":
        perm = node.attrs.get("perm")
        shape = static_shape(graph, first)
        if perm is None:
            perm = list(reversed(range(len(shape)))) if shape is not None else None
        return first if perm is not None and list(perm) == list(range(len(perm))) else None
    if op == "Pad":
        pads = constant(graph, node.inputs[1]) if len(node.inputs) > 1 else None
        return first if pads is not None and not pads.any() else None
    if op == "Slice":
        steps = constant(graph, node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else np.ones(1)
        shape = static_shape(graph, first)
        if steps is None or not (steps == 1).all() or shape is None:
            return None
        return first if shape == static_shape(graph, node.outputs[0]) else None
    if op in _SINGLE_INPUT_OPS:
        live = [i for i in node.inputs if i]
        return live[0] if len(live) == 1 else None
    if op in _NEUTRAL_OPERANDS and len(node.inputs) == 2:
        positions, neutral = _NEUTRAL_OPERANDS[op]
        for position in positions:
            value = constant(graph, node.inputs[position])
            if value is not None and value.size and value.dtype.kind == "f" and (value == neutral).all():
                return node.inputs[1 - position]
    return None
