"""Constant folding: a node whose inputs are all constants becomes a constant."""

from __future__ import annotations

from rblnc.ir import Graph
from rblnc.ir.evaluate import EvaluationError, evaluate_node

from .manager import PassContext, graph_pass
from .rewriting import topological_nodes

# Ops whose result is not a function of their inputs, or that carry subgraphs.
_NEVER_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty",
}
# Input positions that hold weights; a folded weight would be resident on the device anyway.
_WEIGHT_INPUTS = {"Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {1, 2}, "MatMul": {1}}


@graph_pass("fold_constants")
def fold_constants(graph: Graph, ctx: PassContext) -> int:
    """Evaluate nodes whose inputs are all constants at compile time."""
    folded = 0
    for node in topological_nodes(graph):
        if node.op_type in _NEVER_FOLD or node.implicit_inputs or node.domain not in ("", "ai.onnx"):
            continue
        if not all(not i or graph.is_constant(i) for i in node.inputs):
            continue
        outputs = [o for o in node.outputs if o]
        if any(o in graph.outputs for o in outputs):
            continue  # a model output must stay produced by a node for the runtime to return it
        if not all(_small_enough(graph, o, ctx) for o in outputs):
            continue
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
