"""Activation fusion: Conv / Gemm / MatMul (or their fused forms) followed by an activation become one op.

    Relu(Conv(x, W, b))            => ai.rblnc::FusedConv(x, W, b, activation="Relu")
    Clip(Gemm(A, B, C), 0, 6)      => ai.rblnc::FusedGemm(A, B, C, activation="Clip", params=[0, 6])
    SiLU(FusedMatMul(A, B, c))     => ai.rblnc::FusedMatMul(A, B, c, activation="SiLU")

Activations: Relu, Clip (constant bounds: Relu6), Sigmoid, Tanh, SiLU, HardSwish,
HardSigmoid, GELU (erf and tanh forms), LeakyRelu. Does not fire when the pre-activation
value is read by anything else, or when the op already has an activation.
"""

from __future__ import annotations

from rblnc.ir import RBLNC_DOMAIN, Graph, Node
from rblnc.ir.fused_ops import activation_of

from .fused_forms import FUSED_FORM, FUSED_TYPES, fused_form, has_epilogue
from .manager import PassContext, graph_pass
from .rewriting import fused_node, only_consumer, producer, rewrite_each

_PRODUCERS = tuple(FUSED_FORM) + tuple(FUSED_TYPES)


@graph_pass("fuse_activation")
def fuse_activation(graph: Graph, ctx: PassContext) -> int:
    """Fuse an activation into the Conv/Gemm/MatMul (or fused op) that feeds it."""
    return rewrite_each(graph, ctx, _fuse)


def _fuse(graph: Graph, activation: Node, ctx: PassContext) -> bool:
    found = activation_of(activation, graph)
    if found is None:
        return False
    source = producer(graph, activation.inputs[0], *_PRODUCERS)
    if source is None:
        return False
    if only_consumer(graph, source.outputs[0]) is not activation:
        readers = [n.name for n in graph.consumers(source.outputs[0]) if n is not activation]
        ctx.note(activation.name, f"not fused into {source.name}: its input is also read by "
                                  f"{', '.join(readers) or 'the graph outputs'}")
        return False
    if has_epilogue(source):
        return False
    form = fused_form(graph, source)
    if form is None:
        return False
    op_type, inputs, attrs = form
    name, params = found
    attrs.update(activation=name, activation_params=[float(p) for p in params])
    fused_node(graph, source, op_type, inputs, attrs, [source, activation], domain=RBLNC_DOMAIN)
    return True
