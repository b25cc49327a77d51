"""MatMul + Add fusion: a matrix product followed by a bias add becomes one op.

    Add(MatMul(A, B), C), A and B 2-D            => Gemm(A, B, C)
    Add(MatMul(A, B), c), otherwise, c constant  => ai.rblnc::FusedMatMul(A, B, c)

Fires only when the product is read by the Add alone and the Add does not broadcast the
product to a bigger shape (Gemm's C may broadcast, the product may not).
"""

from __future__ import annotations

from rblnc.ir import RBLNC_DOMAIN, Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import constant, fused_node, info, only_consumer, other_input, rewrite_each, static_shape


@graph_pass("fuse_matmul_add")
def fuse_matmul_add(graph: Graph, ctx: PassContext) -> int:
    """Rewrite 2-D MatMul + Add as Gemm."""
    return rewrite_each(graph, ctx, _to_gemm, op_types=["MatMul"])


@graph_pass("fuse_matmul_bias")
def fuse_matmul_bias(graph: Graph, ctx: PassContext) -> int:
    """Fuse a constant bias Add into a (batched) MatMul as ai.rblnc::FusedMatMul."""
    return rewrite_each(graph, ctx, _to_fused_matmul, op_types=["MatMul"])


def _bias_add(graph: Graph, matmul: Node) -> tuple[Node, str] | None:
    add = only_consumer(graph, matmul.outputs[0])
    if add is None or add.op_type != "Add" or add.domain:
        return None
    product = static_shape(graph, matmul.outputs[0])
    if product is None or static_shape(graph, add.outputs[0]) != product:
        return None
    bias = other_input(add, matmul.outputs[0])
    if info(graph, bias) is None or info(graph, bias).dtype != info(graph, matmul.outputs[0]).dtype:
        return None
    return add, bias


def _to_gemm(graph: Graph, matmul: Node, ctx: PassContext) -> bool:
    if any(len(static_shape(graph, i) or ()) != 2 for i in matmul.inputs):
        return False
    found = _bias_add(graph, matmul)
    if found is None:
        return False
    add, bias = found
    fused_node(graph, matmul, "Gemm", [matmul.inputs[0], matmul.inputs[1], bias], {}, [matmul, add], domain="")
    return True


def _to_fused_matmul(graph: Graph, matmul: Node, ctx: PassContext) -> bool:
    found = _bias_add(graph, matmul)
    if found is None:
        return False
    add, bias = found
    if constant(graph, bias) is None:
        return False  # a computed addend is a residual, not a bias
    fused_node(graph, matmul, "FusedMatMul", [matmul.inputs[0], matmul.inputs[1], bias],
               {"activation": "", "activation_params": []}, [matmul, add], domain=RBLNC_DOMAIN)
    return True
