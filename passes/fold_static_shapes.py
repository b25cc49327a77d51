"""Shape and Size of a tensor whose shape is known at compile time become constants, so shape-only subgraphs fold."""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph

from .manager import PassContext, graph_pass


@graph_pass("fold_static_shapes")
def fold_static_shapes(graph: Graph, ctx: PassContext) -> int:
    """Replace Shape/Size of a statically shaped tensor by a constant (fold_constants then folds
    the Gather/Concat/... that read it, leaving Reshape with a constant shape for the NPU)."""
    folded = 0
    for node in graph.topological_order():
        if node.domain or node.op_type not in ("Shape", "Size") or not node.inputs or not node.outputs[0]:
            continue
        source, result = node.inputs[0], node.outputs[0]
        info = graph.tensors.get(source)
        if info is None or not info.is_static or result in graph.outputs:
            continue  # a model output must stay produced by a node for the runtime to return it
        dims = np.array(info.shape, dtype=np.int64)
        if node.op_type == "Size":
            value = np.array(int(np.prod(dims)), dtype=np.int64)
        else:
            value = dims[_shape_slice(node.attrs, len(dims))]
        graph.remove_node(node.name)
        graph.tensors.pop(result, None)
        graph.add_constant(result, value)
        folded += 1
    return folded


def _shape_slice(attrs: dict, rank: int) -> slice:
    """Shape's optional `start`/`end` (opset 15): negative counts from the back, clamped to the rank."""
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    end = rank if end is None else int(end)
    start, end = (v + rank if v < 0 else v for v in (start, end))
    return slice(min(max(start, 0), rank), min(max(end, 0), rank))
