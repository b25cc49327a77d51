"""Brings an ONNX model of opset 18 to 23 down to opset 17, where every node means the same there.

Passes and NPU kernels implement opset 17 (CANONICAL_OPSET). ONNX's version converter has no
adapters downwards for the ops that changed after it (Pad, Split, the Reduce ops...), so a model
exported at opset 18 (torch's dynamo exporter's default, silero-vad's `op18` file) kept its opset,
ran no pass, and sent every changed op to the host. Most changes after 17 only add element types
(float8, int4, bfloat16 on more ops); a few move an attribute to an input or add an option. A node
that uses nothing opset 17 lacks is rewritten to its opset-17 form; if any node does (a new op, a
new mode, a float8 type), `downgrade_to_opset17` returns None and the model keeps its opset.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TARGET = 17  # CANONICAL_OPSET (rblnc/ir/graph.py), kept literal: this module reads only onnx
_DEFAULT_DOMAINS = ("", "ai.onnx")
_REDUCE_OPS = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
               "ReduceMin", "ReduceProd", "ReduceSumSquare"}
# Element types opset 17 has; later opsets add float8 and 4-bit types.
_OPSET17_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE,
                  TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
                  TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
                  TensorProto.BOOL, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128}


class _Unsupported(Exception):
    """A node uses something opset 17 does not have."""


def downgrade_to_opset17(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of `proto` at opset 17 with every node in its opset-17 form, or None."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # onnx raises several types for models it cannot infer
        inferred = model
    shapes = _shapes_within(inferred.graph)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    created: dict[str, np.ndarray] = {}  # constant inputs the rewrites add (Split sizes, full pads)
    try:
        _downgrade_graph(model.graph, constants, shapes, created)
    except _Unsupported:
        return None
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in created.items())
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            entry.version = TARGET
    if not _types_allowed_at_opset17(model.graph, _types_within(inferred.graph, model.graph)):
        return None
    return model


def _shapes_within(graph: onnx.GraphProto) -> dict:
    """Every value's inferred shape (None for a dimension known only at run time), bodies included."""
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input) + list(graph.output)
              if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    for node in graph.node:
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                shapes.update(_shapes_within(body))
    return shapes


def _types_within(*graphs: onnx.GraphProto) -> dict:
    """Every value's element type, bodies included."""
    types = {}
    for graph in graphs:
        types.update({t.name: t.data_type for t in graph.initializer})
        types.update({v.name: v.type.tensor_type.elem_type
                      for v in list(graph.value_info) + list(graph.input) + list(graph.output)
                      if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type})
        for node in graph.node:
            for attr in node.attribute:
                for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    types.update(_types_within(body))
    return types


def _types_allowed_at_opset17(graph: onnx.GraphProto, types: dict) -> bool:
    """Whether every default-domain node's input types meet its opset-17 schema's constraints
    (opset 19 and later let DequantizeLinear read int16, float8 and 4-bit values; 17 does not)."""
    for node in graph.node:
        if node.domain in _DEFAULT_DOMAINS:
            schema = onnx.defs.get_schema(node.op_type, TARGET, "")
            allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
            for i, name in enumerate(node.input):
                if not name or name not in types or not schema.inputs:
                    continue
                formal = schema.inputs[min(i, len(schema.inputs) - 1)]
                accepted = allowed.get(formal.type_str, {formal.type_str})
                if f"tensor({TensorProto.DataType.Name(types[name]).lower()})" not in accepted:
                    return False
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                if not _types_allowed_at_opset17(body, types):
                    return False
    return True


def _downgrade_graph(graph: onnx.GraphProto, constants: dict, shapes: dict, created: dict) -> None:
    constants = dict(constants, **{t.name: numpy_helper.to_array(t) for t in graph.initializer})
    for node in graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        _downgrade_node(node, constants, shapes, created)
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _downgrade_graph(body, constants, shapes, created)


