"""Which ops the NPU can run, and if not, why — in words the user can act on.

Each constraint is a function `(node, graph, target) -> str | None` returning the reason it
fails (None when it holds). The first line of its docstring documents it (docs/ops.md)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import onnx.defs
import onnx.helper

from ..ir.graph import CANONICAL_OPSET, RBLNC_DOMAIN, Graph, Node
from ..ir.quantized_ops import is_nearest_resize, is_quantized_op
from ..target import TargetSpec

_NPU_DTYPES = {np.dtype(np.float32), np.dtype(np.float16)}
try:
    from ml_dtypes import bfloat16

    _NPU_DTYPES.add(np.dtype(bfloat16))
except ImportError:  # pragma: no cover
    pass

# Quantised int8 tensors (graph.quantization) are NPU values for our int8 ops, the conversions
# at their boundaries, and ops that only view or move them.
_INT8_DTYPES = {np.dtype(np.int8), np.dtype(np.uint8)}
_INT8_CAPABLE = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                 "Transpose", "Identity"}

# Inputs that must be compile-time constants for the NPU (they set shapes or bounds).
_CONSTANT_INPUTS = {"Reshape": (1,), "Clip": (1, 2), "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2)}

# Ops whose output shape depends on the values of their inputs, not only on their shapes: the
# NPU's memory plan needs every size at compile time, so they always run on the host.
DATA_DEPENDENT_OPS = {
    "NonZero": "the number of non-zero elements",
    "NonMaxSuppression": "how many boxes survive suppression",
    "Unique": "how many distinct values the input holds",
    "Compress": "how many conditions are true",
}
# Inputs that set an output size: data-dependent unless they are compile-time constants.
_SIZE_INPUTS = {"TopK": (1, "k"), "Range": (2, "delta"), "ConstantOfShape": (0, "shape"),
                "Expand": (1, "shape"), "Tile": (1, "repeats"), "OneHot": (1, "depth")}


@dataclass(frozen=True)
class Verdict:
    supported: bool
    reason: str = ""


def constraint_data_dependent_shape(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """The op's output shape does not depend on input values (NonZero, NonMaxSuppression, Unique, TopK with a run-time k)."""
    if node.domain:
        return None
    if node.op_type in DATA_DEPENDENT_OPS:
        return (f"data-dependent output shape: {node.op_type}'s output size is {DATA_DEPENDENT_OPS[node.op_type]}, "
                "known only at run time; it runs on the host (keep it in post-processing)")
    size_input = _SIZE_INPUTS.get(node.op_type)
    if size_input is not None:
        index, what = size_input
        name = node.inputs[index] if index < len(node.inputs) else ""
        if name and not graph.is_constant(name):
            return (f"data-dependent output shape: {what} ({name!r}) is computed at run time; "
                    f"make it a constant (or fix the input shapes with input_info) to run {node.op_type} on the NPU")
    return None


