"""rblnc's own post-training quantisation: picks the ops int8 pays for, calibrates their
activations, chooses scales and writes the QDQ form that qdq.py then rewrites into int8 ops.

Weights: symmetric int8 per output channel (scale = max |w| / 127). Activations: asymmetric
int8 per tensor over the calibrated range widened to hold 0 (so 0 and ReLU's clamp are exact):
scale = (high - low) / 255, zero point = round(-128 - low / scale). Ops that gain nothing from
int8 (elementwise, normalisations, ...) stay in the float precision, with Quantize/DequantizeLinear
where they meet int8 ops."""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any, Callable, Iterable

import numpy as np

from ..cost_model import estimate_node, kernel_time_ns, op_flops, op_shape, runs_on_matrix_engine
from ..errors import CompileError
from ..ir.graph import RBLNC_DOMAIN, Graph, Node, TensorInfo
from ..ir.quantized_ops import is_nearest_resize
from ..quant_params import QuantParams
from ..target import TargetSpec
from .calibrate import calibrate
from .output_budget import DEFAULT_MIN_OUTPUT_SQNR_DB, check_budget, fewest_to_revert
from .sensitivity import (
    DEFAULT_MIN_SQNR_DB, LayerSensitivity, measure_sqnr, output_sqnr, quantize_weights, retain, weight_axis,
)

INT8_OP_CHOICES = ("auto", "all")

# Ops int8 pays for (matrix engines) and those that follow them cheaply on the integers.
_MATRIX = ("Conv", "Gemm", "MatMul")
_FOLLOWERS = ("Add", "MaxPool", "GlobalAveragePool", "AveragePool", "Concat")
# Activations a fused op may carry that int8 cannot keep exact: with int8_ops="all" they are split
# off and run in float as this node: {activation: (op type, domain, attribute names of its params)}.
_FLOAT_ACTIVATIONS = {
    "HardSwish": ("HardSwish", "", ()), "Sigmoid": ("Sigmoid", "", ()), "Tanh": ("Tanh", "", ()),
    "LeakyRelu": ("LeakyRelu", "", ("alpha",)), "HardSigmoid": ("HardSigmoid", "", ("alpha", "beta")),
    "SiLU": ("SiLU", RBLNC_DOMAIN, ()), "Gelu": ("Gelu", RBLNC_DOMAIN, ()), "GeluTanh": ("Gelu", RBLNC_DOMAIN, ()),
}
# Ops whose result has the range of their input (a max selects an input value; views move them).
_SAME_RANGE = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


def _same_range(node: Node | None) -> bool:
    """One of _SAME_RANGE, or a nearest-neighbour Resize (a UNet's upsampling: it copies values)."""
    if node is None or node.domain:
        return False
    return node.op_type in _SAME_RANGE or is_nearest_resize(node)


