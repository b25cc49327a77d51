"""Types left unknown at import are inferred again once folding has made their inputs constant."""

from __future__ import annotations

from rblnc.ir import Graph
from rblnc.ir.shape_inference import ShapeInferenceError, infer_node

from .manager import PassContext, graph_pass


@graph_pass("refine_shapes")
def refine_shapes(graph: Graph, ctx: PassContext) -> int:
    """Re-infer outputs whose shape is not static (a Pad whose pads were a Shape chain, the
    nodes of an inlined If branch): after folding, many become static and can run on the NPU."""
    refined = 0
    for node in graph.topological_order():
        outputs = [o for o in node.outputs if o]
        if all(o in graph.tensors and graph.tensors[o].is_static for o in outputs):
            continue
        try:
            infos = infer_node(graph, node)
        except ShapeInferenceError:
            continue  # still unknown: the op runs on the host, where shapes may be dynamic
        for out, info in zip(node.outputs, infos):
            if out and info is not None and info.is_static and not (out in graph.tensors and graph.tensors[out].is_static):
                graph.tensors[out] = info
                refined += 1
    return refined
