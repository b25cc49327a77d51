"""Dead-code elimination: nodes and constants that no graph output depends on are dropped."""

from __future__ import annotations

from rblnc.ir import Graph

from .manager import PassContext, graph_pass


@graph_pass("remove_dead_nodes")
def remove_dead_nodes(graph: Graph, ctx: PassContext) -> int:
    """Drop nodes whose outputs reach no graph output, then unused constants."""
    live: set[str] = set(graph.outputs)
    removed = 0
    for node in reversed(graph.topological_order()):
        if any(o in live for o in node.outputs):
            live.update(i for i in node.inputs + node.implicit_inputs if i)
        else:
            graph.remove_node(node.name)
            removed += 1
    for name in [c for c in graph.constants if c not in live and not graph.consumers(c)]:
        graph.remove_constant(name)
    return removed