def quantize_float_graph(graph: Graph, samples: Any, method: str = "minmax", *,
                         progress: Callable[[str], None] | None = None, show_progress: bool | None = None,
                         target: TargetSpec | None = None, ops: str = "auto", keep_float: Iterable[str] = (),
                         min_sqnr_db: float | None = None, min_output_sqnr_db: float | None = None,
                         ) -> tuple[int, dict[str, tuple[float, float]], list[LayerSensitivity], dict[str, float]]:
    """Writes QDQ around every op worth int8; returns (samples used, calibrated ranges, each
    candidate op's measured SQNR and final precision, each model output's SQNR once quantised
    against the float model: sensitivity.output_sqnr; empty when no op is int8). `keep_float`
    (node names, source-op names or op types) stay in float whatever `ops` says. An op whose SQNR
    (sensitivity.py) is below the accuracy budget stays in float: `min_sqnr_db`, by default
    DEFAULT_MIN_SQNR_DB with ops="auto" and none with ops="all" (which then takes every op int8
    can run, still measuring each one's SQNR; given a budget, every op that meets it). With
    ops="auto" and a target, an op whose modelled int8 saving does not pay for the conversions
    it needs at float neighbours stays in float too. Last, the whole model's budget
    `min_output_sqnr_db` (output_budget.py; by default DEFAULT_MIN_OUTPUT_SQNR_DB with ops="auto",
    none with "all"): while a model output's SQNR is below it, the most sensitive int8 ops go back
    to float."""
    if ops not in INT8_OP_CHOICES:
        raise CompileError(f"int8_ops must be one of {', '.join(INT8_OP_CHOICES)}, got {ops!r}")
    check_budget(min_sqnr_db, "min_sqnr_db")
    check_budget(min_output_sqnr_db, "min_output_sqnr_db")
    if min_sqnr_db is None and ops == "auto":
        min_sqnr_db = DEFAULT_MIN_SQNR_DB
    node_names = {n.name for n in graph.nodes}
    unfused = _unfuse(graph, split_float_activations=ops == "all")
    # The Adds _unfuse splits out of a fused conv or matmul ("<name>_addend") are listed on their
    # own in the report and `rblnc inspect`, so keep_float may name them too.
    split_adds = {name for _, made, _ in unfused.values() for name in made if name.endswith("_addend")}
    user_kept = match_keep_float(graph, keep_float, node_names | split_adds)
    candidates: list[Node] = []
    for node in graph.topological_order():
        if _worth_int8(graph, node) or _concat_of_candidates(graph, node, candidates):
            candidates.append(node)
    # Every candidate is calibrated and measured, also those that will stay float: the report
    # shows what int8 would cost each of them.
    retained = retain(samples)
    ranges, count = calibrate(graph, retained, _activations(graph, candidates), method, progress=progress,
                              show_progress=show_progress)
    _share_ranges(graph, ranges)
    symmetric = target is not None and target.int8_activations == "symmetric"
    params = {name: activation_params(*bounds, symmetric=symmetric) for name, bounds in ranges.items()}
    references: list[dict[str, np.ndarray]] = []
    sqnr = measure_sqnr(graph, candidates, {n.name: _activation_inputs(graph, n) for n in candidates}, params,
                        retained.kept, model_outputs=references)
    layers = {n.name: LayerSensitivity(n.name, n.op_type, sqnr[n.name]) for n in candidates}

    def stay_float(node: Node, reason: str) -> None:
        layers[node.name].int8, layers[node.name].reason = False, reason

    chosen, below_budget = [], []
    for node in candidates:
        entry = next((e for e in user_kept if e in (node.name, node.op_type) or e in node.source_ops), None)
        if entry is not None:
            stay_float(node, f"keep_float {entry!r}")
        elif min_sqnr_db is not None and sqnr[node.name] < min_sqnr_db:
            stay_float(node, f"SQNR {sqnr[node.name]:.1f} dB < min_sqnr_db {min_sqnr_db:g} dB")
            below_budget.append(node)
        else:
            chosen.append(node)
    if below_budget:
        for producer, reason in _breaking_producers(graph, candidates, below_budget, params, retained.kept,
                                                    min_sqnr_db):
            if layers[producer.name].int8:
                stay_float(producer, reason)
        chosen = [n for n in chosen if layers[n.name].int8]
    # The ops split out of a fused one whose core op stays float go back into it (_refuse).
    floating = {n.name for n in candidates} - {n.name for n in chosen}
    for core, (_, made, _) in unfused.items():
        if core in floating:
            for node in chosen:
                if node.name in made:
                    stay_float(node, f"fused into {core}, which stays float")
    chosen = [n for n in chosen if layers[n.name].int8]
    if ops == "auto" and target is not None:
        split_addends = {name for _, made, _ in unfused.values() for name in made if name.endswith("_addend")}
        paying = {n.name for n in profitable(graph, chosen, target, split_addends)}
        for node in chosen:
            if node.name not in paying:
                stay_float(node, "int8 saves less modelled time than its conversions cost")
        chosen = [n for n in chosen if n.name in paying]
    if min_output_sqnr_db is None and ops == "auto":
        min_output_sqnr_db = DEFAULT_MIN_OUTPUT_SQNR_DB
    samples_for_outputs = retained.kept[:len(references)]
    made_by = {name: core for core, (_, made, _) in unfused.items() for name in made if name != core}

    def int8_without(reverted: set[str]) -> list[str]:
        """The chosen ops still int8 once `reverted` go back to float (with what was split off them)."""
        return [n.name for n in chosen if n.name not in reverted and made_by.get(n.name) not in reverted]

    def outputs_with_float(k: int) -> dict[str, float]:
        trial = graph.copy()
        _write_qdq(trial, unfused, int8_without({n.name for n in ranked[:k]}), params)
        return output_sqnr(trial, samples_for_outputs, references)

    # Most sensitive first; an op split out of a fused one goes back with its core op.
    ranked = sorted((n for n in chosen if n.name not in made_by), key=lambda n: sqnr[n.name])
    if min_output_sqnr_db is None:
        reverted, outputs = 0, outputs_with_float(0) if chosen else {}
    else:
        reverted, outputs = fewest_to_revert(len(ranked), outputs_with_float, min_output_sqnr_db, progress)
    if reverted:
        reason = (f"the model's output budget (min_output_sqnr_db {min_output_sqnr_db:g} dB) needs the "
                  f"{reverted} most sensitive int8 op(s) in float")
        kept = set(int8_without({n.name for n in ranked[:reverted]}))
        for node in chosen:
            if node.name not in kept:
                stay_float(node, reason)
        chosen = [n for n in chosen if n.name in kept]
        if not chosen:
            outputs = {}  # nothing is int8: the model is the float one
            if progress is not None:
                progress(f"  no op stays int8 within the output budget min_output_sqnr_db {min_output_sqnr_db:g} dB")
    _write_qdq(graph, unfused, [n.name for n in chosen], params)
    return count, ranges, list(layers.values()), outputs


