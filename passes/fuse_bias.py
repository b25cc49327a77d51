"""Bias fusion: a per-channel constant added after a Conv, ConvTranspose or Gemm becomes its bias.

    Add(Conv(x, W, [b]), c)   => Conv(x, W, b + c)     c varies along the channel axis only
    Sub(Conv(x, W, [b]), c)   => Conv(x, W, b - c)
    Add(Gemm(A, B, [C]), c)   => Gemm(A, B, beta C + c, beta=1)

TensorFlow's BiasAdd and exporters that keep the bias apart produce these. Fires only when
the op's output is read by the Add alone and the Add does not change its shape.
"""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph, Node

from .fold_batchnorm import per_channel as channel_vector
from .manager import PassContext, graph_pass
from .rewriting import add_constant, constant, fused_node, only_consumer, rewrite_each, static_shape


@graph_pass("fuse_bias")
def fuse_bias(graph: Graph, ctx: PassContext) -> int:
    """Fold a constant Add/Sub after Conv/ConvTranspose/Gemm into the op's bias."""
    return rewrite_each(graph, ctx, _fuse, op_types=["Conv", "ConvTranspose", "Gemm"])


def _fuse(graph: Graph, op: Node, ctx: PassContext) -> bool:
    add = only_consumer(graph, op.outputs[0])
    if add is None or add.domain or add.op_type not in ("Add", "Sub"):
        return False
    if add.op_type == "Sub" and add.inputs[0] != op.outputs[0]:
        return False  # c - conv negates the product too
    shape = static_shape(graph, op.outputs[0])
    addend_name = add.inputs[1] if add.inputs[0] == op.outputs[0] else add.inputs[0]
    addend = constant(graph, addend_name)
    if shape is None or addend is None or static_shape(graph, add.outputs[0]) != shape:
        return False
    bias_name = op.inputs[2] if len(op.inputs) > 2 else ""
    bias = constant(graph, bias_name) if bias_name else None
    if bias_name and bias is None:
        return False
    sign = -1.0 if add.op_type == "Sub" else 1.0
    if op.op_type == "Gemm":
        beta = float(op.attrs.get("beta", 1.0))
        new_bias = sign * addend.astype(np.float64) + (0 if bias is None else beta * bias.astype(np.float64))
        attrs = {k: v for k, v in op.attrs.items() if k != "beta"}
    else:
        per_channel = channel_vector(addend, shape)
        if per_channel is None:
            ctx.note(add.name, f"not fused into {op.name}: the addend varies along more than the channel axis")
            return False
        new_bias = sign * per_channel + (0 if bias is None else bias.astype(np.float64))
        attrs = dict(op.attrs)
    dtype = constant(graph, op.inputs[1]).dtype if constant(graph, op.inputs[1]) is not None else addend.dtype
    inputs = [op.inputs[0], op.inputs[1], add_constant(graph, f"{op.name}_bias", np.asarray(new_bias, dtype))]
    fused_node(graph, op, op.op_type, inputs, attrs, [op, add], domain=op.domain)
    return True
