"""Lowers a host partition to a standalone ONNX model that onnxruntime runs."""

from __future__ import annotations

from ..ir.graph import Graph, Node
from ..ir.onnx_bridge import make_model


def lower_host_subgraph(graph: Graph, nodes: list[Node], inputs: list[str], outputs: list[str],
                        name: str) -> bytes:
    constants = sorted({i for n in nodes for i in n.inputs + n.implicit_inputs if i and graph.is_constant(i)})
    model = make_model(graph, nodes, inputs, outputs, name=name, initializers=constants)
    return model.SerializeToString()
