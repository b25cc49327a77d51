"""Checks the IR's invariants; run between compiler stages and after every pass in tests."""

from __future__ import annotations

import networkx as nx

from .graph import Graph, GraphError


def verify_graph(graph: Graph, *, require_static: bool = False) -> None:
    """Raise GraphError naming the first broken invariant."""
    defined = set(graph.inputs) | set(graph.constants)
    for name in graph.inputs:
        if name not in graph.tensors:
            raise GraphError(f"graph input {name!r} has no type")
    for node in graph.nodes:
        for out in node.outputs:
            if not out:
                continue
            if graph.producer(out) is not node:
                raise GraphError(f"{node.name}: output {out!r} is not indexed as produced by it")
            if out not in graph.tensors:
                raise GraphError(f"{node.name}: output {out!r} has no type")
            info = graph.tensors[out]
            if require_static and not info.is_static:
                raise GraphError(f"{node.name}: output {out!r} has a dynamic shape {info}")
            defined.add(out)
    for node in graph.nodes:
        for inp in node.inputs + node.implicit_inputs:
            if inp and inp not in defined:
                raise GraphError(f"{node.name} ({node.op_type}): input {inp!r} is never defined")
            producer = graph.producer(inp) if inp else None
            if producer is not None and not graph.nx.has_edge(producer.name, node.name, key=inp):
                raise GraphError(f"{node.name}: no edge from {producer.name} for {inp!r}")
    for src, dst, tensor in graph.nx.edges(keys=True):
        consumer = graph.node(dst)
        if tensor not in consumer.inputs + consumer.implicit_inputs or tensor not in graph.node(src).outputs:
            raise GraphError(f"stale edge {src} -> {dst} ({tensor!r})")
    for out in graph.outputs:
        if out not in defined:
            raise GraphError(f"graph output {out!r} is never defined")
    if not nx.is_directed_acyclic_graph(graph.nx):
        cycle = nx.find_cycle(graph.nx)
        raise GraphError(f"the graph has a cycle through {[e[0] for e in cycle]}")
