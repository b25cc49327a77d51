"""Runs a whole NPU program as one onnxruntime session, keeping the device's roundings.

On small convolutional models most of the torch path's time is the cost per primitive of
running many distinct small oneDNN kernels in turn (docs/emulator.md); one native call per
program removes that. The program's commands become standard ONNX nodes (our fused ops through
their decompositions, rblnc/ir/fused_ops.py), and after every command whose result a kernel
computes, its float outputs are rounded to the program's precision: Cast to BFLOAT16 (or
FLOAT16) and back to FLOAT. Weights are initializers holding the program's rounded values in
fp32, and float inputs are rounded on entry as the torch path does. Products of bf16 (fp16)
values are exact in fp32 and both paths accumulate in fp32, so the two follow one rule and
differ only in accumulation order, as any two kernels do (docs/precision.md).

Int8 commands become standard ONNX integer ops with the torch engine's integer numerics, bit
for bit (onnx_int8.py). A program with an op this cannot express (our ops without a
decomposition, an op computing on int8 values outside our int8 commands) is not built here
(`UnsupportedProgram`): the runner keeps the torch path for it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..dtypes import is_float
from ..format.artifact import CommandKind, NpuProgram, TensorKind
from ..ir.graph import RBLNC_DOMAIN, Node, TensorInfo
from ..ir.onnx_bridge import DECOMPOSITIONS, attr_to_onnx, standard_nodes
from ..ir.quantized_ops import QUANTIZED_OP_TYPES
from .onnx_int8 import (
    INT8_BOUNDARY_OPS, INT8_MOVING_OPS, SHIFT_CONSTANTS, Int8Lowering, held_constant, held_type, is_shifted,
    shift_nodes,
)

# Commands whose outputs are values of their inputs (moved, selected or compared, never
# computed): already representable in the program's precision, so no rounding follows them.
_VALUE_PRESERVING = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Slice", "Split",
    "Expand", "Concat", "Gather", "Dropout", "Relu", "MaxPool", "GlobalMaxPool", "Max", "Min",
    "ReduceMax", "ReduceMin", "Pad", "Tile", "DepthToSpace", "SpaceToDepth",
})

_ROUNDING_TYPE = {"bfloat16": TensorProto.BFLOAT16, "float16": TensorProto.FLOAT16}


def _one_plus_exp_neg(x: str, name: str) -> list[onnx.NodeProto]:
    """1 + exp(-x) as f"{name}/den": the denominator of the exact sigmoid and SiLU forms."""
    return [helper.make_node("Neg", [x], [f"{name}/neg"], name=f"{name}/neg"),
            helper.make_node("Exp", [f"{name}/neg"], [f"{name}/exp"], name=f"{name}/exp"),
            helper.make_node("Add", [f"{name}/exp", "c/one"], [f"{name}/den"], name=f"{name}/den")]


def _sigmoid(x: str, y: str, name: str) -> list[onnx.NodeProto]:
    """1 / (1 + exp(-x)). onnxruntime's Sigmoid (MLAS's rational approximation) is not fp32-exact:
    relative error 1.6e-6 at x = -4 and up to 6.5 at x = -18 (above bf16's half step below
    x = -9.9), so sigmoid's tails and x sigmoid(x) missed the rounding torch's fp32 kernel gives;
    its Exp is within 1e-7. Four elementwise passes instead of one: EfficientNet-B0's fp32 program
    took 1.47x onnxruntime's time with this form, 1.05x with onnxruntime's Sigmoid. After a
    convolution it takes three (`_negated_conv_gate`), as does SiLU."""
    return _one_plus_exp_neg(x, name) + [helper.make_node("Reciprocal", [f"{name}/den"], [y], name=f"{name}/rec")]


def _silu(x: str, y: str, name: str) -> list[onnx.NodeProto]:
    """x / (1 + exp(-x)), torch's own SiLU kernel's form, for SiLU's decomposition x sigmoid(x).
    Before: the sigmoid above, then a Mul: five elementwise passes instead of four and a second
    rounding. Over every 37th fp32 value in [-112, 112] this form is bit-equal to torch's fp32
    silu on 99.65 % of them, the old one on 95.42 %; one SiLU of 1x32x112x112 took 1.36 ms
    against 1.66 ms (onnxruntime, one thread; its own Sigmoid and Mul 0.62 ms)."""
    return _one_plus_exp_neg(x, name) + [helper.make_node("Div", [x, f"{name}/den"], [y], name=f"{name}/div")]


def _hard_swish(x: str, y: str, name: str) -> list[onnx.NodeProto]:
    """x min(max(x + 3, 0), 6) / 6, torch's order. onnxruntime's x (x/6 + 1/2) loses the
    small values near x = -3 (relative error 1e-3: more than an fp16 step)."""
    return [helper.make_node("Add", [x, "c/three"], [f"{name}/shift"], name=f"{name}/shift"),
            helper.make_node("Clip", [f"{name}/shift", "c/zero", "c/six"], [f"{name}/clip"], name=f"{name}/clip"),
            helper.make_node("Mul", [x, f"{name}/clip"], [f"{name}/mul"], name=f"{name}/mul"),
            helper.make_node("Div", [f"{name}/mul", "c/six"], [y], name=f"{name}/div")]


_ACCURATE_FORMS = {"Sigmoid": _sigmoid, "HardSwish": _hard_swish}
_CONSTANTS = {"c/one": 1.0, "c/minus_one": -1.0, "c/three": 3.0, "c/zero": 0.0, "c/six": 6.0}
# Ops whose onnxruntime kernel is less accurate than fp32 allows, with no cheap exact ONNX form:
# programs with them keep the torch path.
_INACCURATE = {op: "onnxruntime computes exp(x) - 1, which loses small negative x (no expm1 in ONNX)"
               for op in ("Elu", "Selu", "Celu")}


class UnsupportedProgram(ValueError):
    """The program has a command with no standard-ONNX form here."""


class _TensorTable:
    """What the decompositions read of a graph (its tensors' types), for the program's tensors."""

    def __init__(self, tensors: dict[str, TensorInfo]):
        self.tensors = tensors


def _onnx_type(dtype: np.dtype) -> int:
    """The element type a program tensor has in the ONNX model: float tensors are fp32 there,
    int8 ones uint8 (onnx_int8.py)."""
    if is_float(dtype):
        return TensorProto.FLOAT
    return held_type(dtype)


def program_precision(program: NpuProgram) -> str:
    """The device float type of the program's activations ("float32", "bfloat16", "float16")."""
    for tensor in program.tensors:
        if tensor.kind != TensorKind.CONSTANT and is_float(tensor.dtype):
            return np.dtype(tensor.dtype).name
    return "float32"


def program_to_onnx(program: NpuProgram, opset: int, name: str = "npu") -> onnx.ModelProto:
    """The program as one ONNX model with fp32 tensors and a rounding after every computed
    result. Tensors are named t<index> (program names need not be valid or unique)."""
    tensors = program.tensors
    # An int8 program output is held as uint8 inside (onnx_int8.py) and shifted back at the end.
    names = [f"t{i}/held" if t.kind == TensorKind.PROGRAM_OUTPUT and is_shifted(t.dtype) else f"t{i}"
             for i, t in enumerate(tensors)]
    table = _TensorTable({names[i]: TensorInfo(np.dtype(np.float32) if is_float(t.dtype) else np.dtype(t.dtype),
                                               tuple(t.shape)) for i, t in enumerate(tensors)})
    int8 = Int8Lowering(tensors, names)
    nodes: list[onnx.NodeProto] = []
    inputs, initializers = [], []
    constants = {names[i]: t.data for i, t in enumerate(tensors)  # the program's arrays, not copies
                 if t.kind == TensorKind.CONSTANT and is_float(np.asarray(t.data).dtype)}
    negated: dict[str, None] = {}  # constants whose negation the model holds too (name/neg)
    for i, t in enumerate(tensors):
        if t.kind == TensorKind.CONSTANT:
            data = np.asarray(t.data)
            initializers.append(numpy_helper.from_array(
                data.astype(np.float32) if is_float(data.dtype) else held_constant(data), names[i]))
        elif t.kind == TensorKind.PROGRAM_INPUT:
            rounding = _ROUNDING_TYPE.get(np.dtype(t.dtype).name)
            shifted = is_shifted(t.dtype)
            feed = f"in{i}" if rounding or shifted else names[i]
            inputs.append(helper.make_tensor_value_info(
                feed, TensorProto.INT8 if shifted else _onnx_type(t.dtype), list(t.shape)))
            if rounding:  # the torch path rounds float inputs to the program's type on entry
                nodes += _rounding(feed, names[i], rounding)
            elif shifted:
                nodes += shift_nodes(feed, names[i], to_held=True)
    for step, command in enumerate(program.commands):
        ins = [names[i] if i >= 0 else "" for i in command.inputs]
        outs = [names[i] if i >= 0 else "" for i in command.outputs]
        if command.kind == CommandKind.DMA:
            nodes.append(helper.make_node("Identity", ins[:1], outs[:1], name=f"c{step}/dma"))
            continue
        if command.domain == RBLNC_DOMAIN and command.op_type in QUANTIZED_OP_TYPES:
            try:
                nodes += int8.lower(command, step)
            except ValueError as exc:
                raise UnsupportedProgram(str(exc)) from exc
            continue
        if command.domain and command.domain != RBLNC_DOMAIN or \
                command.domain == RBLNC_DOMAIN and command.op_type not in DECOMPOSITIONS:
            raise UnsupportedProgram(f"command {command.name} ({command.domain}::{command.op_type})")
        if any(i >= 0 and is_shifted(tensors[i].dtype) for i in list(command.inputs) + list(command.outputs)) and (
                command.domain or command.op_type not in INT8_MOVING_OPS | INT8_BOUNDARY_OPS):
            raise UnsupportedProgram(f"command {command.name} ({command.op_type}) computes on int8 values, "
                                     "which the model holds shifted to uint8")
        rounded = [] if command.op_type in _VALUE_PRESERVING and not command.domain else [
            (position, _ROUNDING_TYPE[np.dtype(tensors[o].dtype).name])
            for position, o in enumerate(command.outputs)
            if o >= 0 and np.dtype(tensors[o].dtype).name in _ROUNDING_TYPE]
        raw = list(outs)
        for position, _ in rounded:
            raw[position] = f"{outs[position]}/raw"
        if not command.domain and command.op_type in _INACCURATE:
            raise UnsupportedProgram(f"command {command.name} ({command.op_type}): {_INACCURATE[command.op_type]}")
        if command.op_type == "Resize" and command.attributes.get("coordinate_transformation_mode") == "align_corners":
            # onnxruntime 1.32 maps output to input coordinates otherwise than the ONNX spec here:
            # test_resize_downsample_scales_linear_align_corners gives [1, 4], not [1, 3.142857].
            raise UnsupportedProgram(f"command {command.name} (Resize): onnxruntime's align_corners "
                                     "differs from the ONNX spec's")
        node = Node(f"c{step}", command.op_type, ins, raw, dict(command.attributes), command.domain)
        nodes += _command_nodes(standard_nodes(table, [node]), set(raw), constants, negated)
        for position, rounding in rounded:
            nodes += _rounding(raw[position], outs[position], rounding)
    outputs = []
    for i, t in enumerate(tensors):
        if t.kind != TensorKind.PROGRAM_OUTPUT:
            continue
        if is_shifted(t.dtype):
            nodes += shift_nodes(names[i], f"t{i}", to_held=False)
        outputs.append(helper.make_tensor_value_info(
            f"t{i}", TensorProto.INT8 if is_shifted(t.dtype) else _onnx_type(t.dtype), list(t.shape)))
    initializers += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in _CONSTANTS.items()]
    initializers += [numpy_helper.from_array(-np.asarray(constants[k], np.float32), f"{k}/neg") for k in negated]
    initializers += int8.initializers
    if int8.initializers or any(is_shifted(t.dtype) for t in tensors):
        initializers += [numpy_helper.from_array(v, k) for k, v in SHIFT_CONSTANTS.items()]
    # Int8 weights are read by the int8 commands as their own shifted copies: the program's
    # constants that no node reads are left out (ResNet-50 int8 would carry its weights twice).
    read = {name for node in nodes for name in node.input}
    initializers = [i for i in initializers if i.name in read]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rblnc")
    model.ir_version = min(model.ir_version, 10)
    return model


