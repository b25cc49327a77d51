"""rblnc's own post-training quantisation: picks the ops int8 pays for, calibrates their
activations, chooses scales and writes the QDQ form that qdq.py then rewrites into int8 ops.

Weights: symmetric int8 per output channel (scale = max |w| / 127). Activations: asymmetric
int8 per tensor over the calibrated range widened to hold 0 (so 0 and ReLU's clamp are exact):
scale = (high - low) / 255, zero point = round(-128 - low / scale). Ops that gain nothing from
int8 (elementwise, normalisations, ...) stay in the float precision, with Quantize/DequantizeLinear
where they meet int8 ops."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..ir.graph import RBLNC_DOMAIN, Graph, Node, TensorInfo
from ..quant_params import QuantParams
from .calibrate import calibrate

# Ops int8 pays for (matrix engines) and those that follow them cheaply on the integers.
_MATRIX = ("Conv", "Gemm", "MatMul")
_FOLLOWERS = ("Add", "MaxPool", "GlobalAveragePool")
# Ops whose result has the range of their input (a max selects an input value; views move them).
_SAME_RANGE = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


def quantize_float_graph(graph: Graph, samples: Any, method: str = "minmax", *,
                         progress: Callable[[str], None] | None = None,
                         show_progress: bool | None = None) -> tuple[int, dict[str, tuple[float, float]]]:
    """Writes QDQ around every op worth int8; returns (samples used, calibrated ranges)."""
    _unfuse(graph)
    chosen = [n for n in graph.topological_order() if _worth_int8(graph, n)]
    activations: list[str] = []
    for node in chosen:
        for name in _activation_inputs(graph, node):
            activations.append(name)
        activations.append(_result(graph, node))
    # A view between two int8 ops (Flatten before a Gemm) keeps the integers: quantise its input too.
    for node in chosen:
        for name in _activation_inputs(graph, node):
            producer = graph.producer(name)
            if producer is not None and producer.op_type in _SAME_RANGE and not producer.domain:
                activations.append(producer.inputs[0])
    activations = list(dict.fromkeys(activations))
    ranges, count = calibrate(graph, samples, activations, method, progress=progress, show_progress=show_progress)
    _share_ranges(graph, ranges)
    for node in chosen:
        _quantize_weight(graph, node)
    for name in activations:
        _insert_qdq(graph, name, activation_params(*ranges[name]))
    return count, ranges


def activation_params(low: float, high: float) -> QuantParams:
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:  # zero on every sample (calibrate warned): any scale represents it
        return QuantParams.make(1.0, -128)
    scale = (high - low) / 255.0
    zero = int(np.clip(round(-128 - low / scale), -128, 127))
    return QuantParams.make(scale, zero)


def _share_ranges(graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
    """A MaxPool's or view's result takes its input's range: it holds a subset of the same values,
    so the same params make it exact (no requantisation)."""
    for node in graph.topological_order():
        if node.op_type in _SAME_RANGE and not node.domain and node.outputs[0] in ranges \
                and node.inputs[0] in ranges:
            ranges[node.outputs[0]] = ranges[node.inputs[0]]


def _unfuse(graph: Graph) -> None:
    """FusedConv / FusedGemm with an activation int8 keeps exact (none, Relu, Clip) become the
    standard op, the residual Add of a FusedConv's addend, and the activation: the form the QDQ
    rewrite reads (an int8 QConv, QAdd with the activation)."""
    for node in list(graph.topological_order()):
        if node.domain != RBLNC_DOMAIN or node.op_type not in ("FusedConv", "FusedGemm", "FusedMatMul"):
            continue
        activation = node.attrs.get("activation", "")
        if activation not in ("", "Relu", "Clip"):
            continue
        addend_position = {"FusedConv": 3, "FusedMatMul": 2}.get(node.op_type, len(node.inputs))
        addend = node.inputs[addend_position] if len(node.inputs) > addend_position else ""
        core = node.op_type.removeprefix("Fused")
        attrs = {k: v for k, v in node.attrs.items() if k not in ("activation", "activation_params")}
        out = node.outputs[0]
        info = graph.tensors[out]
        graph.remove_node(node.name)
        inputs = [i for i in node.inputs[:min(3, addend_position)]]
        while inputs and not inputs[-1]:
            inputs.pop()
        if not activation and not addend:
            graph.add_node(Node(node.name, core, inputs, [out], attrs, source_ops=node.source_ops,
                                source_location=node.source_location), [info])
            continue
        middle = graph.unique_name(f"{out}_before_activation") if activation else out
        if addend:
            product = graph.unique_name(f"{out}_before_addend")
            graph.add_node(Node(node.name, core, inputs, [product], attrs, source_ops=node.source_ops,
                                source_location=node.source_location), [info])
            graph.add_node(Node(graph.unique_name(f"{node.name}_addend"), "Add", [product, addend], [middle],
                                source_ops=node.source_ops, source_location=node.source_location), [info])
        else:
            graph.add_node(Node(node.name, core, inputs, [middle], attrs, source_ops=node.source_ops,
                                source_location=node.source_location), [info])
        if not activation:
            continue
        extra = []
        if activation == "Clip":
            low, high = node.attrs.get("activation_params", [-math.inf, math.inf])
            extra = [graph.add_constant(graph.unique_name(f"{node.name}_min"), np.float32(low)),
                     graph.add_constant(graph.unique_name(f"{node.name}_max"), np.float32(high))]
        graph.add_node(Node(graph.unique_name(f"{node.name}_activation"), activation, [middle] + extra, [out],
                            source_ops=node.source_ops, source_location=node.source_location), [info])


def _worth_int8(graph: Graph, node: Node) -> bool:
    if node.domain:
        return False
    if node.op_type in _MATRIX:
        x = graph.tensors[node.inputs[0]]
        if len(node.inputs) < 2 or not graph.is_constant(node.inputs[1]) or graph.is_constant(node.inputs[0]):
            return False
        if node.op_type == "Conv":
            return x.shape is not None and len(x.shape) == 4
        if node.op_type == "Gemm":
            return (not node.attrs.get("transA", 0) and float(node.attrs.get("alpha", 1.0)) == 1.0
                    and float(node.attrs.get("beta", 1.0)) == 1.0)
        return len(graph.tensors[node.inputs[1]].shape) == 2
    if node.op_type == "Add":
        return all(n and not graph.is_constant(n) for n in node.inputs[:2])
    if node.op_type in ("MaxPool", "GlobalAveragePool"):
        info = graph.tensors[node.inputs[0]]
        return info.shape is not None and len(info.shape) == 4 and len([o for o in node.outputs if o]) == 1
    return False


def _activation_inputs(graph: Graph, node: Node) -> list[str]:
    count = 2 if node.op_type == "Add" else 1
    return [n for n in node.inputs[:count] if n and not graph.is_constant(n)]


def _result(graph: Graph, node: Node) -> str:
    """The tensor to quantise after `node`: its output, or its sole Relu/Clip's (after a MatMul's
    bias Add)."""
    out = node.outputs[0]
    consumers = graph.consumers(out)
    if node.op_type == "MatMul" and len(consumers) == 1 and out not in graph.outputs \
            and consumers[0].op_type == "Add" and any(graph.is_constant(n) for n in consumers[0].inputs):
        out = consumers[0].outputs[0]
        consumers = graph.consumers(out)
    if node.op_type in _MATRIX + ("Add",) and len(consumers) == 1 and out not in graph.outputs:
        follower = consumers[0]
        if follower.op_type == "Relu" or (follower.op_type == "Clip" and all(
                not n or graph.is_constant(n) for n in follower.inputs[1:])):
            return follower.outputs[0]
    return out


def _quantize_weight(graph: Graph, node: Node) -> None:
    if node.op_type not in _MATRIX:
        return
    name = node.inputs[1]
    weights = np.asarray(graph.constants[name], dtype=np.float32)
    axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attrs.get("transB", 0)) else 1
    reduce_axes = tuple(a for a in range(weights.ndim) if a != axis)
    peak = np.max(np.abs(weights), axis=reduce_axes)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [-1 if a == axis else 1 for a in range(weights.ndim)]
    integers = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
    stored = graph.add_constant(graph.unique_name(f"{name}_int8"), integers)
    scale_name = graph.add_constant(graph.unique_name(f"{name}_scale"), scale)
    zero_name = graph.add_constant(graph.unique_name(f"{name}_zero_point"), np.zeros(scale.shape, np.int8))
    dequantised = graph.unique_name(f"{name}_dequantized")
    graph.add_node(Node(graph.unique_name(f"{name}_DequantizeLinear"), "DequantizeLinear",
                        [stored, scale_name, zero_name], [dequantised], {"axis": axis}),
                   [TensorInfo(np.dtype(np.float32), weights.shape)])
    graph.set_input(node, 1, dequantised)


def _insert_qdq(graph: Graph, name: str, params: QuantParams) -> None:
    """`name` now means its quantised value: its producer writes `name`_float, then
    QuantizeLinear and DequantizeLinear give back `name` (so consumers and outputs keep it)."""
    info = graph.tensors[name]
    scale = graph.add_constant(graph.unique_name(f"{name}_scale"), params.scale.reshape(()))
    zero = graph.add_constant(graph.unique_name(f"{name}_zero_point"), params.zero_point.astype(np.int8).reshape(()))
    quantised = graph.unique_name(f"{name}_quantized")
    producer = graph.producer(name)
    if producer is None:  # a graph input: its consumers read the dequantised copy
        source, result = name, graph.unique_name(f"{name}_dequantized")
        consumers = list(graph.consumers(name))
    else:
        source = graph.unique_name(f"{name}_float")
        graph.remove_node(producer.name)
        graph.add_node(Node(producer.name, producer.op_type, producer.inputs,
                            [source if o == name else o for o in producer.outputs], producer.attrs,
                            producer.domain, producer.source_ops, producer.source_location,
                            producer.implicit_inputs), None)
        graph.tensors[source] = info
        result, consumers = name, []
        graph.tensors.pop(name, None)
    graph.add_node(Node(graph.unique_name(f"{name}_QuantizeLinear"), "QuantizeLinear", [source, scale, zero],
                        [quantised]), [TensorInfo(np.dtype(np.int8), info.shape)])
    graph.add_node(Node(graph.unique_name(f"{name}_DequantizeLinear"), "DequantizeLinear", [quantised, scale, zero],
                        [result]), [info])
    for consumer in consumers:
        for i, input_name in enumerate(consumer.inputs):
            if input_name == name:
                graph.set_input(consumer, i, result)
