"""Our own ops (domain ai.rblnc) that passes create: their meaning, shape rules and ONNX decompositions.

Each op registers a shape rule in `INFERENCE_RULES` and a decomposition to standard ONNX in
`DECOMPOSITIONS`, so a fused op that ends up on the host still runs through onnxruntime and
constant folding or shape tools can see through it. The emulator's kernels for the same ops
live in `rblnc/emulator/fused_kernels.py` and follow the semantics written here:

    FusedConv(X, W, [B], [Z])     act(Conv(X, W, B) + Z)          Conv attrs + activation
    FusedGemm(A, B, [C])          act(Gemm(A, B, C))              Gemm attrs + activation
    FusedMatMul(A, B, [C])        act(MatMul(A, B) + C)           activation
    Gelu(X)                       x/2 (1 + erf(x/sqrt 2)), or the tanh form (approximate="tanh")
    SiLU(X)                       x sigmoid(x)
    FusedElementwise(X, ...)      steps applied in order to X (see `ELEMENTWISE_*` below)

`activation` is a name from `ACTIVATIONS` ("" = none) and `activation_params` its float
parameters in the documented order (Clip: min, max; LeakyRelu: alpha; HardSigmoid: alpha, beta).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .graph import RBLNC_DOMAIN, Graph, GraphError, Node, TensorInfo
from .onnx_bridge import DECOMPOSITIONS
from .shape_inference import INFERENCE_RULES, ShapeInferenceError

# Activation name -> number of float parameters. Names match the ONNX op where there is one.
ACTIVATIONS: dict[str, int] = {
    "Relu": 0, "Sigmoid": 0, "Tanh": 0, "HardSwish": 0, "SiLU": 0, "Gelu": 0, "GeluTanh": 0,
    "Clip": 2, "LeakyRelu": 1, "HardSigmoid": 2,
}
# Steps of FusedElementwise: unary ops (any activation, or these) and binary ops with an operand.
ELEMENTWISE_UNARY: dict[str, int] = {
    **ACTIVATIONS, "Abs": 0, "Neg": 0, "Exp": 0, "Log": 0, "Sqrt": 0, "Reciprocal": 0, "Erf": 0,
    "Floor": 0, "Ceil": 0,
}
ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")

FUSED_OP_TYPES = ("FusedConv", "FusedGemm", "FusedMatMul", "Gelu", "SiLU", "FusedElementwise")


def activation_of(node: Node, graph: Graph) -> tuple[str, list[float]] | None:
    """(activation name, params) when `node` is an activation a fused op can absorb, else None."""
    op = node.qualified_type
    if op in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return op, []
    if op == f"{RBLNC_DOMAIN}::SiLU":
        return "SiLU", []
    if op == f"{RBLNC_DOMAIN}::Gelu":
        return ("GeluTanh" if node.attrs.get("approximate", "none") == "tanh" else "Gelu"), []
    if op == "LeakyRelu":
        return "LeakyRelu", [float(node.attrs.get("alpha", 0.01))]
    if op == "HardSigmoid":
        return "HardSigmoid", [float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))]
    if op == "Clip":
        bounds = []
        for index, default in ((1, -math.inf), (2, math.inf)):
            name = node.inputs[index] if len(node.inputs) > index else ""
            if not name:
                bounds.append(default)
            elif graph.is_constant(name) and graph.constants[name].size == 1:
                bounds.append(float(graph.constants[name].reshape(())))
            else:
                return None  # bounds computed at run time cannot become attributes
        return "Clip", bounds
    return None


# -- decompositions -------------------------------------------------------------------------


class _Emitter:
    """Builds standard nodes for one decomposition, with names derived from the fused node's."""

    def __init__(self, node: Node):
        self.node = node
        self.nodes: list[Node] = []
        self._count = 0

    def tensor(self, hint: str) -> str:
        self._count += 1
        return f"{self.node.name}/{hint}_{self._count}"

    def constant(self, value: float, dtype: np.dtype) -> str:
        out = self.tensor("const")
        self.emit("Constant", [], out, value=np.asarray(value, dtype=dtype))
        return out

    def emit(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        output = output or self.tensor(op_type.lower())
        self.nodes.append(Node(f"{output}/{op_type}", op_type, list(inputs), [output], attrs,
                               source_ops=list(self.node.source_ops)))
        return output


def emit_activation(em: _Emitter, name: str, params: Sequence[float], x: str, dtype: np.dtype,
                    output: str | None = None) -> str:
    """Standard ONNX nodes computing activation `name` of `x`; returns the result's name."""
    if name in ("Relu", "Sigmoid", "Tanh", "HardSwish", "Abs", "Neg", "Exp", "Log", "Sqrt",
                "Reciprocal", "Erf", "Floor", "Ceil"):
        return em.emit(name, [x], output)
    if name == "LeakyRelu":
        return em.emit(name, [x], output, alpha=float(params[0]))
    if name == "HardSigmoid":
        return em.emit(name, [x], output, alpha=float(params[0]), beta=float(params[1]))
    if name == "Clip":
        low, high = (em.constant(p, dtype) for p in params)
        return em.emit("Clip", [x, low, high], output)
    if name == "SiLU":
        return em.emit("Mul", [x, em.emit("Sigmoid", [x])], output)
    if name == "Gelu":
        scaled = em.emit("Mul", [x, em.constant(1 / math.sqrt(2), dtype)])
        one_plus = em.emit("Add", [em.emit("Erf", [scaled]), em.constant(1.0, dtype)])
        return em.emit("Mul", [em.emit("Mul", [x, em.constant(0.5, dtype)]), one_plus], output)
    if name == "GeluTanh":
        cube = em.emit("Mul", [em.emit("Mul", [x, x]), x])
        inner = em.emit("Add", [x, em.emit("Mul", [cube, em.constant(0.044715, dtype)])])
        tanh = em.emit("Tanh", [em.emit("Mul", [inner, em.constant(math.sqrt(2 / math.pi), dtype)])])
        one_plus = em.emit("Add", [tanh, em.constant(1.0, dtype)])
        return em.emit("Mul", [em.emit("Mul", [x, em.constant(0.5, dtype)]), one_plus], output)
    raise GraphError(f"unknown activation {name!r}")


def _epilogue(em: _Emitter, graph: Graph, node: Node, core: str, addend: str) -> list[Node]:
    """core [+ addend] [-> activation], writing the fused node's output."""
    out = node.outputs[0]
    dtype = _dtype_of(graph, node)
    activation = node.attrs.get("activation", "")
    value = core
    if addend:
        value = em.emit("Add", [core, addend], None if activation else out)
    if activation:
        emit_activation(em, activation, node.attrs.get("activation_params", []), value, dtype, out)
    elif value != out:
        em.emit("Identity", [value], out)
    return em.nodes


def _dtype_of(graph: Graph, node: Node) -> np.dtype:
    info = graph.tensors.get(node.outputs[0]) or graph.tensors.get(node.inputs[0])
    return info.dtype if info is not None else np.dtype(np.float32)


def _input(node: Node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index else ""


_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_GEMM_ATTRS = ("alpha", "beta", "transA", "transB")


def decompose_fused_conv(node: Node, graph: Graph) -> list[Node]:
    em = _Emitter(node)
    attrs = {k: v for k, v in node.attrs.items() if k in _CONV_ATTRS}
    inputs = [i for i in node.inputs[:3]]
    core = em.emit("Conv", inputs, **attrs)
    return _epilogue(em, graph, node, core, _input(node, 3))


def decompose_fused_gemm(node: Node, graph: Graph) -> list[Node]:
    em = _Emitter(node)
    attrs = {k: v for k, v in node.attrs.items() if k in _GEMM_ATTRS}
    core = em.emit("Gemm", node.inputs[:3], **attrs)
    return _epilogue(em, graph, node, core, "")


def decompose_fused_matmul(node: Node, graph: Graph) -> list[Node]:
    em = _Emitter(node)
    core = em.emit("MatMul", node.inputs[:2])
    return _epilogue(em, graph, node, core, _input(node, 2))


def decompose_gelu(node: Node, graph: Graph) -> list[Node]:
    em = _Emitter(node)
    name = "GeluTanh" if node.attrs.get("approximate", "none") == "tanh" else "Gelu"
    emit_activation(em, name, [], node.inputs[0], _dtype_of(graph, node), node.outputs[0])
    return em.nodes


def decompose_silu(node: Node, graph: Graph) -> list[Node]:
    em = _Emitter(node)
    emit_activation(em, "SiLU", [], node.inputs[0], _dtype_of(graph, node), node.outputs[0])
    return em.nodes


def elementwise_steps(node: Node) -> list[tuple[str, int, bool, list[float]]]:
    """FusedElementwise's steps as (op, operand input index or -1, operand first?, params)."""
    ops = list(node.attrs.get("ops", []))
    operands = list(node.attrs.get("operands", [-1] * len(ops)))
    swapped = list(node.attrs.get("swapped", [0] * len(ops)))
    params = [float(p) for p in node.attrs.get("params", [])]
    if not (len(ops) == len(operands) == len(swapped)):
        raise GraphError(f"{node.name}: ops, operands and swapped differ in length")
    steps, cursor = [], 0
    for op, operand, first in zip(ops, operands, swapped):
        if op in ELEMENTWISE_BINARY:
            if not 0 < operand < len(node.inputs):
                raise GraphError(f"{node.name}: step {op} reads input {operand}, which does not exist")
            steps.append((op, operand, bool(first), []))
        elif op in ELEMENTWISE_UNARY:
            count = ELEMENTWISE_UNARY[op]
            steps.append((op, -1, False, params[cursor:cursor + count]))
            cursor += count
        else:
            raise GraphError(f"{node.name}: {op!r} cannot be a FusedElementwise step")
    if cursor != len(params):
        raise GraphError(f"{node.name}: {len(params)} params given, the steps use {cursor}")
    return steps


def decompose_fused_elementwise(node: Node, graph: Graph) -> list[Node]:
    em = _Emitter(node)
    dtype = _dtype_of(graph, node)
    value = node.inputs[0]
    steps = elementwise_steps(node)
    for i, (op, operand, first, params) in enumerate(steps):
        out = node.outputs[0] if i == len(steps) - 1 else None
        if operand >= 0:
            other = node.inputs[operand]
            value = em.emit(op, [other, value] if first else [value, other], out)
        else:
            value = emit_activation(em, op, params, value, dtype, out)
    if not steps:
        em.emit("Identity", [value], node.outputs[0])
    return em.nodes


# -- shape rules ----------------------------------------------------------------------------


def conv_output_shape(x: Sequence[int], w: Sequence[int], attrs: dict) -> tuple[int, ...]:
    """Output shape of an ONNX Conv on static shapes."""
    spatial = len(x) - 2
    kernel = list(attrs.get("kernel_shape") or w[2:])
    strides = list(attrs.get("strides") or [1] * spatial)
    dilations = list(attrs.get("dilations") or [1] * spatial)
    pads = list(attrs.get("pads") or [0] * (2 * spatial))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    dims = []
    for i in range(spatial):
        effective = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            dims.append(-(-x[2 + i] // strides[i]))
        elif auto_pad == "VALID":
            dims.append((x[2 + i] - effective) // strides[i] + 1)
        else:
            dims.append((x[2 + i] + pads[i] + pads[i + spatial] - effective) // strides[i] + 1)
    return (x[0], w[0], *dims)


def matmul_output_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """numpy.matmul's shape rule (1-D operands are promoted, then the added axis dropped)."""
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeInferenceError(f"MatMul: inner dimensions differ ({a2[-1]} vs {b2[-2]})")
    batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    shape = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return tuple(int(d) for d in shape)


def _static(node: Node, infos: list[TensorInfo | None], index: int) -> TensorInfo:
    info = infos[index] if index < len(infos) else None
    if info is None or not info.is_static:
        raise ShapeInferenceError(f"{node.name} ({node.qualified_type}): input {index} needs a static shape")
    return info


def _broadcast(node: Node, *shapes: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ShapeInferenceError(f"{node.name} ({node.qualified_type}): shapes {list(shapes)} do not broadcast") from None


def _fused_conv_rule(node, infos, graph):
    x, w = _static(node, infos, 0), _static(node, infos, 1)
    shape = conv_output_shape(x.shape, w.shape, node.attrs)
    if _input(node, 3):
        residual = _static(node, infos, 3).shape
        if _broadcast(node, shape, residual) != shape:
            raise ShapeInferenceError(f"{node.name}: residual {residual} does not match the output {shape}")
    return [TensorInfo(x.dtype, shape)]


def _fused_gemm_rule(node, infos, graph):
    a, b = _static(node, infos, 0), _static(node, infos, 1)
    m = a.shape[1] if node.attrs.get("transA", 0) else a.shape[0]
    n = b.shape[0] if node.attrs.get("transB", 0) else b.shape[1]
    return [TensorInfo(a.dtype, (m, n))]


def _fused_matmul_rule(node, infos, graph):
    a, b = _static(node, infos, 0), _static(node, infos, 1)
    shape = matmul_output_shape(a.shape, b.shape)
    if _input(node, 2):
        shape = _broadcast(node, shape, _static(node, infos, 2).shape)
    return [TensorInfo(a.dtype, shape)]


def _same_as_input_rule(node, infos, graph):
    return [_static(node, infos, 0)]


def _fused_elementwise_rule(node, infos, graph):
    elementwise_steps(node)  # validates the attributes
    shapes = [_static(node, infos, i).shape for i in range(len(node.inputs)) if node.inputs[i]]
    return [TensorInfo(_static(node, infos, 0).dtype, _broadcast(node, *shapes))]


_RULES = {
    "FusedConv": (_fused_conv_rule, decompose_fused_conv),
    "FusedGemm": (_fused_gemm_rule, decompose_fused_gemm),
    "FusedMatMul": (_fused_matmul_rule, decompose_fused_matmul),
    "Gelu": (_same_as_input_rule, decompose_gelu),
    "SiLU": (_same_as_input_rule, decompose_silu),
    "FusedElementwise": (_fused_elementwise_rule, decompose_fused_elementwise),
}
for _op, (_rule, _decompose) in _RULES.items():
    INFERENCE_RULES[_op] = _rule
    DECOMPOSITIONS[_op] = _decompose