def _command_nodes(parts: list[Node], outputs: set[str], constants: Mapping[str, object],
                   negated: dict[str, None]) -> list[onnx.NodeProto]:
    """One command's standard nodes as ONNX nodes, with the exact forms of Sigmoid, SiLU and
    HardSwish; constants this negates are added to `negated`."""
    readers: dict[str, list[int]] = {}
    for index, part in enumerate(parts):
        for name in part.inputs:
            readers.setdefault(name, []).append(index)
    silus = _silu_pairs(parts, outputs, readers)
    nodes, done = [], set()
    for index, part in enumerate(parts):
        if index in done:
            continue
        gate = _negatable_conv(parts, index, outputs, constants, readers)
        if gate is not None:
            silu = silus.get(gate)
            result = parts[silu].outputs[0] if silu is not None else parts[gate].outputs[0]
            for name in part.inputs[1:3]:
                if name:
                    negated[name] = None
            nodes += _negated_conv_gate(part, result, silu is not None)
            done.update({gate, silu} - {None})
            continue
        if index in silus:  # Sigmoid(x) feeding only Mul(x, .): one x / (1 + exp(-x))
            nodes += _silu(part.inputs[0], parts[silus[index]].outputs[0], part.name)
            done.add(silus[index])
            continue
        if part.op_type in _ACCURATE_FORMS:
            nodes += _ACCURATE_FORMS[part.op_type](part.inputs[0], part.outputs[0], part.name)
            continue
        attrs = dict(part.attrs)
        if part.op_type == "Constant" and is_float(np.asarray(attrs["value"]).dtype):
            attrs["value"] = np.asarray(attrs["value"], np.float32)  # fp32 like every float here
        proto = helper.make_node(part.op_type, part.inputs, part.outputs, name=part.name)
        proto.attribute.extend(attr_to_onnx(k, v) for k, v in sorted(attrs.items()))
        nodes.append(proto)
    return nodes


