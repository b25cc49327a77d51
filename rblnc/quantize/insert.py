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

from ..cost_model import estimate_node, kernel_time_ns, op_flops, op_shape, runs_on_matrix_engine
from ..errors import CompileError
from ..ir.graph import RBLNC_DOMAIN, Graph, Node, TensorInfo
from ..quant_params import QuantParams
from ..target import TargetSpec
from .calibrate import calibrate

INT8_OP_CHOICES = ("auto", "all")

# Ops int8 pays for (matrix engines) and those that follow them cheaply on the integers.
_MATRIX = ("Conv", "Gemm", "MatMul")
_FOLLOWERS = ("Add", "MaxPool", "GlobalAveragePool")
# Activations a fused op may carry that int8 cannot keep exact: with int8_ops="all" they are split
# off and run in float as this node: {activation: (op type, domain, attribute names of its params)}.
_FLOAT_ACTIVATIONS = {
    "HardSwish": ("HardSwish", "", ()), "Sigmoid": ("Sigmoid", "", ()), "Tanh": ("Tanh", "", ()),
    "LeakyRelu": ("LeakyRelu", "", ("alpha",)), "HardSigmoid": ("HardSigmoid", "", ("alpha", "beta")),
    "SiLU": ("SiLU", RBLNC_DOMAIN, ()), "Gelu": ("Gelu", RBLNC_DOMAIN, ()), "GeluTanh": ("Gelu", RBLNC_DOMAIN, ()),
}
# Ops whose result has the range of their input (a max selects an input value; views move them).
_SAME_RANGE = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


def quantize_float_graph(graph: Graph, samples: Any, method: str = "minmax", *,
                         progress: Callable[[str], None] | None = None, show_progress: bool | None = None,
                         target: TargetSpec | None = None, ops: str = "auto",
                         ) -> tuple[int, dict[str, tuple[float, float]]]:
    """Writes QDQ around every op worth int8; returns (samples used, calibrated ranges). With
    ops="auto" and a target, an op whose modelled int8 saving does not pay for the conversions
    it needs at float neighbours stays in float; ops="all" takes every op int8 can run."""
    if ops not in INT8_OP_CHOICES:
        raise CompileError(f"int8_ops must be one of {', '.join(INT8_OP_CHOICES)}, got {ops!r}")
    unfused = _unfuse(graph, split_float_activations=ops == "all")
    chosen = [n for n in graph.topological_order() if _worth_int8(graph, n)]
    if ops == "auto" and target is not None:
        split_addends = {name for _, made, _ in unfused.values() for name in made if name.endswith("_addend")}
        chosen = profitable(graph, chosen, target, split_addends)
    _refuse(graph, unfused, {n.name for n in chosen})
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


def _refuse(graph: Graph, unfused: dict[str, tuple[Node, list[str], list[str]]], chosen: set[str]) -> None:
    """Puts back the fused ops whose core op stays in float (one command, as the passes made it)."""
    for core, (original, made, constants) in unfused.items():
        if core in chosen:
            continue
        info = graph.tensors[original.outputs[0]]
        for name in reversed(made):
            graph.remove_node(name)
        for name in constants:
            graph.remove_constant(name)
        graph.add_node(original, [info])


def _unfuse(graph: Graph, split_float_activations: bool = False) -> dict[str, tuple[Node, list[str], list[str]]]:
    """FusedConv / FusedGemm / FusedMatMul with an activation int8 keeps exact (none, Relu, Clip)
    become the standard op, the Add of the addend or bias, and the activation: the form the QDQ
    rewrite reads (QConv / QGemm with the activation, a QAdd). With `split_float_activations`
    (int8_ops="all"), one with another activation (HardSwish, SiLU, ...) is split too: the op runs
    in int8 and the activation in float between a Dequantize and a Quantize, as onnxruntime's QDQ
    files have it. Returns {core node name: (the fused node, the nodes and the constants made in its
    place)}, so `_refuse` can undo what stays float."""
    unfused: dict[str, tuple[Node, list[str], list[str]]] = {}
    for node in list(graph.topological_order()):
        if node.domain != RBLNC_DOMAIN or node.op_type not in ("FusedConv", "FusedGemm", "FusedMatMul"):
            continue
        activation = node.attrs.get("activation", "")
        if activation not in ("", "Relu", "Clip") and not (split_float_activations
                                                           and activation in _FLOAT_ACTIVATIONS):
            continue
        addend_position = {"FusedConv": 3, "FusedMatMul": 2}.get(node.op_type, len(node.inputs))
        addend = node.inputs[addend_position] if len(node.inputs) > addend_position else ""
        attrs = {k: v for k, v in node.attrs.items() if k not in ("activation", "activation_params")}
        out = node.outputs[0]
        info = graph.tensors[out]
        graph.remove_node(node.name)
        inputs = list(node.inputs[:min(3, addend_position)])
        while inputs and not inputs[-1]:
            inputs.pop()
        made: list[str] = []
        constants: list[str] = []

        def add(name: str, op_type: str, node_inputs: list[str], output: str, node_attrs: dict | None = None,
                domain: str = "") -> None:
            graph.add_node(Node(name, op_type, node_inputs, [output], node_attrs or {}, domain=domain,
                                source_ops=node.source_ops, source_location=node.source_location), [info])
            made.append(name)

        steps = [step for step in ("addend" if addend else "", activation) if step]
        # What each node writes: the core op, then each step; the last one writes `out`.
        results = [graph.unique_name(f"{out}_core")] if steps else []
        results += [graph.unique_name(f"{out}_after_{step}") for step in steps[:-1]] + [out]
        add(node.name, node.op_type.removeprefix("Fused"), inputs, results[0], attrs)
        for step, source, result in zip(steps, results, results[1:]):
            if step == "addend":
                add(graph.unique_name(f"{node.name}_addend"), "Add", [source, addend], result)
                continue
            extra = []
            if activation == "Clip":
                low, high = node.attrs.get("activation_params", [-math.inf, math.inf])
                extra = [graph.add_constant(graph.unique_name(f"{node.name}_min"), np.float32(low)),
                         graph.add_constant(graph.unique_name(f"{node.name}_max"), np.float32(high))]
                constants += extra
            if activation in _FLOAT_ACTIVATIONS:
                op_type, domain, names = _FLOAT_ACTIVATIONS[activation]
                params = dict(zip(names, map(float, node.attrs.get("activation_params", []))))
                if activation.startswith("Gelu"):
                    params = {"approximate": "tanh" if activation == "GeluTanh" else "none"}
                add(graph.unique_name(f"{node.name}_activation"), op_type, [source], result, params, domain)
                continue
            add(graph.unique_name(f"{node.name}_activation"), activation, [source] + extra, result)
        unfused[node.name] = (node, made, constants)
    return unfused


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