def _write_qdq(graph: Graph, unfused: dict[str, tuple[Node, list[str], list[str]]], chosen: list[str],
               params: dict[str, QuantParams]) -> None:
    """Writes the QDQ form of `chosen` (node names) into `graph`: the fused ops whose core stays
    float put back, int8 weights, and Quantize/DequantizeLinear on the activations."""
    _refuse(graph, unfused, set(chosen))
    nodes = [graph.node(name) for name in chosen]
    activations = _activations(graph, nodes)
    for node in nodes:
        _quantize_weight(graph, node)
    # An int8 op's result is int8 for every reader; a float op's result that an int8 op reads is
    # quantised for the int8 readers only (the views between them included): the float readers
    # (the ops kept in float above all) keep the float value.
    results = {_result(graph, node) for node in nodes}
    readers = set(chosen) | {n.name for n in graph.nodes if _same_range(n)
                             and n.outputs[0] in activations}
    for name in activations:
        _insert_qdq(graph, name, params[name], None if name in results else readers)


def _breaking_producers(graph: Graph, candidates: list[Node], below: list[Node], params: dict[str, QuantParams],
                        samples: list[Any], min_sqnr_db: float) -> list[tuple[Node, str]]:
    """The candidates whose int8 result would break an op kept in float by the budget: an op whose
    SQNR stays below `min_sqnr_db` with only its inputs in int8 (its weights float) is broken by
    its input's int8 range (an outlier channel), and keeping it in float does not help while the
    op writing that input is int8, whose result every reader reads in int8. So that op (and, for
    an Add or a pool, which pass their input's range on, the ops writing theirs) stays float too.
    Measured again only for the ops `below` the budget (usually none)."""
    activation_sqnr = measure_sqnr(graph, below, {n.name: _activation_inputs(graph, n) for n in below}, params,
                                   samples, quantise_weights=False)
    writers = {_result(graph, n): n for n in candidates}
    found: list[tuple[Node, str]] = []
    for broken in below:
        if activation_sqnr[broken.name] >= min_sqnr_db:
            continue  # its weights' int8, not its input's, costs it the budget
        reason = (f"its int8 result would break {broken.name} "
                  f"(SQNR {activation_sqnr[broken.name]:.1f} dB from that input's int8 alone)")
        pending, seen = list(_activation_inputs(graph, broken)), set()
        while pending:
            tensor = pending.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            producer = graph.producer(tensor)
            if tensor not in writers and _same_range(producer):
                pending.append(producer.inputs[0])  # a view between them: the same values
                continue
            writer = writers.get(tensor)
            if writer is None:
                continue
            found.append((writer, reason))
            if writer.op_type in _FOLLOWERS:
                pending.extend(_activation_inputs(graph, writer))
    return found