def _negatable_conv(parts: list[Node], index: int, outputs: set[str], constants: Mapping[str, object],
                    readers: Mapping[str, list[int]]) -> int | None:
    """The index of the Sigmoid that parts[index] feeds, when parts[index] is a Conv with constant
    weight and bias whose result only that Sigmoid (and its SiLU's Mul) reads."""
    conv = parts[index]
    if conv.op_type != "Conv" or conv.domain or conv.outputs[0] in outputs or \
            any(name and name not in constants for name in conv.inputs[1:3]):
        return None
    users = readers.get(conv.outputs[0], [])
    gates = [u for u in users if parts[u].op_type == "Sigmoid" and not parts[u].domain]
    if len(gates) != 1:
        return None
    gate = gates[0]
    others = [u for u in users if u != gate]
    if not others:
        return gate
    mul, sigmoid = others[0], parts[gate].outputs[0]
    if len(others) == 1 and parts[mul].op_type == "Mul" and not parts[mul].domain and \
            sorted(parts[mul].inputs) == sorted([conv.outputs[0], sigmoid]) and \
            readers.get(sigmoid) == [mul] and sigmoid not in outputs:
        return gate
    return None


def _negated_conv_gate(conv: Node, result: str, silu: bool) -> list[onnx.NodeProto]:
    """Conv then sigmoid (or SiLU) in three elementwise passes instead of four: the convolution
    with negated weight and bias computes -x exactly (every rounding to nearest is odd), so
    exp(-x) needs no Neg; 1 + exp(-x) is computed negated, -1 - exp(-x), and the quotient of
    two negated values is the same: sigmoid = -1 / (-1 - exp(-x)), SiLU = -x / (-1 - exp(-x)).
    Bit for bit the four-pass forms' values (tests/test_emulator_engines.py); the one difference
    is the sign of a SiLU whose convolution sums to exactly zero by cancellation: x + (-x) is +0
    either way, so the SiLU is +0 there and -0 here. EfficientNet-B0's fp32 program went from
    1.36x-1.41x onnxruntime's time to 1.26x-1.32x with this and `_silu` (two runs)."""
    name = conv.outputs[0]
    weights = [f"{n}/neg" if n else "" for n in conv.inputs[1:3]]
    proto = helper.make_node("Conv", [conv.inputs[0], *weights][:len(conv.inputs)], [f"{name}/neg"], name=conv.name)
    proto.attribute.extend(attr_to_onnx(k, v) for k, v in sorted(conv.attrs.items()))
    return [proto,
            helper.make_node("Exp", [f"{name}/neg"], [f"{name}/exp"], name=f"{name}/exp"),
            helper.make_node("Sub", ["c/minus_one", f"{name}/exp"], [f"{name}/nden"], name=f"{name}/nden"),
            helper.make_node("Div", [f"{name}/neg" if silu else "c/minus_one", f"{name}/nden"], [result],
                             name=f"{name}/div")]


