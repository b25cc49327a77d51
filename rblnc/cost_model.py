"""Modelled cost of an op on the target: FLOPs, bytes moved and time, from the target spec.

The NPU timing model is a roofline per command: the time is the largest of compute (FLOPs at
the precision's peak times the target's efficiency; matrix ops on the matrix engines,
everything else on the vector units), SRAM traffic over the SRAM bandwidth and DRAM traffic
over the DRAM bandwidth, plus a fixed overhead per command. A DMA costs its latency plus
bytes over the bandwidth of the link it crosses. Host ops use the same roofline with the
host CPU's figures (fp32). docs/targets.md explains the figures; nothing here knows about
partitions or artifacts, so the partitioner can price a node before anything is lowered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .dtypes import float_precision, is_float
from .ir.graph import RBLNC_DOMAIN, Graph, Node
from .ir.quantized_ops import QUANTIZED_OP_TYPES
from .target import TargetSpec

Shape = Sequence[int]

# Ops whose output shares the input's bytes (no data moves): address arithmetic, no kernel.
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# Ops that run on the matrix engines (when not depthwise).
MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# FLOPs per output element of elementwise ops; transcendental functions cost several.
_ELEMENTWISE_FLOPS = {
    "Relu": 1, "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Max": 1, "Min": 1, "Neg": 1, "Abs": 1,
    "Clip": 2, "LeakyRelu": 2, "PRelu": 2, "HardSigmoid": 3, "HardSwish": 4, "Sqrt": 4,
    "Reciprocal": 4, "Sigmoid": 4, "Tanh": 4, "Exp": 4, "Log": 4, "Erf": 4, "Elu": 4,
    "Selu": 5, "Softplus": 5, "Pow": 8, "Gelu": 8, "Mish": 8,
    "BatchNormalization": 2, "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8,
    "InstanceNormalization": 8,
    "QuantizeLinear": 3, "DequantizeLinear": 2,
}
# Ops that only move bytes.
_DATA_MOVEMENT = frozenset({"Concat", "Transpose", "Slice", "Split", "Pad", "Resize", "Gather",
                            "Tile", "Expand", "DepthToSpace", "SpaceToDepth"})
# A grouped convolution with fewer input channels per group than this cannot fill the matrix
# engines' reduction dimension; it runs on the vector units instead.
MIN_MATRIX_CHANNELS = 16


@dataclass(frozen=True)
class OpShape:
    """What the cost of an op depends on: its type, attributes, and operand shapes."""

    op_type: str
    domain: str
    attrs: dict[str, Any]
    input_shapes: Sequence[Shape | None]     # None for an omitted optional input
    output_shapes: Sequence[Shape]

    @property
    def qualified_type(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type


@dataclass(frozen=True)
class Estimate:
    """Modelled cost of one op (or command). Bytes in the precision it runs in."""

    flops: int
    input_bytes: int        # activations read
    output_bytes: int       # activations written
    weight_bytes: int       # constants read (resident in device DRAM)
    time_ns: float
    bound: str              # "compute", "sram", "dram", "overhead" or "free"


FlopRule = Callable[[OpShape], int]
# FLOP counts per qualified op type. Our own fused ops (domain ai.rblnc) add theirs here;
# an op without a rule counts one FLOP per output element.
FLOP_RULES: dict[str, FlopRule] = {}


def flop_rule(*op_types: str) -> Callable[[FlopRule], FlopRule]:
    def register(fn: FlopRule) -> FlopRule:
        for op_type in op_types:
            FLOP_RULES[op_type] = fn
        return fn

    return register


def _count(shape: Shape | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else (0 if shape is None else 1)


@flop_rule("Conv")
def _conv_flops(op: OpShape) -> int:
    w, y = op.input_shapes[1], op.output_shapes[0]
    macs = _count(y) * (w[1] if len(w) > 1 else 1) * _count(w[2:])
    bias = _count(y) if len(op.input_shapes) > 2 and op.input_shapes[2] is not None else 0
    return 2 * macs + bias


@flop_rule("ConvTranspose")
def _conv_transpose_flops(op: OpShape) -> int:
    x, w = op.input_shapes[0], op.input_shapes[1]
    # Every input element is scattered through the kernel into Cout/group outputs.
    return 2 * _count(x) * (w[1] if len(w) > 1 else 1) * _count(w[2:])


@flop_rule("Gemm")
def _gemm_flops(op: OpShape) -> int:
    a, b = op.input_shapes[0], op.input_shapes[1]
    k = a[0] if op.attrs.get("transA", 0) else a[1]
    extra = _count(op.output_shapes[0]) if len(op.input_shapes) > 2 and op.input_shapes[2] is not None else 0
    return 2 * _count(op.output_shapes[0]) * k + extra


@flop_rule("MatMul")
def _matmul_flops(op: OpShape) -> int:
    a = op.input_shapes[0]
    return 2 * _count(op.output_shapes[0]) * (a[-1] if a else 1)


@flop_rule("MaxPool", "AveragePool", "LpPool")
def _pool_flops(op: OpShape) -> int:
    return _count(op.output_shapes[0]) * _count(op.attrs.get("kernel_shape", ()))


@flop_rule("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
           "ReduceL2", "ReduceSumSquare")
def _reduce_flops(op: OpShape) -> int:
    return _count(op.input_shapes[0])


@flop_rule("Sum", "Mean", "Max", "Min")
def _variadic_flops(op: OpShape) -> int:
    return _count(op.output_shapes[0]) * max(1, len([s for s in op.input_shapes if s is not None]) - 1)


# Our fused ops (rblnc/ir/fused_ops.py): the core op plus one FLOP per output element for each
# epilogue step (addend, activation).
def _epilogue_flops(op: OpShape, addend_input: int | None) -> int:
    steps = int(bool(op.attrs.get("activation")))
    if addend_input is not None and len(op.input_shapes) > addend_input and op.input_shapes[addend_input] is not None:
        steps += 1
    return steps * _count(op.output_shapes[0])


flop_rule(f"{RBLNC_DOMAIN}::FusedConv")(lambda op: _conv_flops(op) + _epilogue_flops(op, 3))
flop_rule(f"{RBLNC_DOMAIN}::FusedGemm")(lambda op: _gemm_flops(op) + _epilogue_flops(op, None))
flop_rule(f"{RBLNC_DOMAIN}::FusedMatMul")(lambda op: _matmul_flops(op) + _epilogue_flops(op, 2))
flop_rule(f"{RBLNC_DOMAIN}::SiLU")(lambda op: 5 * _count(op.output_shapes[0]))
flop_rule(f"{RBLNC_DOMAIN}::Gelu")(lambda op: 8 * _count(op.output_shapes[0]))
# Quantised ops (rblnc/ir/quantized_ops.py): the float op's count plus the requantisation (one
# multiply-add per output element) and the activation, if any.
flop_rule(f"{RBLNC_DOMAIN}::QConv")(
    lambda op: _conv_flops(op) + 2 * _count(op.output_shapes[0]) + _epilogue_flops(op, None))
flop_rule(f"{RBLNC_DOMAIN}::QGemm")(
    lambda op: (2 * (op.input_shapes[0][-1] if op.input_shapes[0] else 1) + 2) * _count(op.output_shapes[0])
    + _epilogue_flops(op, None))
flop_rule(f"{RBLNC_DOMAIN}::QAdd")(lambda op: 5 * _count(op.output_shapes[0]) + _epilogue_flops(op, None))
flop_rule(f"{RBLNC_DOMAIN}::QMaxPool")(_pool_flops)
# QConcat copies (rblnc's quantisation gives its inputs its result's params) or requantises an
# input (one multiply-add per element): one operation per output element, a data movement in cost.
flop_rule(f"{RBLNC_DOMAIN}::QConcat")(lambda op: _count(op.output_shapes[0]))
flop_rule(f"{RBLNC_DOMAIN}::QAveragePool")(lambda op: _pool_flops(op) + 2 * _count(op.output_shapes[0]))
flop_rule(f"{RBLNC_DOMAIN}::QGlobalAveragePool")(lambda op: _count(op.input_shapes[0]) + 2 * _count(op.output_shapes[0]))
flop_rule(f"{RBLNC_DOMAIN}::FusedElementwise")(
    lambda op: max(1, len(op.attrs.get("ops", []))) * 2 * _count(op.output_shapes[0]))


def op_flops(op: OpShape) -> int:
    """FLOPs of one execution (a multiply-add counts 2)."""
    rule = FLOP_RULES.get(op.qualified_type)
    if rule is None and op.domain == RBLNC_DOMAIN and "Conv" in op.op_type and len(op.input_shapes) > 1:
        rule = _conv_flops  # a fused convolution: the convolution dominates
    if rule is not None:
        return int(rule(op))
    if op.op_type in VIEW_OPS or op.op_type in _DATA_MOVEMENT:
        return 0
    return _ELEMENTWISE_FLOPS.get(op.op_type, 1) * sum(_count(s) for s in op.output_shapes)


def runs_on_matrix_engine(op: OpShape) -> bool:
    base = op.op_type
    if op.domain == RBLNC_DOMAIN:
        base = next((m for m in MATRIX_OPS if m in op.op_type), "")
    if base not in MATRIX_OPS:
        return False
    if base in ("Conv", "ConvTranspose") and len(op.input_shapes) > 1 and op.input_shapes[1]:
        w = op.input_shapes[1]
        channels_per_group = w[1] if base == "Conv" else w[0] // max(1, int(op.attrs.get("group", 1)))
        return channels_per_group >= MIN_MATRIX_CHANNELS or op.attrs.get("group", 1) == 1
    return True


def command_precision(op_type: str, domain: str, precision: str) -> str:
    """The precision a command computes in: int8 for our quantised ops (rblnc/ir/quantized_ops.py),
    else the compile's float precision (bf16 in an int8 compile)."""
    if domain == RBLNC_DOMAIN and op_type in QUANTIZED_OP_TYPES:
        return "int8"
    return float_precision(precision)


