"""Helpers for checking passes: run named passes with the verifier on, and evaluate an IR graph with onnxruntime."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from rblnc.ir import Graph, TensorInfo, verify_graph
from rblnc.ir.onnx_bridge import make_model
from rblnc.ir.shape_inference import infer_node

from .manager import PassContext, PassManager, PassReport
from .pipeline import ALL_PASSES, pipeline


def run_passes(graph: Graph, passes: Sequence[str] | int, *, ctx: PassContext | None = None) -> PassReport:
    """Run the named passes (or an -O level's pipeline) to a fixed point, verifying the IR
    after every pass and re-checking every node's output type against its shape rule."""
    chosen = pipeline(passes) if isinstance(passes, int) else [ALL_PASSES[name] for name in passes]
    report = PassManager(chosen, verify_each=True).run(graph, ctx or PassContext())
    check_types(graph)
    return report


def check_types(graph: Graph) -> None:
    """Every node's recorded output types agree with what shape inference says they are
    (where inference knows less, e.g. the shape a Reshape reads is computed, it must not
    contradict the record)."""
    verify_graph(graph, require_static=True)
    order = graph.topological_order()
    if [n.name for n in order] != [n.name for n in graph.topological_order()]:
        raise AssertionError("the passes' topological walk differs from the IR's order")
    for node in order:
        for out, inferred in zip(node.outputs, infer_node(graph, node)):
            if out and inferred is not None and not _agree(graph.tensors[out], inferred):
                raise AssertionError(f"{node.name}: {out} is recorded as {graph.tensors[out]}, "
                                     f"its shape rule says {inferred}")


def _agree(recorded: TensorInfo, inferred: TensorInfo) -> bool:
    if recorded.dtype != inferred.dtype:
        return False
    if inferred.shape is None:
        return True
    return len(recorded.shape) == len(inferred.shape) and all(
        i is None or r == i for r, i in zip(recorded.shape, inferred.shape))


def evaluate(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs for `feeds`, computed by onnxruntime with our ops decomposed to
    standard ONNX (so this also checks the decompositions)."""
    model = make_model(graph, graph.topological_order(), graph.inputs, graph.outputs,
                       initializers=list(graph.constants))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def random_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (small non-negative integers for integer inputs)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        info = graph.tensors[name]
        if info.dtype.kind == "f":
            feeds[name] = rng.standard_normal(info.shape).astype(info.dtype)
        else:
            feeds[name] = rng.integers(0, 4, size=info.shape).astype(info.dtype)
    return feeds


def rewrite_and_compare(graph: Graph, passes: Sequence[str] | int, *, rtol: float = 1e-5, atol: float = 1e-5,
                        seed: int = 0) -> tuple[Graph, PassReport]:
    """Run `passes` on a copy of `graph` (verified), check both compute the same outputs on
    random inputs, and return the rewritten copy with the report."""
    rewritten = graph.copy()
    report = run_passes(rewritten, passes)
    feeds = random_feeds(graph, seed)
    for expected, actual, name in zip(evaluate(graph, feeds), evaluate(rewritten, feeds), graph.outputs):
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=f"output {name}")
    return rewritten, report
