"""Transpose sinking: a Transpose moves below the layout-agnostic ops it feeds until it meets its inverse.

    Transpose(x, p) -> Relu -> Add(., Transpose(y, p)) -> Concat(axis a)
        => Relu(x) -> Add(., y) -> Concat(axis p[a]) -> Transpose(., p)

TensorFlow graphs wrap every NHWC op in NHWC<->NCHW transposes; once the one after a Conv
sinks through the bias Add and the activation it meets the one before the next Conv, and
`collapse_transposes` removes both. A Transpose sinks only through an op whose every other
input is a constant (permuted here), a one-element tensor, or a Transpose by the same
permutation, so no sink ever adds a Transpose. Reductions that drop the permuted axes end
the Transpose altogether.
"""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph, Node, TensorInfo

from .collapse_chains import collapse_transpose, permutation
from .manager import PassContext, graph_pass
from .rewriting import (
    add_constant, constant, info, producer, reduce_axes, replace_nodes, rewrite_each, static_shape,
)

ELEMENTWISE = {
    "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Softplus", "Softsign", "Abs", "Neg", "Exp", "Log", "Sqrt", "Erf", "Reciprocal", "Floor",
    "Ceil", "Round", "Cast", "Sign", "Not", "Identity", "ai.rblnc::SiLU", "ai.rblnc::Gelu",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean", "Where", "And",
    "Or", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
}
_AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax"}
_REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceL1",
               "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare"}
# Ops that take their axes as an input (not an attribute) at opset 13-17.
_AXES_INPUT_OPS = {"ReduceSum"}


@graph_pass("sink_transposes")
def sink_transposes(graph: Graph, ctx: PassContext) -> int:
    """Move Transposes below layout-agnostic ops, cancelling them where they meet their inverse."""
    return rewrite_each(graph, ctx, _sink_all_the_way, op_types=["Transpose"])


def _sink_all_the_way(graph: Graph, node: Node, ctx: PassContext) -> bool:
    moved = False
    current: Node | None = node
    while current is not None:
        consumers = graph.consumers(current.outputs[0])
        if current.outputs[0] in graph.outputs or len(consumers) != 1:
            break
        if consumers[0].op_type == "Transpose":
            return collapse_transpose(graph, consumers[0], ctx) or moved
        sunk, current = _sink_once(graph, current, consumers[0])
        moved = moved or sunk
    return moved


def _sink_once(graph: Graph, transpose: Node, op: Node) -> tuple[bool, Node | None]:
    """Rewrite `transpose` -> `op` as `op` -> Transpose. Returns whether it did, and the moved
    Transpose (None when the op's output needs no Transpose any more)."""
    perm = permutation(graph, transpose)
    out = op.outputs[0]
    out_shape = static_shape(graph, out)
    if perm is None or out_shape is None or len(op.outputs) != 1 or op.implicit_inputs:
        return False, None
    rank = len(perm)
    attrs = dict(op.attrs)
    new_axes: list[int] | None = None
    out_perm = perm
    kind = op.qualified_type
    if kind in ELEMENTWISE or kind == "Concat":
        if len(out_shape) != rank:
            return False, None
        if kind == "Concat":
            attrs["axis"] = perm[attrs["axis"] % rank]
    elif kind in _AXIS_OPS and graph.opset >= 13:
        attrs["axis"] = perm[attrs.get("axis", -1) % rank]
    elif kind in _REDUCE_OPS:
        axes = reduce_axes(graph, op, rank)
        if axes is None:
            return False, None
        new_axes = sorted(perm[a] for a in axes)
        if kind not in _AXES_INPUT_OPS:
            attrs["axes"] = new_axes
        if not op.attrs.get("keepdims", 1):
            kept = [j for j in range(rank) if j not in new_axes]
            out_perm = [kept.index(perm[i]) for i in range(rank) if i not in axes]
    else:
        return False, None
    plan = _plan_inputs(graph, op, transpose, perm)
    if plan is None:
        return False, None
    inputs = [name if value is None else add_constant(graph, name, value) for name, value in plan]
    if new_axes is not None and kind in _AXES_INPUT_OPS:
        inputs[1] = add_constant(graph, f"{op.name}_axes", np.asarray(new_axes, dtype=np.int64))
    identity = out_perm == list(range(len(out_perm)))
    result = out if identity else graph.unique_name(f"{out}_unpermuted")
    moved_op = Node(op.name, op.op_type, inputs, [result], attrs, op.domain,
                    source_ops=list(op.source_ops), source_location=op.source_location)
    new_nodes = [moved_op]
    new_infos = {}
    if not identity:
        inverse = np.argsort(out_perm)
        new_infos[result] = TensorInfo(info(graph, out).dtype, tuple(out_shape[i] for i in inverse))
        new_nodes.append(Node(transpose.name, "Transpose", [result], [out], {"perm": list(out_perm)},
                              source_ops=list(transpose.source_ops),
                              source_location=transpose.source_location))
    replace_nodes(graph, [transpose, op], new_nodes, new_infos, inherit_sources=False)
    return True, (None if identity else new_nodes[-1])


def _plan_inputs(graph: Graph, op: Node, transpose: Node, perm: list[int]) -> list[tuple[str, np.ndarray | None]] | None:
    """The op's inputs as seen before the permutation: (name, None) to read a tensor, or
    (base name, array) for a constant to create. None when an input cannot be un-permuted."""
    rank = len(perm)
    inverse = list(np.argsort(perm))
    tensor = transpose.outputs[0]
    plan: list[tuple[str, np.ndarray | None]] = []
    for position, name in enumerate(op.inputs):
        if name == tensor:
            plan.append((transpose.inputs[0], None))
            continue
        shape = static_shape(graph, name)
        value = constant(graph, name)
        if not name or (op.op_type in _REDUCE_OPS and position > 0):
            plan.append((name, None))  # omitted, or reduction axes (replaced by the caller)
        elif shape is not None and int(np.prod(shape, dtype=np.int64)) == 1 and len(shape) <= rank:
            plan.append((name, None))  # one element broadcasts the same in any layout
        elif value is not None and value.ndim <= rank:
            full = value.reshape((1,) * (rank - value.ndim) + value.shape)
            plan.append((f"{name}_permuted", np.ascontiguousarray(full.transpose(inverse))))
        else:
            other = producer(graph, name, "Transpose")
            if other is None or permutation(graph, other) != perm:
                return None
            plan.append((other.inputs[0], None))
    return plan
