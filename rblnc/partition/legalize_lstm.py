"""An LSTM over a few time steps, rewritten as the cell arithmetic of each step (legalisation).

The NPU has no recurrent kernel, but a short, fixed sequence is plain matrix and elementwise work:
silero-vad's decoder runs one step per 32 ms frame, and left as an `LSTM` it sent a host
partition, with a DMA round trip each way, into the middle of an otherwise NPU-only model. For
each direction and step t (ONNX's gate order i, o, f, c; default activations):

    gates  = X W^T (all steps in one MatMul) [t] + h R^T + (Wb + Rb)
    i, o, f = Sigmoid(gates[:, :3H]);  g = Tanh(gates[:, 3H:])
    c      = f * c + i * g;            h = o * Tanh(c)

The same arithmetic as onnxruntime's kernel, in another order of summation (exact up to rounding,
like any two kernels). The step count is capped (MAX_UNROLLED_STEPS): each step becomes about ten
commands, and a long sequence is cheaper as one host op than as hundreds of NPU dispatches.
Forms this does not cover (peepholes, clip, input_forget, other activations, layout=1, variable
sequence lengths) stay as they are and run on the host.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from .emitter import RewriteEmitter

# Directions x steps beyond which the LSTM stays one host op (about ten commands per step).
MAX_UNROLLED_STEPS = 16
_DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]


def lstm_as_cells(node: Node, graph: Graph):
    """(new nodes, constants they added) computing the LSTM step by step, or None."""
    form = _unrollable(node, graph)
    if form is None:
        return None
    steps, batch, hidden, directions = form
    c = graph.constants
    w, r = c[node.inputs[1]].astype(np.float32), c[node.inputs[2]].astype(np.float32)
    b = c[node.inputs[3]].astype(np.float32) if _given(node, 3) else np.zeros((directions, 8 * hidden), np.float32)
    emit = RewriteEmitter(graph, node)
    x = node.inputs[0]
    wanted = [bool(o) and (bool(graph.consumers(o)) or o in graph.outputs) for o in (node.outputs + ["", "", ""])[:3]]
    per_direction = []
    for d in range(directions):
        reverse = node.attrs.get("direction", "forward") in ("reverse", b"reverse") or d == 1
        # The input projection of every step in one product: (T, B, I) x (I, 4H) -> (T, B, 4H).
        projected = emit.one("MatMul", [x, emit.constant(f"d{d}_W_t", np.ascontiguousarray(w[d].T))], f"d{d}_xW")
        bias = emit.constant(f"d{d}_bias", b[d, :4 * hidden] + b[d, 4 * hidden:])
        recurrent = emit.constant(f"d{d}_R_t", np.ascontiguousarray(r[d].T))
        h = _initial_state(node, graph, emit, 5, d)
        cell = _initial_state(node, graph, emit, 6, d)
        outputs_by_step: dict[int, str] = {}
        for t in (reversed(range(steps)) if reverse else range(steps)):
            index = emit.constant(f"d{d}_t{t}_index", np.asarray(t, np.int64))
            gates = emit.one("Gather", [projected, index], f"d{d}_t{t}_xW", axis=0)
            if h is not None:
                gates = emit.one("Add", [gates, emit.one("MatMul", [h, recurrent], f"d{d}_t{t}_hR")], f"d{d}_t{t}_sum")
            gates = emit.one("Add", [gates, bias], f"d{d}_t{t}_gates")
            sizes = emit.constant(f"d{d}_t{t}_sizes", np.asarray([3 * hidden, hidden], np.int64))
            iof_pre, g_pre = emit.op("Split", [gates, sizes], f"d{d}_t{t}_split", 2, axis=1)
            iof = emit.one("Sigmoid", [iof_pre], f"d{d}_t{t}_iof")
            thirds = emit.constant(f"d{d}_t{t}_thirds", np.asarray([hidden] * 3, np.int64))
            i, o, f = emit.op("Split", [iof, thirds], f"d{d}_t{t}_iof_split", 3, axis=1)
            g = emit.one("Tanh", [g_pre], f"d{d}_t{t}_g")
            update = emit.one("Mul", [i, g], f"d{d}_t{t}_ig")
            cell = update if cell is None else emit.one(
                "Add", [emit.one("Mul", [f, cell], f"d{d}_t{t}_fc"), update], f"d{d}_t{t}_c")
            h = emit.one("Mul", [o, emit.one("Tanh", [cell], f"d{d}_t{t}_tanh_c")], f"d{d}_t{t}_h")
            outputs_by_step[t] = h
        per_direction.append(([outputs_by_step[t] for t in range(steps)], h, cell))

    zero, zero_one = emit.constant("axis0", np.asarray([0], np.int64)), emit.constant("axes01", np.asarray([0, 1], np.int64))
    targets = (node.outputs + ["", "", ""])[:3]
    if wanted[0]:  # Y: (T, directions, B, H)
        stacked = []
        for d, (hs, _, _) in enumerate(per_direction):
            steps_out = [emit.one("Unsqueeze", [h, zero_one], f"d{d}_y{t}") for t, h in enumerate(hs)]
            stacked.append(steps_out[0] if steps == 1 else emit.one("Concat", steps_out, f"d{d}_y", axis=0))
        _join(emit, stacked, 1, targets[0], "y")
    for position, which in ((1, 1), (2, 2)):  # Y_h, Y_c: (directions, B, H)
        if wanted[position]:
            finals = [emit.one("Unsqueeze", [state[which], zero], f"d{d}_final{position}")
                      for d, state in enumerate(per_direction)]
            _join(emit, finals, 0, targets[position], f"final{position}")
    return emit.nodes, emit.constants


def _join(emit: RewriteEmitter, parts: list[str], axis: int, output: str, base: str) -> None:
    if len(parts) > 1:
        emit.one("Concat", parts, base, output=output, axis=axis)
        return
    producer = next(n for n in emit.nodes if parts[0] in n.outputs)  # a fresh Unsqueeze/Concat, read nowhere else
    producer.outputs = [output if o == parts[0] else o for o in producer.outputs]


def _given(node: Node, index: int) -> bool:
    return len(node.inputs) > index and bool(node.inputs[index])


def _initial_state(node: Node, graph: Graph, emit: RewriteEmitter, index: int, direction: int) -> str | None:
    """Direction `direction`'s initial h or c as (B, H), or None where it is zero (not given, or a
    zero constant): the first step then skips its product or its forget term."""
    if not _given(node, index):
        return None
    name = node.inputs[index]
    value = graph.constants.get(name)
    if value is not None and not np.asarray(value).any():
        return None
    return emit.one("Gather", [name, emit.constant(f"d{direction}_init{index}_index", np.asarray(direction, np.int64))],
                    f"d{direction}_init{index}", axis=0)


def _unrollable(node: Node, graph: Graph):
    """(steps, batch, hidden, directions) of an LSTM this rewrite reproduces exactly, else None."""
    if node.domain or node.op_type != "LSTM":
        return None
    attrs = node.attrs
    direction = attrs.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    directions = 2 if direction == "bidirectional" else 1
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if (attrs.get("layout", 0) or attrs.get("input_forget", 0) or "clip" in attrs
            or attrs.get("activation_alpha") or attrs.get("activation_beta")
            or activations not in ([], _DEFAULT_ACTIVATIONS * directions)):
        return None
    if not all(graph.is_constant(n) for n in node.inputs[1:3]) or (_given(node, 3) and not graph.is_constant(node.inputs[3])):
        return None
    x = graph.tensors.get(node.inputs[0])
    if x is None or not x.is_static or len(x.shape) != 3 or x.dtype != np.float32:
        return None
    steps, batch, _ = x.shape
    hidden = int(attrs.get("hidden_size", graph.constants[node.inputs[2]].shape[-1]))
    if steps * directions > MAX_UNROLLED_STEPS:
        return None
    if _given(node, 4):  # sequence_lens: only where every sequence is the whole input
        lens = graph.constants.get(node.inputs[4])
        if lens is None or not (np.asarray(lens) == steps).all():
            return None
    if _given(node, 7):  # peepholes: only all-zero ones
        peepholes = graph.constants.get(node.inputs[7])
        if peepholes is None or np.asarray(peepholes).any():
            return None
    for index in (5, 6):
        if _given(node, index):
            info = graph.tensors.get(node.inputs[index])
            if info is None or info.shape != (directions, batch, hidden):
                return None
    return steps, batch, hidden, directions