def kernel_time_ns(flops: int, sram_bytes: int, dram_bytes: int, target: TargetSpec, precision: str,
                   *, matrix: bool) -> tuple[float, str]:
    """Roofline of one kernel command: (time in ns including the command overhead, what bounds it)."""
    peak = target.peak(precision, vector=not matrix) * target.compute_efficiency
    parts = {
        "compute": flops / peak * 1e9,
        "sram": sram_bytes / target.sram_bandwidth * 1e9,
        "dram": dram_bytes / target.dram_bandwidth * 1e9,
    }
    bound = max(parts, key=parts.__getitem__)
    if parts[bound] < target.command_overhead_ns:
        bound = "overhead"
    return target.command_overhead_ns + max(parts.values()), bound


def transfer_time_ns(nbytes: int, target: TargetSpec) -> float:
    """One DMA over the host link (PCIe): latency plus bytes over its bandwidth."""
    return target.host_link_latency_ns + nbytes / target.host_link_bandwidth * 1e9


def dma_time_ns(nbytes: int, target: TargetSpec) -> float:
    """One on-device DMA between SRAM and DRAM (a spill or a reload); DRAM is the slow side."""
    return target.command_overhead_ns + target.dma_latency_ns + nbytes / target.dram_bandwidth * 1e9


def precision_itemsize(dtype: np.dtype, precision: str) -> int:
    """Bytes per element on the device: floats take the program's precision, others their own."""
    if is_float(dtype):
        return 4 if precision == "fp32" else 2
    return np.dtype(dtype).itemsize


