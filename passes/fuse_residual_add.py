"""Residual Add fusion: a Conv whose output is added to another tensor takes the Add as its epilogue.

    Add(Conv(x, W, b), z)           => ai.rblnc::FusedConv(x, W, b, z)       (z: the skip branch)
    Relu(FusedConv(x, W, b, z))     => FusedConv(..., activation="Relu")      (by fuse_activation)
    Add(a, b) -> activation, no Conv to take it
                                    => ai.rblnc::FusedElementwise(a, b, ops=[Add, activation])

This is why a ResNet block ends in one command: the last Conv adds the identity branch and
applies the Relu. The Add goes into a Conv only when the Conv's output is read by the Add
alone, the Conv has no activation yet (the Add comes before it), and the Add keeps its shape.
"""

from __future__ import annotations

from rblnc.ir import RBLNC_DOMAIN, Graph, Node
from rblnc.ir.fused_ops import activation_of

from .fused_forms import fused_form, has_epilogue
from .manager import PassContext, graph_pass
from .rewriting import fused_node, info, only_consumer, other_input, producer, rewrite_each, static_shape


@graph_pass("fuse_residual_add")
def fuse_residual_add(graph: Graph, ctx: PassContext) -> int:
    """Fuse a residual Add into the Conv producing one operand, else Add + activation into one op."""
    return rewrite_each(graph, ctx, _fuse, op_types=["Add"])


def _fuse(graph: Graph, add: Node, ctx: PassContext) -> bool:
    shape = static_shape(graph, add.outputs[0])
    if shape is None or len(add.inputs) != 2:
        return False
    for operand in add.inputs:
        conv = producer(graph, operand, "Conv", f"{RBLNC_DOMAIN}::FusedConv")
        if conv is None or only_consumer(graph, operand) is not add:
            continue
        if has_epilogue(conv) or (len(conv.inputs) > 3 and conv.inputs[3]):
            continue
        skip = other_input(add, operand)
        if static_shape(graph, operand) != shape or info(graph, skip).dtype != info(graph, operand).dtype:
            continue
        form = fused_form(graph, conv)
        if form is None:
            continue
        op_type, inputs, attrs = form
        inputs = (inputs + ["", ""])[:3] + [skip]
        fused_node(graph, conv, op_type, inputs, attrs, [conv, add], domain=RBLNC_DOMAIN)
        return True
    return _fuse_with_activation(graph, add, ctx)


def _fuse_with_activation(graph: Graph, add: Node, ctx: PassContext) -> bool:
    activation = only_consumer(graph, add.outputs[0])
    found = activation_of(activation, graph) if activation is not None else None
    if found is None or any(info(graph, i).dtype != info(graph, add.outputs[0]).dtype for i in add.inputs):
        return False
    name, params = found
    attrs = {"ops": ["Add", name], "operands": [1, -1], "swapped": [0, 0],
             "params": [float(p) for p in params]}
    fused_node(graph, add, "FusedElementwise", list(add.inputs), attrs, [add, activation], domain=RBLNC_DOMAIN)
    return True
