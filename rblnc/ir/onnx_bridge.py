"""Conversions between IR nodes/subgraphs and ONNX protos (for ONNX tools and onnxruntime)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import dtypes
from .graph import RBLNC_DOMAIN, Graph, Node, TensorInfo

# Functions that express our own ops in standard ONNX, registered by the modules that
# define those ops: fn(node, graph) -> list of standard-domain IR nodes.
DECOMPOSITIONS: dict[str, Any] = {}


def attr_from_onnx(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.STRING:
        return value.decode("utf-8", errors="replace")
    if attr.type == onnx.AttributeProto.STRINGS:
        return [v.decode("utf-8", errors="replace") for v in value]
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if attr.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return list(value)
    return value


def attr_to_onnx(name: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        if not value:  # an empty list carries no type; ints is what ONNX ops expect
            return helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS)
        value = [v.item() if isinstance(v, np.generic) else v for v in value]
    return helper.make_attribute(name, value)


def node_from_onnx(proto: onnx.NodeProto, name: str) -> Node:
    return Node(
        name=name,
        op_type=proto.op_type,
        domain=proto.domain if proto.domain not in ("ai.onnx",) else "",
        inputs=list(proto.input),
        outputs=list(proto.output),
        attrs={a.name: attr_from_onnx(a) for a in proto.attribute},
    )


def constant_node_value(proto: onnx.NodeProto) -> np.ndarray:
    """The value of an ONNX Constant node (ValueError when it has none we can read)."""
    attr = proto.attribute[0] if proto.attribute else None
    if attr is None:
        raise ValueError("it has no value")
    value = attr_from_onnx(attr)
    if attr.name == "value":
        return value
    if attr.name in ("value_float", "value_floats"):
        return np.asarray(value, dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.asarray(value, dtype=np.int64)
    if attr.name in ("value_string", "value_strings"):
        return np.asarray(value, dtype=object)
    raise ValueError(f"attribute {attr.name!r} is not supported")


def outer_scope_reads(proto: onnx.NodeProto) -> list[str]:
    """Names the subgraph attributes of `proto` (If/Loop/Scan bodies) read from the enclosing graph."""
    reads: list[str] = []
    for attr in proto.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else []
        for sub in subgraphs + list(attr.graphs):
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            defined.update(o for n in sub.node for o in n.output)
            for n in sub.node:
                for name in list(n.input) + outer_scope_reads(n):
                    if name and name not in defined and name not in reads:
                        reads.append(name)
    return reads


def node_to_onnx(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name,
                             domain=node.domain or None)
    proto.attribute.extend(attr_to_onnx(k, v) for k, v in sorted(node.attrs.items()))
    return proto


def value_info(name: str, info: TensorInfo) -> onnx.ValueInfoProto:
    shape = None if info.shape is None else list(info.shape)  # None: rank only known at run time
    return helper.make_tensor_value_info(name, dtypes.to_onnx(info.dtype), shape)


def standard_nodes(graph: Graph, nodes: Iterable[Node]) -> list[Node]:
    """The nodes with each of our own ops replaced by its standard-ONNX decomposition."""
    result: list[Node] = []
    for node in nodes:
        if node.domain == RBLNC_DOMAIN:
            try:
                decompose = DECOMPOSITIONS[node.op_type]
            except KeyError:
                raise NotImplementedError(
                    f"{node.qualified_type} ({node.name}) has no ONNX decomposition"
                ) from None
            result.extend(standard_nodes(graph, decompose(node, graph)))
        else:
            result.append(node)
    return result


def make_model(
    graph: Graph,
    nodes: Sequence[Node],
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    name: str = "subgraph",
    initializers: Iterable[str] = (),
    ir_version: int | None = None,
) -> onnx.ModelProto:
    """An ONNX model of `nodes` reading `inputs` (graph inputs) and `initializers` (constants)."""
    initializer_protos = [
        numpy_helper.from_array(np.asarray(graph.constants[c]), c) for c in initializers
    ]
    body = helper.make_graph(
        [node_to_onnx(n) for n in standard_nodes(graph, nodes)],
        name,
        [value_info(i, graph.tensors[i]) for i in inputs],
        [value_info(o, graph.tensors[o]) if o in graph.tensors else helper.make_empty_tensor_value_info(o)
         for o in outputs],
        initializer_protos,
    )
    opsets = [helper.make_opsetid("", graph.opset)]
    extra_domains = {n.domain for n in nodes if n.domain and n.domain != RBLNC_DOMAIN}
    opsets += [helper.make_opsetid(d, 1) for d in sorted(extra_domains)]
    # Model-local functions the nodes call (custom ops the model defines), with what they import.
    functions = []
    for key in dict.fromkeys((n.domain, n.op_type) for n in nodes):
        if key in getattr(graph, "functions", {}):
            function = onnx.FunctionProto.FromString(graph.functions[key])
            functions.append(function)
            known = {o.domain for o in opsets}
            opsets += [o for o in function.opset_import if o.domain not in known]
    model = helper.make_model(body, opset_imports=opsets, producer_name="rblnc", functions=functions)
    # onnxruntime accepts models up to the IR version it was built for; pin a widely read one.
    model.ir_version = ir_version or min(model.ir_version, 10)
    return model
