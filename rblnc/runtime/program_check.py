"""Checks an NPU program's declared shapes against its ops' semantics before it first runs.

Each standard op's attributes and declared input shapes must give the output shapes the
program declares, so a forged attribute (a pad of 160 million, a huge kernel) is refused at
load instead of making a kernel allocate gigabytes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import dtypes
from ..format.artifact import NpuProgram, TensorKind
from ..ir.onnx_bridge import attr_to_onnx

# Small integer constants are shown to ONNX's inference so data-dependent shapes (Reshape,
# Expand, Slice...) are checked too; as in the IR's own shape inference.
_MAX_PROPAGATED_ELEMENTS = 4096


class ProgramShapeError(ValueError):
    """An NPU command whose outputs cannot have the shapes the program declares."""


def check_program_shapes(program: NpuProgram, opset: int) -> None:
    """Each standard-domain command is inferred alone from the declared types of its inputs
    (our own ops, domain ai.rblnc, are left to their kernels). Raises ProgramShapeError."""
    nodes, inputs, initializers, outputs = [], [], [], []
    owners: dict[str, str] = {}
    for step, command in enumerate(program.commands):
        if command.domain:
            continue
        input_names = []
        for k, index in enumerate(command.inputs):
            if index < 0:
                input_names.append("")
                continue
            name = f"c{step}_in{k}"
            tensor = program.tensors[index]
            data = tensor.data
            if data is not None and data.size <= _MAX_PROPAGATED_ELEMENTS and data.dtype.kind in "iub":
                initializers.append(numpy_helper.from_array(np.asarray(data), name))
            else:
                inputs.append(helper.make_tensor_value_info(name, _inference_type(tensor.dtype), list(tensor.shape)))
            input_names.append(name)
        output_names = []
        for k, index in enumerate(command.outputs):
            if index < 0:
                output_names.append("")
                continue
            name = f"c{step}_out{k}"
            tensor = program.tensors[index]
            # No element type: only the shape is compared (the program may compute in fp16).
            outputs.append(helper.make_tensor_value_info(name, TensorProto.UNDEFINED, list(tensor.shape)))
            owners[name] = f"command {command.name!r} ({command.op_type}) output {tensor.name!r}"
            output_names.append(name)
        node = helper.make_node(command.op_type, input_names, output_names, name=command.name)
        try:
            node.attribute.extend(attr_to_onnx(k, v) for k, v in sorted(command.attributes.items()))
        except (TypeError, ValueError) as exc:
            raise ProgramShapeError(f"command {command.name!r} ({command.op_type}): attributes ({exc})") from None
        nodes.append(node)
    if not nodes:
        return
    graph = helper.make_graph(nodes, "program", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        detail = _first_line(exc).replace("[ShapeInferenceError] Inference error(s): ", "")
        raise ProgramShapeError(f"attributes and declared shapes of its commands disagree: {detail}") from None
    # Inference merges into the declared outputs; a dimension it computed differently raises
    # above, but dimensions it could not compute are kept. Compare what it says explicitly.
    for value in inferred.graph.output:
        dims = value.type.tensor_type.shape.dim
        declared = next(o for o in outputs if o.name == value.name).type.tensor_type.shape.dim
        if len(dims) != len(declared) or any(
                d.HasField("dim_value") and e.HasField("dim_value") and d.dim_value != e.dim_value
                for d, e in zip(dims, declared)):
            raise ProgramShapeError(f"{owners[value.name]}: shape differs from the one declared")


def _inference_type(dtype: np.dtype) -> int:
    """Floating types are all shown as float32: the check is about shapes, and programs may
    mix precisions that standard ONNX type constraints would refuse."""
    if dtypes.is_float(dtype):
        return TensorProto.FLOAT
    return dtypes.to_onnx(dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