def profitable(graph: Graph, chosen: list[Node], target: TargetSpec, split_addends: set[str] = frozenset()
               ) -> list[Node]:
    """The chosen ops in the connected int8 regions whose modelled time saved in int8 (against
    bf16) exceeds the Quantize / DequantizeLinear commands at the region's float boundary. A
    region is kept or dropped whole: dropping one op of a chain would only add boundaries. An Add split
    out of a FusedConv (`split_addends`) cost float nothing, so int8 pays all of its time."""
    names = {n.name for n in chosen}
    region = {name: name for name in names}
    results = {_result(graph, n): n for n in chosen}

    def root(name: str) -> str:
        while region[name] != name:
            region[name] = region[region[name]]
            name = region[name]
        return name

    for node in chosen:
        for name in _activation_inputs(graph, node):
            producer = _int8_producer(graph, name, results)
            if producer is not None and producer.name in names:
                region[root(node.name)] = root(producer.name)
    members: dict[str, dict[str, Node]] = {}
    for node in chosen:
        members.setdefault(root(node.name), {})[node.name] = node
    kept: set[str] = set()
    for group in members.values():
        saving = sum(_int8_saving_ns(graph, node, target, node.name in split_addends) for node in group.values())
        conversions = sum(_conversion_ns(graph, node, group, results, target) for node in group.values())
        if saving > conversions:
            kept.update(group)
    return [n for n in chosen if n.name in kept]


def _int8_producer(graph: Graph, name: str, results: dict[str, Node]) -> Node | None:
    """The chosen op whose result (after its Relu/Clip) `name` is, looking through views (they
    keep int8 values int8); else the op that makes it."""
    producer = graph.producer(name)
    while name not in results and producer is not None and producer.op_type in _SAME_RANGE \
            and producer.op_type != "MaxPool" and not producer.domain:
        name = producer.inputs[0]
        producer = graph.producer(name)
    return results.get(name, producer)


def _int8_saving_ns(graph: Graph, node: Node, target: TargetSpec, free_in_float: bool = False) -> float:
    """bf16 time minus int8 time of the op, both by the cost model's roofline (int8 operands
    take half of bf16's bytes)."""
    bf16 = estimate_node(node, graph, target, "bf16")
    op = op_shape(node, graph)
    if op is None or "int8" not in target.peak_flops:
        return 0.0
    activations = (bf16.input_bytes + bf16.output_bytes) // 2
    in_sram = activations <= target.sram_bytes
    int8, _ = kernel_time_ns(op_flops(op), activations if in_sram else 0,
                             bf16.weight_bytes // 2 + (0 if in_sram else activations), target, "int8",
                             matrix=runs_on_matrix_engine(op))
    return (0.0 if free_in_float else bf16.time_ns) - int8


def _conversion_ns(graph: Graph, node: Node, kept: dict[str, Node], results: dict[str, Node],
                   target: TargetSpec) -> float:
    """Modelled time of the conversions `node` needs: a QuantizeLinear per activation input not
    made by a kept op, a DequantizeLinear when a reader of its result is not a kept op."""
    def conversion(name: str) -> float:
        elements = graph.tensors[name].size
        time, _ = kernel_time_ns(3 * elements, 3 * elements, 0, target, "bf16", matrix=False)
        return time

    total = 0.0
    for name in _activation_inputs(graph, node):
        producer = _int8_producer(graph, name, results)
        if producer is None or producer.name not in kept:
            total += conversion(name)
    result = _result(graph, node)
    readers = list(graph.consumers(result))
    while readers and all(r.op_type in _SAME_RANGE and r.op_type != "MaxPool" and not r.domain for r in readers):
        readers = [c for r in readers for c in graph.consumers(r.outputs[0])]
    if result in graph.outputs or any(r.name not in kept for r in readers):
        total += conversion(result)
    return total
