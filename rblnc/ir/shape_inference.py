"""Output types and shapes of IR nodes: our own rules for our ops, ONNX's for the rest."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import dtypes
from .graph import RBLNC_DOMAIN, Graph, GraphError, Node, TensorInfo
from .onnx_bridge import node_to_onnx, value_info

# Our own ops register their rule here: fn(node, input_infos, graph) -> output infos.
INFERENCE_RULES: dict[str, Callable[[Node, list[TensorInfo | None], Graph], list[TensorInfo]]] = {}

# Constants up to this many elements are shown to ONNX's inference, so that ops whose
# output shape depends on an input's value (Reshape, Slice, Expand...) resolve.
_MAX_PROPAGATED_ELEMENTS = 4096


class ShapeInferenceError(GraphError):
    pass


def infer_node(graph: Graph, node: Node) -> list[TensorInfo]:
    """Types and shapes of `node`'s outputs, given the types of its inputs in `graph`."""
    input_infos = [graph.tensors.get(i) if i else None for i in node.inputs]
    if node.domain == RBLNC_DOMAIN:
        try:
            rule = INFERENCE_RULES[node.op_type]
        except KeyError:
            raise ShapeInferenceError(f"no shape rule for {node.qualified_type}") from None
        return rule(node, input_infos, graph)
    return _infer_with_onnx(graph, node)


def infer_shapes(graph: Graph, *, only_missing: bool = True) -> None:
    """(Re)compute the types of node outputs in topological order."""
    for node in graph.topological_order():
        if only_missing and all(
            o in graph.tensors and graph.tensors[o].is_static for o in node.outputs if o
        ):
            continue
        for out, info in zip(node.outputs, infer_node(graph, node)):
            if out:
                graph.tensors[out] = info


def _infer_with_onnx(graph: Graph, node: Node) -> list[TensorInfo]:
    inputs, initializers = [], []
    # A subgraph (If/Loop/Scan branch) reads outer values by name: inference needs their types too.
    for name in dict.fromkeys(i for i in node.inputs + node.implicit_inputs if i):
        if name not in graph.tensors:
            raise ShapeInferenceError(f"{node.name}: input {name!r} has no known type")
        value = graph.constants.get(name)
        if value is not None and value.size <= _MAX_PROPAGATED_ELEMENTS and value.dtype != object:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(value_info(name, graph.tensors[name]))
    body = helper.make_graph(
        [node_to_onnx(node)], "infer", inputs,
        [helper.make_empty_tensor_value_info(o) for o in node.outputs if o], initializers,
    )
    opsets = [helper.make_opsetid("", graph.opset)]
    if node.domain:
        opsets.append(helper.make_opsetid(node.domain, 1))
    model = helper.make_model(body, opset_imports=opsets)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ShapeInferenceError(f"{node.name} ({node.op_type}): {_first_line(exc)}") from None
    known = {vi.name: vi for vi in list(inferred.graph.output) + list(inferred.graph.value_info)}
    result = []
    for out in node.outputs:
        if not out:
            result.append(None)
            continue
        vi = known.get(out)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.elem_type:
            if node.domain and not onnx.defs.has(node.op_type, node.domain):
                # a custom or runtime-specific op (onnxruntime's com.microsoft contrib ops): the host
                # runs it on onnxruntime, which also knows what it produces
                probed = _probe_with_onnxruntime(model, graph, node)
                if probed is not None:
                    return probed
                raise ShapeInferenceError(
                    f"{node.name} ({node.domain}::{node.op_type}): type of {out!r} unknown: ONNX has no shape "
                    f"rule for this op outside the standard and the model gives no value_info for its outputs "
                    f"(add them, or export without it, e.g. before dynamic quantization)")
            raise ShapeInferenceError(f"{node.name} ({node.op_type}): type of {out!r} unknown")
        result.append(info_from_onnx_type(vi.type))
    return result


def _probe_with_onnxruntime(model: onnx.ModelProto, graph: Graph, node: Node) -> list[TensorInfo] | None:
    """The output types of an op ONNX has no rule for, from one run of it on onnxruntime with
    zero-filled inputs of their static shapes (onnxruntime's contrib ops, which the host runs);
    None when an input shape is not static or onnxruntime cannot run it. Right for ops whose
    output shapes follow from input shapes; the runtime checks every shape at the partition
    boundaries, so a data-dependent one fails there, never silently."""
    import onnxruntime  # the host's runtime; imported only for such ops

    feeds = {}
    for value in model.graph.input:
        info = graph.tensors[value.name]
        if not info.is_static or info.dtype == object:
            return None
        feeds[value.name] = np.zeros(info.shape, info.dtype)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime reads
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(None, feeds)
    except Exception:  # onnxruntime does not know the op either: the caller's error says what to do
        return None
    produced = dict(zip((o.name for o in session.get_outputs()), values))
    return [array_info(np.asarray(produced[o])) if o else None for o in node.outputs]


def info_from_onnx_type(type_proto: onnx.TypeProto) -> TensorInfo:
    tensor_type = type_proto.tensor_type
    shape = None  # rank unknown
    if tensor_type.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
            for d in tensor_type.shape.dim
        )
    return TensorInfo(dtypes.from_onnx(tensor_type.elem_type), shape)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def array_info(value: np.ndarray) -> TensorInfo:
    return TensorInfo(value.dtype, tuple(value.shape))