def _silu_pairs(parts: list[Node], outputs: set[str], readers: Mapping[str, list[int]]) -> dict[int, int]:
    """{index of a Sigmoid(x): index of the Mul(x, sigmoid) that is its only reader} among one
    command's standard nodes (SiLU's decomposition), when the sigmoid is not a command output."""
    pairs = {}
    for index, part in enumerate(parts):
        if part.op_type != "Sigmoid" or part.domain or part.outputs[0] in outputs:
            continue
        users = readers.get(part.outputs[0], [])
        if len(users) == 1 and users[0] > index:
            mul = parts[users[0]]
            if mul.op_type == "Mul" and not mul.domain and \
                    sorted(mul.inputs) == sorted([part.inputs[0], part.outputs[0]]):
                pairs[index] = users[0]
    return pairs


def _rounding(source: str, target: str, to: int) -> list[onnx.NodeProto]:
    """source rounded to `to` (to nearest, ties to even) and widened back to fp32 as target.

    By the Cast pair, though onnxruntime converts to bfloat16 element by element (1.0 to 1.2 ns
    per element for the pair, one thread, here): the vectorised arithmetic alternative, Veltkamp's
    split p = 65537 x, x' = p - (p - x) (0.6 to 1.1 ns), is torch's rounding only for
    2^-126 <= |x| < 5.19e33. Checked over all 2^32 fp32 values (benchmarks/bench_bf16_rounding.py
    --exhaustive): it keeps subnormals to 8 significant bits (1e-45 stays 1e-45, bf16 gives 0),
    turns |x| >= 5.1922176e33 and infinities into NaN (65537 x overflows); done on x 2^-16 and
    scaled back (five ops) it rounds subnormals and all but the top 512 finite values right, but
    double-rounds 2^-126 <= |x| < 2^-110 and still makes infinities NaN. An exact form needs a
    selection between such forms besides: the scaled split alone costs what the Casts do. The
    split (inexact) took MobileNetV3-small's bf16 program from 1.63x to 1.57x onnxruntime's
    time, at most 7 % faster on any model measured (docs/emulator.md). FLOAT16's pair is vectorised (F16C: 0.33
    to 0.47 ns per element) and equals torch's float16 rounding on all 2^32 values."""
    narrow = f"{target}/narrow"
    return [helper.make_node("Cast", [source], [narrow], name=f"{target}/round", to=to),
            helper.make_node("Cast", [narrow], [target], name=f"{target}/widen", to=TensorProto.FLOAT)]