def op_shape(node: Node, graph: Graph) -> OpShape | None:
    """The OpShape of an IR node, or None when a shape is only known at run time."""
    def shape(name: str) -> Shape | None:
        info = graph.tensors.get(name)
        return None if info is None or not info.is_static else tuple(info.shape)

    inputs = [shape(n) if n else None for n in node.inputs]
    outputs = [shape(n) for n in node.outputs if n]
    if any(s is None for s in outputs) or any(s is None for n, s in zip(node.inputs, inputs) if n):
        return None
    return OpShape(node.op_type, node.domain, dict(node.attrs), inputs, outputs)


def estimate_node(node: Node, graph: Graph, target: TargetSpec, dtype: str = "bf16") -> Estimate:
    """Cost of `node` as one NPU command in precision `dtype`, before memory is planned:
    activations in SRAM when the op's operands fit there together, else in DRAM; weights
    (constant inputs) are read from DRAM. Ops with run-time shapes get the overhead alone."""
    op = op_shape(node, graph)
    if op is None:
        return Estimate(0, 0, 0, 0, target.command_overhead_ns, "overhead")
    if node.op_type in VIEW_OPS and not node.domain:
        return Estimate(0, 0, 0, 0, 0.0, "free")

    def nbytes(name: str) -> int:
        info = graph.tensors[name]
        return info.size * precision_itemsize(info.dtype, dtype)

    weights = sum(nbytes(n) for n in node.inputs if n and graph.is_constant(n))
    reads = sum(nbytes(n) for n in node.inputs if n and not graph.is_constant(n))
    writes = sum(nbytes(n) for n in node.outputs if n)
    in_sram = reads + writes <= target.sram_bytes
    flops = op_flops(op)
    time, bound = kernel_time_ns(flops, reads + writes if in_sram else 0,
                                 weights + (0 if in_sram else reads + writes), target,
                                 command_precision(node.op_type, node.domain, dtype),
                                 matrix=runs_on_matrix_engine(op))
    return Estimate(flops, reads, writes, weights, time, bound)


def host_node_time_ns(node: Node, graph: Graph, target: TargetSpec) -> float:
    """Cost of `node` on the host CPU (as its onnxruntime kernel, in the tensors' own types)."""
    op = op_shape(node, graph)
    if op is None:
        return target.host_op_overhead_ns
    traffic = sum(graph.tensors[n].nbytes for n in list(node.inputs) + list(node.outputs) if n)
    compute = op_flops(op) / target.host_flops * 1e9
    return target.host_op_overhead_ns + max(compute, traffic / target.host_memory_bandwidth * 1e9)


__all__ = [
    "VIEW_OPS", "MATRIX_OPS", "OpShape", "Estimate", "FLOP_RULES", "flop_rule", "op_flops",
    "runs_on_matrix_engine", "command_precision", "kernel_time_ns", "transfer_time_ns", "dma_time_ns",
    "precision_itemsize", "op_shape", "estimate_node", "host_node_time_ns",
]