def constraint_op_type(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """The op type is one the target lists as supported."""
    hint = f"it runs on the host (the target spec's [ops] supported lists what {target.name} runs)"
    if node.domain == RBLNC_DOMAIN:
        listed = node.qualified_type in target.supported_ops or node.op_type in target.supported_ops
        return None if listed else f"{node.qualified_type} is not supported by {target.name}; {hint}"
    if node.domain:
        return (f"op type {node.qualified_type} is not supported by the NPU ({target.name}): custom domain "
                f"{node.domain!r} has no NPU kernel; it runs on the host")
    if node.op_type not in target.supported_ops:
        return f"op type {node.qualified_type} is not supported by the NPU ({target.name}); {hint}"
    return None


def constraint_opset_semantics(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """The op has the semantics the NPU kernels implement (those of the canonical opset)."""
    if node.domain or graph.opset == CANONICAL_OPSET:
        return None
    if _since_version(node.op_type, graph.opset) != _since_version(node.op_type, CANONICAL_OPSET):
        return (f"{node.op_type} at opset {graph.opset} differs from opset {CANONICAL_OPSET}, "
                "which the NPU kernels implement")
    return None


def constraint_static_shapes(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """Every input and output has a shape known at compile time."""
    for name in node.outputs:
        info = graph.tensors.get(name) if name else None
        if name and (info is None or not info.is_static):
            return (f"shape computed at run time: shape inference leaves output {name!r} as {_shape_text(info)}; "
                    "fix the input shapes with input_info, or the op runs on the host")
    for name in node.inputs:
        info = graph.tensors.get(name) if name else None
        if name and (info is None or not info.is_static):
            return (f"shape computed at run time: input {name!r} is {_shape_text(info)} (made by a host op "
                    "with a data-dependent shape); the op runs on the host")
    return None


def constraint_dtypes(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """Tensors computed on the NPU are floating point (fp32, fp16 or bf16), or quantised int8 operands of int8 ops."""
    int8_capable = is_quantized_op(node) or (not node.domain and node.op_type in _INT8_CAPABLE) or \
        is_nearest_resize(node)
    for name in node.inputs + node.outputs:
        if not name or graph.is_constant(name):  # constant operands (shapes, axes) may be ints
            continue
        dtype = graph.tensors[name].dtype
        if int8_capable and dtype in _INT8_DTYPES and name in graph.quantization:
            continue
        if dtype not in _NPU_DTYPES:
            return (f"tensor {name!r} is {dtype.name}; the NPU computes in floating point only "
                    "(fp32, fp16, bf16), so the op runs on the host")
    return None


def constraint_rank(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """Tensors have at most the target's maximum rank."""
    for name in node.inputs + node.outputs:
        info = graph.tensors.get(name) if name else None
        if info is not None and info.shape is not None and len(info.shape) > target.max_rank:
            return (f"tensor {name!r} has rank {len(info.shape)}, above {target.name}'s max_rank "
                    f"{target.max_rank}; reshape to at most {target.max_rank} dimensions to keep it on the NPU")
    return None


def constraint_window(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """Convolution and pooling windows and strides are within the target's limits."""
    kernel = node.attrs.get("kernel_shape")
    if kernel is None and node.op_type == "Conv" and len(node.inputs) > 1 and node.inputs[1] in graph.tensors:
        kernel = graph.tensors[node.inputs[1]].shape[2:]
    if kernel and max(kernel) > target.max_kernel_size:
        exceeds = f"kernel {list(kernel)} exceeds {target.name}'s max_kernel_size {target.max_kernel_size}"
        if node.op_type in ("AveragePool", "MaxPool"):  # what legalize.py could not rewrite
            return (f"{exceeds} and no exact rewrite fits (rblnc rewrites a global pool, and a pool whose stride "
                    f"equals a kernel side that factors into parts <= {min(target.max_kernel_size, target.max_stride)}); "
                    "it runs on the host")
        if node.op_type == "Conv":  # what legalize_framed_conv.py could not rewrite
            return (f"{exceeds}; rblnc does not split Conv kernels (it rewrites a 1-D Conv whose stride divides "
                    "its kernel as frames x weights), so it runs on the host")
        return f"{exceeds}; rblnc does not split {node.op_type} kernels, so it runs on the host"
    strides = node.attrs.get("strides")
    if strides and max(strides) > target.max_stride:
        return (f"stride {list(strides)} exceeds {target.name}'s max_stride {target.max_stride}; "
                "a smaller stride followed by a strided Slice keeps it on the NPU")
    return None


def constraint_constant_operands(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """Shape and bound operands (Reshape's shape, Clip's min/max) are compile-time constants."""
    for index in _CONSTANT_INPUTS.get(node.op_type, ()):
        if index < len(node.inputs) and node.inputs[index] and not graph.is_constant(node.inputs[index]):
            return (f"input {index} ({node.inputs[index]!r}) is computed at run time; the NPU needs it as a "
                    "compile-time constant (fix the input shapes with input_info so it folds)")
    return None


def constraint_attribute_values(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """Attributes take values the NPU kernels implement (the target's [ops.attributes])."""
    for name, allowed in target.op_attributes.get(node.qualified_type, {}).items():
        value = node.attrs[name] if name in node.attrs else _default_attribute(node.op_type, name)
        if isinstance(value, bytes):
            value = value.decode()
        if value not in allowed:
            return (f"{name}={value!r} is not implemented by the NPU ({target.name} takes "
                    f"{', '.join(map(repr, allowed))}); use one of those to keep it on the NPU")
    return None


def constraint_inference_mode(node: Node, graph: Graph, target: TargetSpec) -> str | None:
    """BatchNormalization runs in inference mode (training_mode=0)."""
    if node.op_type == "BatchNormalization" and node.attrs.get("training_mode", 0):
        return "BatchNormalization in training mode; export the model in eval mode to run it on the NPU"
    return None


CONSTRAINTS: list[Callable[[Node, Graph, TargetSpec], str | None]] = [
    # First: a data-dependent shape is the reason that matters even for an op type not listed.
    constraint_data_dependent_shape,
    constraint_op_type,
    constraint_opset_semantics,
    constraint_static_shapes,
    constraint_dtypes,
    constraint_rank,
    constraint_window,
    constraint_constant_operands,
    constraint_attribute_values,
    constraint_inference_mode,
]


def check_npu_support(node: Node, graph: Graph, target: TargetSpec) -> Verdict:
    for constraint in CONSTRAINTS:
        reason = constraint(node, graph, target)
        if reason:
            return Verdict(False, reason)
    return Verdict(True)


def _shape_text(info) -> str:
    if info is None or info.shape is None:
        return "of unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in info.shape) + "]"


@lru_cache(maxsize=None)
def _default_attribute(op_type: str, name: str):
    try:
        attribute = onnx.defs.get_schema(op_type, CANONICAL_OPSET).attributes[name]
    except (onnx.defs.SchemaError, KeyError):
        return None
    if not attribute.default_value.name:
        return None
    return onnx.helper.get_attribute_value(attribute.default_value)


@lru_cache(maxsize=None)
def _since_version(op_type: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, opset).since_version
    except onnx.defs.SchemaError:
        return -1
