"""Recognition of decomposed LayerNorm and Softmax: the reductions and arithmetic become one op each.

    d = x - ReduceMean(x); y = d / Sqrt(ReduceMean(d^2) + eps) [* gamma] [+ beta]
        => LayerNormalization(x, gamma, beta, axis, epsilon)       (trailing axes only)
    e = Exp(x - ReduceMax(x, a)); y = e / ReduceSum(e, a)           (or without the max)
        => Softmax(x, axis=a)

TensorFlow/Keras graphs and older exporters emit these forms. A pattern is replaced only when
its intermediate values are read by the pattern alone.
"""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import (
    add_constant, constant, fused_node, info, internal, only_consumer, other_input, producer,
    reduce_axes, rewrite_each, scalar, static_shape,
)


@graph_pass("recognize_layer_norm")
def recognize_layer_norm(graph: Graph, ctx: PassContext) -> int:
    """Replace a decomposed layer normalisation by LayerNormalization."""
    return rewrite_each(graph, ctx, _layer_norm, op_types=["ReduceMean"])


def _layer_norm(graph: Graph, mean: Node, ctx: PassContext) -> bool:
    x = mean.inputs[0]
    shape = static_shape(graph, x)
    if shape is None or not mean.attrs.get("keepdims", 1) or info(graph, x).dtype.kind != "f":
        return False
    axes = reduce_axes(graph, mean, len(shape))
    if axes is None or axes != list(range(axes[0], len(shape))):
        return False  # LayerNormalization normalises the trailing axes
    centre = only_consumer(graph, mean.outputs[0])
    if centre is None or centre.op_type != "Sub" or centre.inputs != [x, mean.outputs[0]]:
        return False
    d = centre.outputs[0]
    square = next((c for c in graph.consumers(d) if _is_square(graph, c, d)), None)
    variance = only_consumer(graph, square.outputs[0]) if square is not None else None
    if variance is None or variance.op_type != "ReduceMean" or reduce_axes(graph, variance, len(shape)) != axes \
            or not variance.attrs.get("keepdims", 1):
        return False
    add_eps = only_consumer(graph, variance.outputs[0])
    epsilon = scalar(graph, other_input(add_eps, variance.outputs[0])) if add_eps is not None and add_eps.op_type == "Add" else None
    root = only_consumer(graph, add_eps.outputs[0]) if epsilon is not None else None
    if root is None or root.op_type != "Sqrt":
        return False
    nodes = [mean, centre, square, variance, add_eps, root]
    divide = only_consumer(graph, root.outputs[0])
    if divide is not None and divide.op_type == "Div" and divide.inputs == [d, root.outputs[0]]:
        nodes.append(divide)
    elif divide is not None and divide.op_type == "Reciprocal":
        times = only_consumer(graph, divide.outputs[0])
        if times is None or times.op_type != "Mul" or other_input(times, divide.outputs[0]) != d:
            return False
        nodes += [divide, times]
    else:
        return False
    normalized_shape = shape[axes[0]:]
    scale, bias = np.ones(normalized_shape, info(graph, x).dtype), None
    gamma_mul = only_consumer(graph, nodes[-1].outputs[0])
    gamma = _affine_operand(graph, gamma_mul, nodes[-1], "Mul", normalized_shape)
    if gamma is not None:
        scale = gamma
        nodes.append(gamma_mul)
    beta_add = only_consumer(graph, nodes[-1].outputs[0])
    beta = _affine_operand(graph, beta_add, nodes[-1], "Add", normalized_shape)
    if beta is not None:
        bias = beta
        nodes.append(beta_add)
    if not internal(graph, nodes, nodes[-1]):
        return False
    dtype = info(graph, x).dtype
    inputs = [x, add_constant(graph, f"{mean.name}_scale", scale.astype(dtype))]
    if bias is not None:
        inputs.append(add_constant(graph, f"{mean.name}_bias", bias.astype(dtype)))
    fused_node(graph, mean, "LayerNormalization", inputs, {"axis": axes[0], "epsilon": float(epsilon)},
               nodes, domain="")
    return True


def _is_square(graph: Graph, node: Node, d: str) -> bool:
    if node.op_type == "Pow":
        return node.inputs[0] == d and scalar(graph, node.inputs[1]) == 2.0
    return node.op_type == "Mul" and node.inputs == [d, d]


def _affine_operand(graph: Graph, node: Node | None, previous: Node, op_type: str,
                    normalized_shape: tuple[int, ...]) -> np.ndarray | None:
    """The constant of a `op_type` node after `previous`, broadcast to the normalised shape,
    when it varies along the normalised axes only."""
    if node is None or node.op_type != op_type or node.domain:
        return None
    value = constant(graph, other_input(node, previous.outputs[0]))
    if value is None:
        return None
    squeezed = value.reshape(value.shape[next((i for i, d in enumerate(value.shape) if d != 1), value.ndim):])
    if squeezed.ndim > len(normalized_shape):
        return None
    try:
        if np.broadcast_shapes(squeezed.shape, normalized_shape) != tuple(normalized_shape):
            return None
    except ValueError:
        return None
    if static_shape(graph, node.outputs[0]) != static_shape(graph, previous.outputs[0]):
        return None
    return np.broadcast_to(squeezed, normalized_shape).copy()


@graph_pass("recognize_softmax")
def recognize_softmax(graph: Graph, ctx: PassContext) -> int:
    """Replace Exp(x - max) / ReduceSum(Exp(x - max)) by Softmax."""
    return rewrite_each(graph, ctx, _softmax, op_types=["Exp"])


def _softmax(graph: Graph, exp: Node, ctx: PassContext) -> bool:
    shape = static_shape(graph, exp.inputs[0])
    if shape is None:
        return False
    nodes: list[Node] = []
    x, axis = exp.inputs[0], None
    shift = producer(graph, exp.inputs[0], "Sub")
    peak = producer(graph, shift.inputs[1], "ReduceMax") if shift is not None else None
    if peak is not None and peak.inputs[0] == shift.inputs[0] and peak.attrs.get("keepdims", 1):
        axes = reduce_axes(graph, peak, len(shape))
        if axes is None or len(axes) != 1:
            return False
        x, axis = shift.inputs[0], axes[0]
        nodes += [peak, shift]
    readers = graph.consumers(exp.outputs[0])
    total = next((r for r in readers if r.op_type == "ReduceSum"), None)
    divide = next((r for r in readers if r.op_type == "Div"), None)
    if total is None or divide is None or len(readers) != 2 or not total.attrs.get("keepdims", 1):
        return False
    sum_axes = reduce_axes(graph, total, len(shape))
    if sum_axes is None or len(sum_axes) != 1 or (axis is not None and sum_axes[0] != axis):
        return False
    if divide.inputs != [exp.outputs[0], total.outputs[0]]:
        return False
    nodes += [exp, total, divide]
    if not internal(graph, nodes, divide):
        return False
    fused_node(graph, nodes[0], "Softmax", [x], {"axis": sum_axes[0]}, nodes, domain="")
    return True