class OnnxProgramSession:
    """One onnxruntime session computing a whole program; `run` is thread-safe (onnxruntime's
    InferenceSession.run is)."""

    def __init__(self, program: NpuProgram, opset: int, name: str, threads: int,
                 host_dtypes: Mapping[str, np.dtype] | None = None):
        import onnxruntime as ort

        model = program_to_onnx(program, opset, name)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No QDQ fusions: they would turn an int8 program's DequantizeLinear -> op -> QuantizeLinear
        # chains into onnxruntime's QLinear kernels, whose arithmetic is not the program's.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        feeds = {i.name for i in model.graph.input}
        tensors = program.tensors
        host_dtypes = dict(host_dtypes or {})
        self._inputs = []
        for i, t in enumerate(tensors):
            if t.kind == TensorKind.PROGRAM_INPUT:
                feed = f"in{i}" if f"in{i}" in feeds else f"t{i}"
                self._inputs.append((t.name, feed, np.dtype(np.float32) if is_float(t.dtype) else np.dtype(t.dtype)))
        self._outputs = [(t.name, host_dtypes.get(t.name)) for t in tensors if t.kind == TensorKind.PROGRAM_OUTPUT]
        self._output_names = [f"t{i}" for i, t in enumerate(tensors) if t.kind == TensorKind.PROGRAM_OUTPUT]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, feed, dtype in self._inputs:
            value = np.asarray(inputs[name])
            feeds[feed] = value if value.dtype == dtype else value.astype(dtype)
        results = self._session.run(self._output_names, feeds)
        return {name: value if dtype is None or value.dtype == dtype else value.astype(dtype)
                for (name, dtype), value in zip(self._outputs, results)}
