"""Rewrites QDQ patterns (DequantizeLinear -> float op -> QuantizeLinear) into our quantised ops.

This is how both kinds of int8 model reach the NPU: a QDQ ONNX file (onnxruntime's
`quantize_static`, NNCF) is rewritten as imported, its scales used as given; rblnc's own
post-training quantisation (calibrate.py, insert.py) writes the same QDQ form and then comes here.
Integer tensors get their `graph.quantization` entry; what is not rewritten keeps its
QuantizeLinear / DequantizeLinear nodes, which run as commands at the int8/float boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

import numpy as np

from ..ir.graph import RBLNC_DOMAIN, Graph, Node, TensorInfo
from ..ir.quantized_ops import QUANTIZED_ACTIVATIONS, bias_params, is_nearest_resize
from ..quant_params import QuantParams

_INT8 = (np.dtype(np.int8), np.dtype(np.uint8))
# Ops that only move or view values: on int8 they keep the params (no arithmetic).
VIEW_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")


@dataclass
class _Dequantized:
    """A float tensor that is DequantizeLinear of an integer one."""

    node: Node
    source: str          # the integer tensor
    params: QuantParams
    constant: bool


def rewrite_qdq(graph: Graph, keep_float: Collection[str] = ()) -> int:
    """Rewrites every QDQ pattern it recognises, except at the nodes named in `keep_float` (ops
    rblnc's quantisation keeps in float whose neighbours, both int8, leave them between a
    DequantizeLinear and a QuantizeLinear); returns how many ops became quantised ops."""
    _record_quantize_outputs(graph)
    rewrites = 0
    for node in graph.topological_order():
        if node.name not in graph.nx or node.name in keep_float:
            continue
        if node.domain:
            # A Conv whose Relu/Clip the passes fused before this rewrite (a Relu that a QDQ file
            # keeps before the QuantizeLinear, its range not starting at 0).
            if node.domain == RBLNC_DOMAIN and node.op_type == "FusedConv":
                rewrites += _rewrite_matrix(graph, node)
            continue
        if node.op_type in VIEW_LIKE or is_nearest_resize(node):
            rewrites += _rewrite_view(graph, node)
        elif node.op_type in _REWRITERS:
            rewrites += _REWRITERS[node.op_type](graph, node)
    _drop_unused(graph)
    return rewrites


def _constant_params(graph: Graph, node: Node, int_dtype: np.dtype) -> QuantParams | None:
    """The params of a Quantize/DequantizeLinear whose scale and zero point are constants."""
    scale_name = node.inputs[1] if len(node.inputs) > 1 else ""
    zero_name = node.inputs[2] if len(node.inputs) > 2 else ""
    if not scale_name or not graph.is_constant(scale_name) or (zero_name and not graph.is_constant(zero_name)):
        return None
    scale = np.asarray(graph.constants[scale_name], dtype=np.float32)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return None
    zero = np.asarray(graph.constants[zero_name]) if zero_name else np.zeros(scale.shape, np.int64)
    axis = int(node.attrs.get("axis", 1))
    return QuantParams.make(scale, zero, axis if scale.size > 1 else None)


def _record_quantize_outputs(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op_type == "QuantizeLinear" and not node.domain:
            out = node.outputs[0]
            info = graph.tensors.get(out)
            if info is None or info.dtype not in _INT8:
                continue
            params = _constant_params(graph, node, info.dtype)
            if params is not None and params.per_tensor:
                graph.quantization[out] = params


def _dequantized(graph: Graph, tensor: str) -> _Dequantized | None:
    producer = graph.producer(tensor) if tensor else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain:
        return None
    source = producer.inputs[0]
    info = graph.tensors.get(source)
    if info is None:
        return None
    constant = graph.is_constant(source)
    params = _constant_params(graph, producer, info.dtype)
    if params is None:
        return None
    if params.axis >= 0 and info.shape is not None:
        params = QuantParams(params.scale, params.zero_point, params.axis % len(info.shape))
    known = graph.quantization.get(source)
    if known is not None and not known.same_as(params):
        return None
    if not constant and (info.dtype not in _INT8 or not params.per_tensor):
        return None
    return _Dequantized(producer, source, params, constant)


def _quantized_output(graph: Graph, node: Node) -> tuple[Node | None, Node, str]:
    """(activation node or None, the QuantizeLinear, its int8 output) when `node`'s only use is
    a QuantizeLinear, possibly through one Relu or constant Clip; else raises LookupError."""
    out = node.outputs[0]
    activation = None
    consumers = graph.consumers(out)
    if out in graph.outputs or len(consumers) != 1:
        raise LookupError
    follower = consumers[0]
    if follower.op_type in ("Relu", "Clip") and not follower.domain:
        if follower.op_type == "Clip" and not all(not n or graph.is_constant(n) for n in follower.inputs[1:]):
            raise LookupError
        activation = follower
        out = follower.outputs[0]
        consumers = graph.consumers(out)
        if out in graph.outputs or len(consumers) != 1:
            raise LookupError
        follower = consumers[0]
    if follower.op_type != "QuantizeLinear" or follower.domain or follower.outputs[0] not in graph.quantization:
        raise LookupError
    return activation, follower, follower.outputs[0]


def _activation_attrs(graph: Graph, activation: Node | None) -> dict:
    if activation is None:
        return {"activation": ""}
    if activation.op_type == "Relu":
        return {"activation": "Relu"}
    low = graph.constants[activation.inputs[1]] if len(activation.inputs) > 1 and activation.inputs[1] else -np.inf
    high = graph.constants[activation.inputs[2]] if len(activation.inputs) > 2 and activation.inputs[2] else np.inf
    return {"activation": "Clip", "activation_params": [float(np.asarray(low)), float(np.asarray(high))]}


def _replace(graph: Graph, removed: list[Node], node: Node, out: str, out_info: TensorInfo) -> None:
    for old in removed:
        graph.remove_node(old.name)
    graph.tensors.pop(out, None)
    graph.add_node(node, [out_info])


def _activation_input(graph: Graph, tensor: str) -> _Dequantized | None:
    dq = _dequantized(graph, tensor)
    if dq is None or dq.constant:
        return None
    graph.quantization.setdefault(dq.source, dq.params)  # an int8 graph input has no QuantizeLinear
    return dq


def _weight(graph: Graph, tensor: str, channel_axis: int) -> _Dequantized | None:
    """An int8 constant dequantised symmetrically, per tensor or per `channel_axis`."""
    dq = _dequantized(graph, tensor)
    if dq is None or not dq.constant or graph.tensors[dq.source].dtype != np.int8:
        return None
    if np.any(dq.params.zero_point != 0) or (not dq.params.per_tensor and dq.params.axis != channel_axis):
        return None
    return dq


def _bias(graph: Graph, tensor: str, params: QuantParams, channels: int) -> np.ndarray | None:
    """The bias as int32 at scale input x weight: from a dequantised int32 constant (as given when
    its scale is that product) or a float constant."""
    dq = _dequantized(graph, tensor)
    if dq is not None and dq.constant:
        real = (graph.constants[dq.source].astype(np.float64) - dq.params.zero_point) * dq.params.scale
    elif graph.is_constant(tensor):
        real = graph.constants[tensor].astype(np.float64)
    else:
        return None
    real = np.broadcast_to(np.asarray(real).reshape(-1), (channels,))
    return np.clip(np.round(real / params.scale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)


def _add_bias(graph: Graph, name: str, values: np.ndarray, params: QuantParams) -> str:
    name = graph.add_constant(graph.unique_name(name), values)
    graph.quantization[name] = params
    return name


def _rewrite_matrix(graph: Graph, node: Node) -> int:
    """Conv (2-D images), Gemm (alpha = beta = 1, no transA) and MatMul with a constant weight."""
    x = _activation_input(graph, node.inputs[0])
    if x is None:
        return 0
    x_shape = graph.tensors[node.inputs[0]].shape
    own_activation = node.attrs.get("activation", "") if node.op_type == "FusedConv" else ""
    if node.op_type == "FusedConv" and ((len(node.inputs) > 3 and node.inputs[3])
                                        or own_activation not in QUANTIZED_ACTIVATIONS):
        return 0  # an addend or an activation int8 does not keep exact: stays float
    if node.op_type in ("Conv", "FusedConv"):
        if len(x_shape) != 4:
            return 0
        w = _weight(graph, node.inputs[1], 0)
        bias_input = node.inputs[2] if len(node.inputs) > 2 else ""
        transpose = False
    elif node.op_type == "Gemm":
        if node.attrs.get("transA", 0) or float(node.attrs.get("alpha", 1.0)) != 1.0 \
                or float(node.attrs.get("beta", 1.0)) != 1.0:
            return 0
        transpose = not node.attrs.get("transB", 0)
        w = _weight(graph, node.inputs[1], 1 if transpose else 0)
        bias_input = node.inputs[2] if len(node.inputs) > 2 else ""
    else:  # MatMul
        transpose = True
        w = _weight(graph, node.inputs[1], 1)
        bias_input = ""
        if w is not None and len(graph.tensors[w.source].shape) != 2:
            return 0
    if w is None:
        return 0
    bias_add = _bias_add(graph, node) if node.op_type == "MatMul" else None
    if bias_add is not None:
        bias_input = next(n for n in bias_add.inputs if n != node.outputs[0])
    try:
        activation, quantize, out = _quantized_output(graph, bias_add or node)
    except LookupError:
        return 0
    if own_activation and activation is not None:
        return 0
    weight_name, weight_params = w.source, w.params
    if transpose:  # QGemm takes W as [N, K], one scale per row
        weight_name = graph.add_constant(graph.unique_name(f"{w.source}_nk"),
                                         np.ascontiguousarray(graph.constants[w.source].T))
        weight_params = QuantParams(w.params.scale, w.params.zero_point, 0 if not w.params.per_tensor else -1)
    graph.quantization[weight_name] = weight_params
    channels = graph.constants[weight_name].shape[0]
    inputs = [x.source, weight_name]
    if bias_input:
        params = bias_params(x.params, weight_params)
        if params.scale.size == 1:
            params = QuantParams.make(np.full(channels, params.scale[0]), 0, 0)
        values = _bias(graph, bias_input, params, channels)
        if values is None:
            return 0
        inputs.append(_add_bias(graph, f"{node.name}_bias_int32", values, params))
    attrs = dict(node.attrs) if node.op_type in ("Conv", "FusedConv") else {}
    if not own_activation:
        attrs.update(_activation_attrs(graph, activation))
    op_type = "QConv" if node.op_type in ("Conv", "FusedConv") else "QGemm"
    removed = [node] + ([bias_add] if bias_add else []) + ([activation] if activation else []) + [quantize]
    _replace(graph, removed, _quantized_node(node, op_type, inputs, out, attrs, removed), out, graph.tensors[out])
    return 1


def _bias_add(graph: Graph, node: Node) -> Node | None:
    """The Add of a constant [N] vector that is a MatMul's only use (a bias, as FusedMatMul's)."""
    out = node.outputs[0]
    consumers = graph.consumers(out)
    if out in graph.outputs or len(consumers) != 1 or consumers[0].op_type != "Add" or consumers[0].domain:
        return None
    add = consumers[0]
    other = next((n for n in add.inputs if n != out), "")
    constant = _source(graph, other) if graph.producer(other) is not None else other
    n = graph.tensors[out].shape[-1]
    if not other or not graph.is_constant(constant) or graph.tensors[other].shape not in ((n,), (1, n)):
        return None
    return add


def _quantized_node(node: Node, op_type: str, inputs: list[str], out: str, attrs: dict,
                    absorbed: list[Node]) -> Node:
    sources = [s for n in absorbed for s in n.source_ops]
    return Node(f"{node.name}_int8", op_type, inputs, [out], attrs, domain=RBLNC_DOMAIN,
                source_ops=list(dict.fromkeys(sources)), source_location=node.source_location)


def _add_operand(graph: Graph, tensor: str) -> _Dequantized | None:
    """An activation, or a constant int8 (a bias onnxruntime quantised as an activation) per tensor."""
    dq = _activation_input(graph, tensor) if not graph.is_constant(_source(graph, tensor)) else _dequantized(graph, tensor)
    if dq is None or (dq.constant and (graph.tensors[dq.source].dtype not in _INT8 or not dq.params.per_tensor)):
        return None
    graph.quantization.setdefault(dq.source, dq.params)
    return dq


def _source(graph: Graph, tensor: str) -> str:
    producer = graph.producer(tensor)
    return producer.inputs[0] if producer is not None and producer.op_type == "DequantizeLinear" else tensor


def _rewrite_add(graph: Graph, node: Node) -> int:
    a, b = (_add_operand(graph, n) for n in node.inputs[:2])
    if a is None or b is None or (a.constant and b.constant):
        return 0
    try:
        activation, quantize, out = _quantized_output(graph, node)
    except LookupError:
        return 0
    removed = [node] + ([activation] if activation else []) + [quantize]
    _replace(graph, removed, _quantized_node(node, "QAdd", [a.source, b.source], out,
                                             _activation_attrs(graph, activation), removed),
             out, graph.tensors[out])
    return 1


def _unactivated_output(graph: Graph, node: Node) -> tuple[Node, str] | None:
    """(the QuantizeLinear, its output) right after `node`, or None when there is none or an
    activation sits between them (pools and concatenations carry none)."""
    try:
        activation, quantize, out = _quantized_output(graph, node)
    except LookupError:
        return None
    return None if activation is not None else (quantize, out)


def _rewrite_pool(graph: Graph, node: Node) -> int:
    x = _activation_input(graph, node.inputs[0])
    if x is None or len(graph.tensors[node.inputs[0]].shape) != 4:
        return 0
    if node.op_type == "AveragePool" and math.prod(node.attrs["kernel_shape"]) * 255 >= 2**24:
        return 0  # QAveragePool's window sums are exact in fp32 below 2^24 only
    found = _unactivated_output(graph, node)
    if found is None:
        return 0
    quantize, out = found
    attrs = dict(node.attrs) if node.op_type in ("MaxPool", "AveragePool") else {}
    if node.op_type == "MaxPool" and (len(node.outputs) > 1 and node.outputs[1]):
        return 0  # the Indices output stays in float
    removed = [node, quantize]
    _replace(graph, removed, _quantized_node(node, f"Q{node.op_type}", [x.source], out, attrs, removed),
             out, graph.tensors[out])
    return 1


def _rewrite_concat(graph: Graph, node: Node) -> int:
    """DequantizeLinear of int8 activations -> Concat -> QuantizeLinear: a QConcat (each input
    requantised to the result's params, copied where they are the same)."""
    inputs = [_activation_input(graph, name) if name else None for name in node.inputs]
    if not inputs or any(x is None for x in inputs):
        return 0
    found = _unactivated_output(graph, node)
    if found is None:
        return 0
    quantize, out = found
    removed = [node, quantize]
    _replace(graph, removed, _quantized_node(node, "QConcat", [x.source for x in inputs], out,
                                             {"axis": int(node.attrs["axis"])}, removed),
             out, graph.tensors[out])
    return 1


def _rewrite_view(graph: Graph, node: Node) -> int:
    """DequantizeLinear -> view (or nearest Resize, which copies values) -> QuantizeLinear with the
    same params: the view on the integers."""
    x = _activation_input(graph, node.inputs[0])
    if x is None:
        return 0
    try:
        activation, quantize, out = _quantized_output(graph, node)
    except LookupError:
        return 0
    if activation is not None or not graph.quantization[out].same_as(x.params):
        return 0
    out_info = TensorInfo(graph.tensors[out].dtype, graph.tensors[node.outputs[0]].shape)
    if out_info.dtype != graph.tensors[x.source].dtype:
        return 0
    moved = Node(node.name, node.op_type, [x.source] + node.inputs[1:], [out], dict(node.attrs),
                 source_ops=node.source_ops, source_location=node.source_location)
    _replace(graph, [node, quantize], moved, out, out_info)
    return 1


_REWRITERS = {"Conv": _rewrite_matrix, "Gemm": _rewrite_matrix, "MatMul": _rewrite_matrix,
              "Add": _rewrite_add, "GlobalAveragePool": _rewrite_pool, "MaxPool": _rewrite_pool,
              "AveragePool": _rewrite_pool, "Concat": _rewrite_concat}


def _drop_unused(graph: Graph) -> None:
    """DequantizeLinear nodes nothing reads any more, then constants nothing reads."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op_type == "DequantizeLinear" and not node.domain and not graph.consumers(node.outputs[0]) \
                    and node.outputs[0] not in graph.outputs:
                graph.remove_node(node.name)
                changed = True
    for name in list(graph.constants):
        if not graph.consumers(name) and name not in graph.outputs:
            graph.remove_constant(name)
            graph.quantization.pop(name, None)
    for name in list(graph.quantization):
        if name not in graph.tensors:
            del graph.quantization[name]