def _downgrade_node(node: onnx.NodeProto, constants: dict, shapes: dict, created: dict) -> None:
    op = node.op_type
    try:
        since_17 = onnx.defs.get_schema(op, TARGET, "").since_version
    except onnx.defs.SchemaError:
        raise _Unsupported(f"{op} is newer than opset {TARGET}") from None
    _check_types(node)
    if op in _REDUCE_OPS:
        _axes_input_to_attribute(node, constants, since_17)
    elif op == "Split":
        _num_outputs_to_split(node, shapes, created)
    elif op == "Pad":
        _pad_axes_to_full_pads(node, constants, shapes, created)
    elif op == "Resize":
        _drop_defaults(node, {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"})
        if _attr(node, "axes") is not None:
            raise _Unsupported("Resize with axes")
        if _attr(node, "coordinate_transformation_mode") == b"half_pixel_symmetric":
            raise _Unsupported("Resize half_pixel_symmetric")
    elif op in ("AveragePool", "LpPool"):
        dilations = _attr(node, "dilations")
        if dilations is not None and any(d != 1 for d in dilations):
            raise _Unsupported(f"{op} with dilations")
        _drop(node, "dilations")
        if op == "LpPool":
            _drop_defaults(node, {"ceil_mode": 0})
    elif op in ("Cast", "CastLike"):
        _drop(node, "saturate")  # only float8 targets saturate, and those _check_types refused
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        _drop(node, "saturate")
        if _attr(node, "block_size") not in (None, 0):
            raise _Unsupported(f"{op} with blocks")
        _drop(node, "block_size")
        if _attr(node, "output_dtype") not in (None, 0):
            raise _Unsupported(f"{op} with output_dtype")
        _drop(node, "output_dtype")
    elif op in ("ScatterElements", "ScatterND"):
        if _attr(node, "reduction") in (b"max", b"min"):
            raise _Unsupported(f"{op} reduction max/min")
    elif op in ("DFT", "GridSample", "OptionalGetElement", "OptionalHasElement", "Col2Im"):
        if onnx.defs.get_schema(op, 23, "").since_version != since_17:
            raise _Unsupported(f"{op} changed its meaning after opset {TARGET}")
    # Any other op changed only the element types it accepts (checked above).


def _check_types(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.name == "to" and attr.i not in _OPSET17_TYPES:
            raise _Unsupported(f"{node.op_type} to element type {attr.i}")
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type not in _OPSET17_TYPES:
            raise _Unsupported(f"{node.op_type} holds a tensor of element type {attr.t.data_type}")


def _attr(node: onnx.NodeProto, name: str):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return None


def _drop(node: onnx.NodeProto, name: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def _drop_defaults(node: onnx.NodeProto, defaults: dict) -> None:
    for name, default in defaults.items():
        value = _attr(node, name)
        if value is not None and value != default:
            raise _Unsupported(f"{node.op_type} {name}={value!r}")
        _drop(node, name)


def _axes_input_to_attribute(node: onnx.NodeProto, constants: dict, since_17: int) -> None:
    """Reduce*-18 take axes as an input; at 17 (but ReduceSum, unchanged) as an attribute."""
    if since_17 >= 13 and node.op_type == "ReduceSum":
        return
    noop = _attr(node, "noop_with_empty_axes") or 0
    _drop(node, "noop_with_empty_axes")
    axes_name = node.input[1] if len(node.input) > 1 else ""
    if not axes_name:
        if noop:
            raise _Unsupported(f"{node.op_type} that reduces nothing")
        return
    if axes_name not in constants:
        raise _Unsupported(f"{node.op_type} with axes computed at run time")
    axes = [int(a) for a in np.asarray(constants[axes_name]).reshape(-1)]
    del node.input[1:]
    if axes:
        node.attribute.append(helper.make_attribute("axes", axes))
    elif noop:
        raise _Unsupported(f"{node.op_type} that reduces nothing")


def _num_outputs_to_split(node: onnx.NodeProto, shapes: dict, created: dict) -> None:
    """Split-18's num_outputs becomes the sizes input opset 17 reads (equal parts, the last smaller)."""
    count = _attr(node, "num_outputs")
    if count is None:
        return
    _drop(node, "num_outputs")
    if len(node.input) > 1 and node.input[1]:
        return
    shape = shapes.get(node.input[0])
    axis = _attr(node, "axis") or 0
    if not shape or shape[axis] is None:
        raise _Unsupported("Split into num_outputs of a dimension unknown at import")
    length = shape[axis]
    part = -(-length // count)
    sizes = [part] * (length // part) + ([length % part] if length % part else [])
    if len(sizes) != count:
        raise _Unsupported("Split whose num_outputs do not divide its dimension as opset 18 says")
    name = _fresh(f"{node.name or node.output[0]}_split_sizes_opset17", created)
    del node.input[1:]
    node.input.append(name)
    created[name] = np.asarray(sizes, np.int64)


def _pad_axes_to_full_pads(node: onnx.NodeProto, constants: dict, shapes: dict, created: dict) -> None:
    """Pad-18's axes input: pads over the listed axes become pads over every axis (opset 17's)."""
    mode = _attr(node, "mode")
    if mode not in (None, b"constant", b"reflect", b"edge"):
        raise _Unsupported(f"Pad mode {mode!r}")
    axes_name = node.input[3] if len(node.input) > 3 else ""
    if not axes_name:
        return
    if axes_name not in constants or node.input[1] not in constants or not shapes.get(node.input[0]):
        raise _Unsupported("Pad with axes and pads computed at run time")
    rank = len(shapes[node.input[0]])
    axes = [int(a) % rank for a in np.asarray(constants[axes_name]).reshape(-1)]
    given = np.asarray(constants[node.input[1]]).reshape(-1)
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = given[i], given[len(axes) + i]
    name = _fresh(f"{node.name or node.output[0]}_full_pads_opset17", created)
    node.input[1] = name
    del node.input[3:]
    created[name] = full


def _fresh(name: str, created: dict) -> str:
    while name in created:
        name += "_"
    return name
