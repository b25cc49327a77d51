"""Recognition of the decomposed activations exporters emit: SiLU, HardSwish and GELU become one op each.

    Mul(x, Sigmoid(x))                                   => ai.rblnc::SiLU(x)
    Mul(x, HardSigmoid(x, 1/6, 1/2))                     => HardSwish(x)
    x * Clip(x + 3, 0, 6) / 6   (and * 1/6, either order) => HardSwish(x)
    x * 0.5 * (1 + Erf(x / sqrt 2))   (any product order) => ai.rblnc::Gelu(x)
    x * 0.5 * (1 - Erf(-x / sqrt 2))  (TF's erfc form)    => ai.rblnc::Gelu(x)
    x * 0.5 * (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3)))  => ai.rblnc::Gelu(x, approximate="tanh")

A pattern is replaced only when its intermediate values are read by the pattern alone.
One op instead of five lets `fuse_activation` put it into the Conv or MatMul before it.
"""

from __future__ import annotations

import math

from rblnc.ir import RBLNC_DOMAIN, Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import (
    close_to, fused_node, internal, only_consumer, other_input, producer, rewrite_each, scalar,
)


@graph_pass("recognize_silu")
def recognize_silu(graph: Graph, ctx: PassContext) -> int:
    """Replace x * Sigmoid(x) by ai.rblnc::SiLU(x)."""
    return rewrite_each(graph, ctx, _silu, op_types=["Sigmoid"])


def _silu(graph: Graph, sigmoid: Node, ctx: PassContext) -> bool:
    x = sigmoid.inputs[0]
    mul = only_consumer(graph, sigmoid.outputs[0])
    if mul is None or mul.op_type != "Mul" or mul.domain or other_input(mul, sigmoid.outputs[0]) != x:
        return False
    fused_node(graph, sigmoid, "SiLU", [x], {}, [sigmoid, mul], domain=RBLNC_DOMAIN)
    return True


@graph_pass("recognize_hardswish")
def recognize_hardswish(graph: Graph, ctx: PassContext) -> int:
    """Replace the decomposed forms of x * relu6(x + 3) / 6 by HardSwish(x)."""
    return rewrite_each(graph, ctx, _hardswish, op_types=["Mul", "Div"])


def _hardswish(graph: Graph, last: Node, ctx: PassContext) -> bool:
    match = _match_hardswish(graph, last)
    if match is None or not internal(graph, match[1], last):
        return False
    x, nodes = match
    anchor = nodes[0]
    fused_node(graph, anchor, "HardSwish", [x], {}, _ordered(graph, nodes), domain="")
    return True


def _match_hardswish(graph: Graph, last: Node) -> tuple[str, list[Node]] | None:
    a, b = last.inputs[0], last.inputs[1]
    if last.op_type == "Mul":
        for x, h in ((a, b), (b, a)):
            gate = _hard_sigmoid(graph, h)
            if gate is not None and gate[0] == x:
                return x, gate[1] + [last]
    for product, divisor in ((a, b), (b, a)) if last.op_type == "Mul" else ((a, b),):
        factor = scalar(graph, divisor)
        wanted = 1 / 6 if last.op_type == "Mul" else 6.0
        inner = producer(graph, product, "Mul")
        if inner is None or not close_to(factor, wanted):
            continue
        for x, r in ((inner.inputs[0], inner.inputs[1]), (inner.inputs[1], inner.inputs[0])):
            relu6 = _relu6_of_x_plus_3(graph, r)
            if relu6 is not None and relu6[0] == x:
                return x, relu6[1] + [inner, last]
    return None


def _hard_sigmoid(graph: Graph, tensor: str) -> tuple[str, list[Node]] | None:
    """(x, nodes) when `tensor` is relu6(x + 3) / 6 in one of its exported forms."""
    node = producer(graph, tensor)
    if node is None or node.domain:
        return None
    if node.op_type == "HardSigmoid":
        alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
        return (node.inputs[0], [node]) if close_to(alpha, 1 / 6) and close_to(beta, 0.5) else None
    if node.op_type in ("Div", "Mul"):
        wanted = 6.0 if node.op_type == "Div" else 1 / 6
        pairs = [(node.inputs[0], node.inputs[1])]
        if node.op_type == "Mul":
            pairs.append((node.inputs[1], node.inputs[0]))
        for value, factor in pairs:
            relu6 = _relu6_of_x_plus_3(graph, value)
            if relu6 is not None and close_to(scalar(graph, factor), wanted):
                return relu6[0], relu6[1] + [node]
    return None


def _relu6_of_x_plus_3(graph: Graph, tensor: str) -> tuple[str, list[Node]] | None:
    clip = producer(graph, tensor, "Clip")
    if clip is None or len(clip.inputs) < 3:
        return None
    if scalar(graph, clip.inputs[1]) != 0.0 or scalar(graph, clip.inputs[2]) != 6.0:
        return None
    add = producer(graph, clip.inputs[0], "Add")
    if add is None:
        return None
    for x, three in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if scalar(graph, three) == 3.0 and scalar(graph, x) is None:
            return x, [add, clip]
    return None


@graph_pass("recognize_gelu")
def recognize_gelu(graph: Graph, ctx: PassContext) -> int:
    """Replace the erf and tanh forms of GELU by ai.rblnc::Gelu."""
    return rewrite_each(graph, ctx, _gelu, op_types=["Erf", "Tanh"])


