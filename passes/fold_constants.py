"""Constant folding: a node whose inputs are all constants becomes a constant (all of them in one onnxruntime run)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper

from rblnc import dtypes
from rblnc.ir import Graph, Node
from rblnc.ir.evaluate import EvaluationError, evaluate_node
from rblnc.ir.onnx_bridge import node_to_onnx, standard_nodes

from .manager import PassContext, graph_pass

# Ops whose result is not a function of their inputs, or that carry subgraphs.
_NEVER_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty",
}
_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
_SESSION_OPTIONS.intra_op_num_threads = 1
_SESSION_OPTIONS.log_severity_level = 3
# Input positions that hold weights; a folded weight would be resident on the device anyway.
_WEIGHT_INPUTS = {"Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {1, 2}, "MatMul": {1}}


@graph_pass("fold_constants")
def fold_constants(graph: Graph, ctx: PassContext) -> int:
    """Evaluate nodes whose inputs are all constants at compile time."""
    foldable: list[Node] = []
    known = set(graph.constants)  # values known now or once the nodes before are folded
    for node in graph.topological_order():
        if node.op_type in _NEVER_FOLD or node.implicit_inputs or node.domain not in ("", "ai.onnx"):
            continue
        if not all(not i or i in known for i in node.inputs):
            continue
        if node.op_type == "DequantizeLinear" and graph.is_constant(node.inputs[0]):
            continue  # a quantised weight: the quantize stage (rblnc/quantize/) uses its integers and scales
        outputs = [o for o in node.outputs if o]
        if any(o in graph.outputs for o in outputs):
            continue  # a model output must stay produced by a node for the runtime to return it
        if not all(_small_enough(graph, o, ctx) for o in outputs):
            continue
        foldable.append(node)
        known.update(outputs)
    if not foldable:
        return 0
    try:
        results = _evaluate_together(graph, foldable)
    except EvaluationError:
        return _fold_one_by_one(graph, foldable)  # finds the node that cannot run, folds the rest
    for node in foldable:
        graph.remove_node(node.name)
    for node in foldable:
        for out in node.outputs:
            if out:
                graph.tensors.pop(out, None)
                graph.add_constant(out, results[out])
    return len(foldable)


def _evaluate_together(graph: Graph, nodes: list[Node]) -> dict[str, np.ndarray]:
    """All outputs of `nodes` (a topologically ordered set whose outside inputs are constants),
    from one onnxruntime session: a model folds hundreds of shape and weight nodes, and a
    session per node cost milliseconds each."""
    produced = {o for n in nodes for o in n.outputs if o}
    feeds = {i: graph.constants[i] for n in nodes for i in n.inputs if i and i not in produced}
    outputs = sorted(produced)
    body = helper.make_graph(
        [node_to_onnx(n) for n in standard_nodes(graph, nodes)], "fold",
        [helper.make_tensor_value_info(name, dtypes.to_onnx(v.dtype), list(v.shape)) for name, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs])
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", graph.opset)])
    model.ir_version = min(model.ir_version, 10)
    try:
        session = ort.InferenceSession(model.SerializeToString(), _SESSION_OPTIONS, providers=["CPUExecutionProvider"])
        values = session.run(outputs, feeds)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise EvaluationError(str(exc).strip()[:300]) from None
    return {name: np.asarray(value) for name, value in zip(outputs, values)}


def _fold_one_by_one(graph: Graph, nodes: list[Node]) -> int:
    folded = 0
    for node in nodes:
        if not all(not i or graph.is_constant(i) for i in node.inputs):
            continue  # an input's producer could not be folded
        try:
            values = evaluate_node(graph, node, [graph.constants[i] if i else None for i in node.inputs])
        except EvaluationError:
            continue  # leave it to run as an op; the support check will say where
        graph.remove_node(node.name)
        for out, value in zip(node.outputs, values):
            if out:
                graph.tensors.pop(out, None)
                graph.add_constant(out, value)
        folded += 1
    return folded


def _small_enough(graph: Graph, tensor: str, ctx: PassContext) -> bool:
    info = graph.tensors.get(tensor)
    if info is None or not info.is_static:
        return True  # unknown size: evaluate and see (shape computations are tiny)
    if info.nbytes <= ctx.max_folded_bytes:
        return True
    consumers = graph.consumers(tensor)
    return bool(consumers) and all(
        i in _WEIGHT_INPUTS.get(c.op_type, ()) for c in consumers for i, n in enumerate(c.inputs) if n == tensor
    )
