"""Elementwise chain fusion: a chain of elementwise ops, each read only by the next, becomes one op.

    Relu(Add(Mul(x, s), b))  =>  ai.rblnc::FusedElementwise(x, s, b, ops=[Mul, Add, Relu])

Steps are unary ops (activations, Exp, Sqrt, ...) and binary ops (Add, Sub, Mul, Div, Max,
Min, Pow) whose other operand is any tensor of the chain's type. Each fusion joins two
neighbours (a FusedElementwise counts as one), so long chains join over repeated walks; one
walk already joins every pair it meets in order.
"""

from __future__ import annotations

from rblnc.ir import RBLNC_DOMAIN, Graph, Node
from rblnc.ir.fused_ops import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY, activation_of, elementwise_steps

from .manager import PassContext, graph_pass
from .rewriting import fused_node, info, only_consumer, rewrite_each

_UNARY_STANDARD = {op for op in ELEMENTWISE_UNARY if op not in ("SiLU", "Gelu", "GeluTanh")}


@graph_pass("fuse_elementwise_chains")
def fuse_elementwise_chains(graph: Graph, ctx: PassContext) -> int:
    """Join chains of elementwise ops into ai.rblnc::FusedElementwise."""
    return rewrite_each(graph, ctx, _extend_chain)


def _extend_chain(graph: Graph, node: Node, ctx: PassContext) -> bool:
    joined = False
    head = node
    while True:
        first = _as_chain(graph, head, head.inputs[0] if head.inputs else "")
        if first is None:
            return joined
        after = only_consumer(graph, head.outputs[0])
        second = _as_chain(graph, after, head.outputs[0]) if after is not None else None
        if second is None:
            return joined
        head = _join(graph, head, first, after, second)
        joined = True


def _as_chain(graph: Graph, node: Node, chain_input: str):
    """(inputs, ops, operands, swapped, params) of `node` as FusedElementwise steps over
    `chain_input` (which becomes input 0), or None when it is not an elementwise step."""
    out = node.outputs[0] if node.outputs else ""
    dtype = info(graph, out).dtype if info(graph, out) is not None else None
    if dtype is None or dtype.kind != "f" or len(node.outputs) != 1 or not chain_input:
        return None
    if any(info(graph, i) is None or info(graph, i).dtype != dtype for i in node.inputs if i):
        return None
    if node.qualified_type == f"{RBLNC_DOMAIN}::FusedElementwise":
        if node.inputs[0] != chain_input:
            return None
        steps = elementwise_steps(node)
        return (list(node.inputs), [s[0] for s in steps], [s[1] for s in steps],
                [int(s[2]) for s in steps], [p for s in steps for p in s[3]])
    activation = activation_of(node, graph)
    if activation is not None and node.inputs[0] == chain_input:
        return [chain_input], [activation[0]], [-1], [0], list(activation[1])
    if not node.domain and node.op_type in _UNARY_STANDARD and len(node.inputs) == 1 \
            and ELEMENTWISE_UNARY[node.op_type] == 0:
        return [chain_input], [node.op_type], [-1], [0], []
    if not node.domain and node.op_type in ELEMENTWISE_BINARY and len(node.inputs) == 2 \
            and chain_input in node.inputs and node.inputs[0] != node.inputs[1]:
        first = node.inputs[1] == chain_input
        other = node.inputs[0] if first else node.inputs[1]
        return [chain_input, other], [node.op_type], [1], [int(first)], []
    return None


def _join(graph: Graph, head: Node, first, after: Node, second) -> Node:
    inputs, ops, operands, swapped, params = (list(part) for part in first)
    extra_inputs, extra_ops, extra_operands, extra_swapped, extra_params = second
    # The second op's operands are appended after the first's (its input 0 is the chain).
    index = {}
    for position, name in enumerate(extra_inputs[1:], start=1):
        index[position] = len(inputs)
        inputs.append(name)
    ops += extra_ops
    operands += [index[o] if o > 0 else o for o in extra_operands]
    swapped += extra_swapped
    params += extra_params
    attrs = {"ops": ops, "operands": operands, "swapped": swapped, "params": [float(p) for p in params]}
    return fused_node(graph, head, "FusedElementwise", inputs, attrs, [head, after], domain=RBLNC_DOMAIN)
