"""Sum of exactly two inputs becomes Add, so the fusions that look for Add see it too.

    Sum(a, b) -> Add(a, b)          (same broadcasting, same result)
"""

from __future__ import annotations

from rblnc.ir import Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import replace_nodes, rewrite_each


@graph_pass("rewrite_sum_as_add")
def rewrite_sum_as_add(graph: Graph, ctx: PassContext) -> int:
    """Rewrite Sum(a, b) as Add(a, b)."""
    return rewrite_each(graph, ctx, _rewrite, op_types=["Sum"])


def _rewrite(graph: Graph, node: Node, ctx: PassContext) -> bool:
    live = [i for i in node.inputs if i]
    if len(live) != 2:
        return False
    replace_nodes(graph, [node], [Node(node.name, "Add", live, list(node.outputs),
                                       source_ops=list(node.source_ops))])
    return True
