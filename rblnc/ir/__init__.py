"""The graph IR that every importer produces and every later stage consumes."""

from .graph import CANONICAL_OPSET, RBLNC_DOMAIN, Graph, GraphError, Node, TensorInfo
from .shape_inference import infer_node, infer_shapes
from .text import dump
from .verify import verify_graph

__all__ = [
    "CANONICAL_OPSET", "RBLNC_DOMAIN", "Graph", "GraphError", "Node", "TensorInfo",
    "infer_node", "infer_shapes", "dump", "verify_graph",
]

from . import fused_ops  # noqa: E402,F401  registers the ai.rblnc ops' shape rules and decompositions
from . import quantized_ops  # noqa: E402,F401  registers the quantised ops' shape rules and decompositions