def _gelu(graph: Graph, core: Node, ctx: PassContext) -> bool:
    one_plus = only_consumer(graph, core.outputs[0])
    if one_plus is None:
        return False
    negated = core.op_type == "Erf" and one_plus.op_type == "Sub"
    if negated:
        head = _negated_erf_argument(graph, core)
    else:
        head = _erf_argument(graph, core) if core.op_type == "Erf" else _tanh_argument(graph, core)
    if head is None:
        return False
    x, head_nodes = head
    if negated:  # 1 - erf(-x / sqrt 2) = erfc(-x / sqrt 2) = 1 + erf(x / sqrt 2): TF's exact GELU
        if one_plus.op_type != "Sub" or one_plus.inputs[1] != core.outputs[0] or scalar(graph, one_plus.inputs[0]) != 1.0:
            return False
    elif one_plus.op_type != "Add" or scalar(graph, other_input(one_plus, core.outputs[0])) != 1.0:
        return False
    tail = _half_x_times(graph, one_plus, x)
    if tail is None:
        return False
    nodes = head_nodes + [core, one_plus] + tail
    if not internal(graph, nodes, tail[-1]):
        return False
    attrs = {"approximate": "tanh"} if core.op_type == "Tanh" else {"approximate": "none"}
    fused_node(graph, nodes[0], "Gelu", [x], attrs, _ordered(graph, nodes), domain=RBLNC_DOMAIN)
    return True


def _erf_argument(graph: Graph, erf: Node) -> tuple[str, list[Node]] | None:
    """(x, [node]) when Erf's input is x / sqrt 2 or x * (1 / sqrt 2)."""
    node = producer(graph, erf.inputs[0], "Div", "Mul")
    if node is None:
        return None
    if node.op_type == "Div" and close_to(scalar(graph, node.inputs[1]), math.sqrt(2)):
        return node.inputs[0], [node]
    if node.op_type == "Mul":
        for x, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if close_to(scalar(graph, c), 1 / math.sqrt(2)):
                return x, [node]
    return None


def _negated_erf_argument(graph: Graph, erf: Node) -> tuple[str, list[Node]] | None:
    """(x, nodes) when Erf's input is -x / sqrt 2: Neg(x) * (1 / sqrt 2) (TF's gelu) or x * (-1 / sqrt 2)."""
    node = producer(graph, erf.inputs[0], "Mul")
    if node is None:
        return None
    for a, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        factor = scalar(graph, c)
        if close_to(factor, -1 / math.sqrt(2)):
            return a, [node]
        negation = producer(graph, a, "Neg")
        if close_to(factor, 1 / math.sqrt(2)) and negation is not None and only_consumer(graph, a) is node:
            return negation.inputs[0], [negation, node]
    return None


def _tanh_argument(graph: Graph, tanh: Node) -> tuple[str, list[Node]] | None:
    """(x, nodes) when Tanh's input is sqrt(2/pi) * (x + 0.044715 x^3)."""
    scale = producer(graph, tanh.inputs[0], "Mul")
    if scale is None:
        return None
    for inner, c in ((scale.inputs[0], scale.inputs[1]), (scale.inputs[1], scale.inputs[0])):
        if not close_to(scalar(graph, c), math.sqrt(2 / math.pi)):
            continue
        add = producer(graph, inner, "Add")
        if add is None:
            continue
        for x, cubic in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            term = producer(graph, cubic, "Mul")
            if term is None:
                continue
            for cube, k in ((term.inputs[0], term.inputs[1]), (term.inputs[1], term.inputs[0])):
                cube_nodes = _cube_of(graph, cube, x)
                if cube_nodes is not None and close_to(scalar(graph, k), 0.044715):
                    return x, cube_nodes + [term, add, scale]
    return None


def _cube_of(graph: Graph, tensor: str, x: str) -> list[Node] | None:
    node = producer(graph, tensor, "Pow", "Mul")
    if node is None:
        return None
    if node.op_type == "Pow":
        return [node] if node.inputs[0] == x and scalar(graph, node.inputs[1]) == 3.0 else None
    for a, b in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        square = producer(graph, b, "Mul")
        if a == x and square is not None and square.inputs == [x, x]:
            return [square, node]
    return None


def _half_x_times(graph: Graph, one_plus: Node, x: str) -> list[Node] | None:
    """The nodes multiplying (1 + erf) by x and by 0.5, in any of the orders exporters use."""
    first = only_consumer(graph, one_plus.outputs[0])
    if first is None or first.op_type != "Mul":
        return None
    other = other_input(first, one_plus.outputs[0])
    second = only_consumer(graph, first.outputs[0])
    if other == x:  # (x * (1 + erf)) * 0.5
        if second is not None and second.op_type == "Mul" and close_to(scalar(graph, other_input(second, first.outputs[0])), 0.5):
            return [first, second]
        return None
    if close_to(scalar(graph, other), 0.5):  # ((1 + erf) * 0.5) * x
        if second is not None and second.op_type == "Mul" and other_input(second, first.outputs[0]) == x:
            return [first, second]
        return None
    half = producer(graph, other, "Mul")  # (x * 0.5) * (1 + erf)
    if half is not None and x in half.inputs and close_to(scalar(graph, other_input(half, x)), 0.5):
        return [half, first]
    return None


def _depth(graph: Graph, node: Node, nodes: list[Node]) -> int:
    """How many pattern nodes feed `node` (transitively): the pattern's output has the most."""
    names = {n.name: n for n in nodes}
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        for i in current.inputs:
            p = graph.producer(i) if i else None
            if p is not None and p.name in names and p.name not in seen:
                seen.add(p.name)
                stack.append(p)
    return len(seen)


def _ordered(graph: Graph, nodes: list[Node]) -> list[Node]:
    """The pattern's nodes from first to last, the output-producing one last."""
    return sorted(nodes, key=lambda n: _depth(graph, n, nodes))