def match_keep_float(graph: Graph, entries: Iterable[str] | str, node_names: set[str] | None = None) -> list[str]:
    """The keep_float entries, each checked to name a node (one of `node_names`, by default
    those of `graph`, or as the source model calls it) or an op type rblnc quantises; a
    CompileError names an entry that does neither, with close matches."""
    entries = [entries] if isinstance(entries, str) else list(entries)
    node_names = {n.name for n in graph.nodes} if node_names is None else node_names
    names = node_names | {s for n in graph.nodes for s in n.source_ops}
    op_types = _MATRIX + _FOLLOWERS
    for entry in entries:
        if not isinstance(entry, str):
            raise CompileError(f"keep_float entries are node names or op types (strings), got {entry!r}")
        if entry not in names and entry not in op_types:
            close = difflib.get_close_matches(entry, sorted(names | set(op_types)), n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise CompileError(f"keep_float entry {entry!r} names no node of the model nor an op type rblnc "
                               f"quantises ({', '.join(op_types)}){hint}")
    return entries


def _activations(graph: Graph, chosen: list[Node]) -> list[str]:
    """The tensors to calibrate and quantise for `chosen`: their activation inputs and results."""
    activations: list[str] = []
    for node in chosen:
        for name in _activation_inputs(graph, node):
            activations.append(name)
        activations.append(_result(graph, node))
    # A view between two int8 ops (Flatten before a Gemm) keeps the integers: quantise its input too.
    for node in chosen:
        for name in _activation_inputs(graph, node):
            producer = graph.producer(name)
            if _same_range(producer):
                activations.append(producer.inputs[0])
    return list(dict.fromkeys(activations))


def activation_params(low: float, high: float, symmetric: bool = False) -> QuantParams:
    """Asymmetric: the range widened to hold 0 over the 256 steps (0 exact). Symmetric (the
    target's [int8] activations): zero point 0 and scale max|x| / 127, so [-127, 127] hold the
    range and -128 stays unused, as TensorRT's; a ReLU output then uses half the steps."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:  # zero on every sample (calibrate warned): any scale represents it
        return QuantParams.make(1.0, 0 if symmetric else -128)
    if symmetric:
        return QuantParams.make(max(-low, high) / 127.0, 0)
    scale = (high - low) / 255.0
    zero = int(np.clip(round(-128 - low / scale), -128, 127))
    return QuantParams.make(scale, zero)


def _share_ranges(graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
    """Tensors whose values an op only moves share one range, the union of theirs, so the same
    params make the op exact (no requantisation): a MaxPool's or view's result and its input (its
    values are a subset of the input's, so the union is the input's range), and a Concat's result
    and every one of its inputs (the result's range is the union of the inputs'). So an int8
    Concat is a copy; the price is a coarser scale on an input narrower than the others (an op
    writing it keeps less of its own range's resolution), against a requantisation per input and
    its 1 LSB of rounding otherwise."""
    group = {name: name for name in ranges}
    derived: set[str] = set()  # results whose range follows from their inputs' (not calibrated on their own)

    def root(name: str) -> str:
        while group[name] != name:
            group[name] = group[group[name]]
            name = group[name]
        return name

    for node in graph.topological_order():
        if node.domain or node.outputs[0] not in ranges:
            continue
        if _same_range(node):
            linked = node.inputs[:1]
        elif node.op_type == "Concat":
            linked = node.inputs
        else:
            continue
        for name in linked:
            if name in ranges:
                group[root(name)] = root(node.outputs[0])
                derived.add(node.outputs[0])
    # A group's range: the union of its members' whose range is their own (a MaxPool's or view's
    # result takes its input's, a Concat's result its inputs' union).
    union: dict[str, tuple[float, float]] = {}
    for name, (low, high) in sorted(ranges.items(), key=lambda item: item[0] in derived):
        key = root(name)
        if key in union and name in derived:
            continue
        previous = union.get(key, (low, high))
        union[key] = (min(previous[0], low), max(previous[1], high))
    for name in ranges:
        ranges[name] = union[root(name)]


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
        graph.add_node(copy.deepcopy(original), [info])  # a copy: trial graphs put it back too


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
    if node.op_type in ("MaxPool", "GlobalAveragePool", "AveragePool"):
        info = graph.tensors[node.inputs[0]]
        return info.shape is not None and len(info.shape) == 4 and len([o for o in node.outputs if o]) == 1
    return False


def _concat_of_candidates(graph: Graph, node: Node, candidates: list[Node]) -> bool:
    """A Concat every input of which an int8 candidate writes (through views): int8 only moves
    its values, and left float it would split the int8 region with conversions."""
    if node.op_type != "Concat" or node.domain or not node.inputs:
        return False
    results = {_result(graph, n) for n in candidates}
    for name in node.inputs:
        if not name or graph.is_constant(name):
            return False
        producer = graph.producer(name)
        while name not in results and _same_range(producer):
            name = producer.inputs[0]
            producer = graph.producer(name)
        if name not in results:
            return False
    return True


def _activation_inputs(graph: Graph, node: Node) -> list[str]:
    if node.op_type == "Concat":
        return [n for n in node.inputs if n and not graph.is_constant(n)]
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
    axis = weight_axis(node)
    integers, scale = quantize_weights(weights, axis)
    stored = graph.add_constant(graph.unique_name(f"{name}_int8"), integers)
    scale_name = graph.add_constant(graph.unique_name(f"{name}_scale"), scale)
    zero_name = graph.add_constant(graph.unique_name(f"{name}_zero_point"), np.zeros(scale.shape, np.int8))
    dequantised = graph.unique_name(f"{name}_dequantized")
    graph.add_node(Node(graph.unique_name(f"{name}_DequantizeLinear"), "DequantizeLinear",
                        [stored, scale_name, zero_name], [dequantised], {"axis": axis}),
                   [TensorInfo(np.dtype(np.float32), weights.shape)])
    graph.set_input(node, 1, dequantised)


def _insert_qdq(graph: Graph, name: str, params: QuantParams, readers: set[str] | None = None) -> None:
    """`name` now means its quantised value: its producer writes `name`_float, then
    QuantizeLinear and DequantizeLinear give back `name` (so consumers and outputs keep it).
    With `readers`, only those consumers read a dequantised copy; the others and the graph's
    outputs keep the float `name`."""
    info = graph.tensors[name]
    scale = graph.add_constant(graph.unique_name(f"{name}_scale"), params.scale.reshape(()))
    zero = graph.add_constant(graph.unique_name(f"{name}_zero_point"), params.zero_point.astype(np.int8).reshape(()))
    quantised = graph.unique_name(f"{name}_quantized")
    producer = graph.producer(name)
    if producer is None or readers is not None:  # a graph input, or a float op's result
        source, result = name, graph.unique_name(f"{name}_dequantized")
        consumers = [c for c in graph.consumers(name) if readers is None or c.name in readers]
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
    while name not in results and _same_range(producer) and producer.op_type != "MaxPool":
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
    while readers and all(_same_range(r) and r.op_type != "MaxPool" for r in readers):
        readers = [c for r in readers for c in graph.consumers(r.outputs[0])]
    if result in graph.outputs or any(r.name not in kept for r in readers):
        total += conversion(result)
    return total
