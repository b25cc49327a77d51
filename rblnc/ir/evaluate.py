"""Evaluate one IR node on concrete arrays with onnxruntime (used for constant folding)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnxruntime as ort
from onnx import helper

from .. import dtypes
from .graph import Graph, Node
from .onnx_bridge import node_to_onnx, standard_nodes

_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
_SESSION_OPTIONS.intra_op_num_threads = 1
_SESSION_OPTIONS.log_severity_level = 3


class EvaluationError(Exception):
    pass


def evaluate_node(graph: Graph, node: Node, values: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Outputs of `node` for input arrays `values` (None for omitted optional inputs)."""
    names = [f"in{i}" for i in range(len(node.inputs))]
    feeds = {n: v for n, v, orig in zip(names, values, node.inputs) if orig}
    local = Node(node.name, node.op_type, [n if orig else "" for n, orig in zip(names, node.inputs)],
                 [f"out{i}" if o else "" for i, o in enumerate(node.outputs)], dict(node.attrs),
                 node.domain)
    inputs = [helper.make_tensor_value_info(n, dtypes.to_onnx(v.dtype), list(v.shape))
              for n, v in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(o) for o in local.outputs if o]
    body = helper.make_graph([node_to_onnx(n) for n in standard_nodes(graph, [local])], "eval",
                             inputs, outputs)
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", graph.opset)])
    model.ir_version = min(model.ir_version, 10)
    try:
        session = ort.InferenceSession(model.SerializeToString(), _SESSION_OPTIONS,
                                       providers=["CPUExecutionProvider"])
        results = session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise EvaluationError(f"{node.name} ({node.op_type}): {str(exc).strip()[:300]}") from None
    it = iter(results)
    return [np.asarray(next(it)) if o else None for o in node.outputs]
