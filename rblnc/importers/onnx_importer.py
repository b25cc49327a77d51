"""ONNX importer: an ONNX model (any opset from 7 on) becomes an IR graph at one opset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper, version_converter

from .. import dtypes
from ..errors import DynamicShapeError, ModelImportError, UnsupportedOpError
from ..ir.graph import CANONICAL_OPSET, Graph, Node, TensorInfo
from ..ir.onnx_bridge import constant_node_value, node_from_onnx, outer_scope_reads
from ..ir.shape_inference import ShapeInferenceError, infer_shapes, info_from_onnx_type
from .input_info import InputSpec, parse_input_info
from .opset_downgrade import downgrade_to_opset17

MIN_OPSET = 7
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Initializers up to this size stay visible to ONNX's shape inference (shape tensors);
# bigger ones are replaced by typed inputs so that inference never copies the weights.
_MAX_INFERENCE_CONSTANT = 4096


def import_onnx(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    input_info: Sequence | None = None,
    constant_args: Mapping[str, Any] | None = None,
) -> Graph:
    """Import an ONNX model from a path, serialized bytes or a ModelProto. `constant_args` =
    {input name: value} turns inputs into constants (in the input's declared type)."""
    proto, origin = _load(model)
    specs = parse_input_info(input_info)
    if not proto.HasField("graph") or not proto.graph.node and not proto.graph.output:
        raise ModelImportError(f"{origin}: not an ONNX model (it has no graph)")
    opset = _default_opset(proto, origin)
    if opset < MIN_OPSET:
        raise ModelImportError(f"{origin}: opset {opset} is older than {MIN_OPSET}, the oldest supported")
    proto, opset = _convert_opset(proto, opset)
    if constant_args:
        proto = _bind_constants(proto, dict(constant_args), origin)
    initializers = {t.name: t for t in proto.graph.initializer}
    _check_graph_structure(proto, initializers, origin)
    _apply_input_info(proto, specs, initializers, origin)
    inferred = _infer_types(proto, initializers)
    graph = _build_graph(proto, opset, initializers, inferred, origin)
    graph.functions = {(f.domain, f.name): f.SerializeToString() for f in proto.functions}
    try:
        infer_shapes(graph)
    except ShapeInferenceError as exc:
        raise ModelImportError(f"{origin}: {exc}") from None
    return graph


def _load(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<ModelProto>"
    if isinstance(model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_from_string(bytes(model)), "<bytes>"
        except DecodeError as exc:
            raise ModelImportError(f"<bytes>: not an ONNX model ({exc})") from None
    path = Path(model)
    if path.is_dir():
        raise ModelImportError(f"{path}: is a directory, not an ONNX file")
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    try:
        return onnx.load(str(path)), str(path)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelImportError(f"{path}: not a readable ONNX model ({_short(exc)})") from None


def _default_opset(proto: onnx.ModelProto, origin: str) -> int:
    for entry in proto.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return entry.version
    raise ModelImportError(f"{origin}: the model imports no version of the default ONNX domain")


def _convert_opset(proto: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, int]:
    if opset == CANONICAL_OPSET:
        return proto, opset
    if opset > CANONICAL_OPSET:  # onnx's converter has no adapters downwards for most changed ops
        converted = downgrade_to_opset17(proto)
        if converted is None:
            return proto, opset
    else:
        try:
            converted = version_converter.convert_version(proto, CANONICAL_OPSET)
        except Exception:  # the converter raises bare RuntimeErrors/C++ errors for missing adapters
            return proto, opset
    if not _nodes_valid(converted, CANONICAL_OPSET):  # e.g. a newer attribute it failed to drop
        return proto, opset
    if not _same_shapes(proto, converted):  # an op whose meaning changed (MaxPool's ceil_mode at 19)
        return proto, opset
    return converted, CANONICAL_OPSET


def _check_graph_structure(proto: onnx.ModelProto, initializers, origin: str) -> None:
    """What ONNX requires of a graph and the IR relies on: ops that exist, every value defined
    once and before it is read (nodes in topological order), outputs that are defined."""
    defined = {i.name for i in proto.graph.input} | set(initializers)
    for index, node in enumerate(proto.graph.node):
        label = f"node {node.name or index!r} ({node.op_type})"
        if node.domain in _DEFAULT_DOMAINS + ("ai.onnx.ml",) and not onnx.defs.has(node.op_type, node.domain):
            raise UnsupportedOpError(f"{origin}: {label}: {node.op_type!r} is not an ONNX operator")
        for name in list(node.input) + outer_scope_reads(node):
            if name and name not in defined:
                later = any(name in n.output for n in proto.graph.node[index + 1:])
                raise ModelImportError(
                    f"{origin}: {label} reads {name!r}, which "
                    + ("a later node produces (the graph is not topologically sorted or has a cycle)"
                       if later else "no input, initializer or earlier node defines")
                )
        for name in node.output:
            if name and name in defined:
                raise ModelImportError(f"{origin}: {label} defines {name!r}, which is already defined")
            defined.add(name)
    for output in proto.graph.output:
        if output.name not in defined:
            raise ModelImportError(f"{origin}: graph output {output.name!r} is never defined")


def _same_shapes(original: onnx.ModelProto, converted: onnx.ModelProto) -> bool:
    """Whether ONNX infers the same shape for every value before and after the conversion."""
    initializers = {t.name: t for t in original.graph.initializer}
    before = _infer_types(original, initializers)
    after = _infer_types(converted, initializers, forget_declared=True)
    return all(before[name].shape == info.shape for name, info in after.items()
               if name in before and before[name].is_static and info.is_static)


def _nodes_valid(proto: onnx.ModelProto, opset: int) -> bool:
    """Whether every default-domain node, those inside If/Loop/Scan bodies included, is valid at
    the converted opset. Nodes holding a body are not checked themselves: onnx's checker would
    check the body in an empty scope, where every value it reads from the outer graph is unknown
    (silero-vad's Ifs failed that way and kept the whole model at opset 15, out of every pass)."""
    context = onnx.checker.C.CheckerContext()
    context.ir_version = proto.ir_version
    context.opset_imports = {e.domain: e.version for e in proto.opset_import}
    lexical = onnx.checker.C.LexicalScopeContext()
    try:
        for node in _nodes_within(proto.graph):
            if node.domain in _DEFAULT_DOMAINS:
                onnx.checker.check_node(node, context, lexical)
    except onnx.checker.ValidationError:
        return False
    return True


def _nodes_within(graph: onnx.GraphProto):
    """The graph's nodes without a body, and those of every body, however deeply nested."""
    for node in graph.node:
        bodies = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        bodies += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
        if not bodies:
            yield node
        for body in bodies:
            yield from _nodes_within(body)


def _bind_constants(proto: onnx.ModelProto, constant_args: dict[str, Any], origin: str) -> onnx.ModelProto:
    """A copy of `proto` whose inputs named in `constant_args` are initializers holding the values."""
    initializer_names = {t.name for t in proto.graph.initializer}
    graph_inputs = {i.name: i for i in proto.graph.input if i.name not in initializer_names}
    unknown = sorted(set(constant_args) - set(graph_inputs))
    if unknown:
        raise ModelImportError(
            f"{origin}: constant_args names {', '.join(map(repr, unknown))}, but the model's inputs are "
            f"{', '.join(map(repr, graph_inputs))}"
        )
    bound = onnx.ModelProto()
    bound.CopyFrom(proto)
    kept = [i for i in bound.graph.input if i.name not in constant_args]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    for name, value in constant_args.items():
        tensor_type = graph_inputs[name].type.tensor_type
        dtype = dtypes.from_onnx(tensor_type.elem_type) if tensor_type.elem_type else None
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ModelImportError(f"{origin}: constant_args[{name!r}] = {value!r} is not a {dtype} value ({exc})") from None
        if tensor_type.HasField("shape"):
            declared = [d.dim_value if _is_static_dim(d) else None for d in tensor_type.shape.dim]
            if len(declared) != array.ndim or any(d is not None and d != s for d, s in zip(declared, array.shape)):
                if array.size == 1 and all(d in (None, 1) for d in declared):
                    array = array.reshape([1] * len(declared))
                else:
                    raise ModelImportError(
                        f"{origin}: constant_args[{name!r}] has shape {list(array.shape)}, the input's is "
                        f"{[d if d is not None else '?' for d in declared]}"
                    )
        bound.graph.initializer.append(numpy_helper.from_array(array, name))
    return bound


def _apply_input_info(proto, specs: list[InputSpec], initializers, origin: str) -> None:
    graph_inputs = {i.name: i for i in proto.graph.input if i.name not in initializers}
    unknown = [s.name for s in specs if s.name not in graph_inputs]
    if unknown:
        raise ModelImportError(
            f"{origin}: input_info names {', '.join(map(repr, unknown))}, but the model's "
            f"inputs are {', '.join(map(repr, graph_inputs))}"
        )
    for spec in specs:
        vi = graph_inputs[spec.name]
        tensor_type = vi.type.tensor_type
        model_dtype = dtypes.from_onnx(tensor_type.elem_type) if tensor_type.elem_type else None
        if model_dtype is not None and model_dtype != spec.dtype:
            raise ModelImportError(
                f"{origin}: input {spec.name!r} is {model_dtype.name} in the model, "
                f"input_info says {spec.dtype.name}"
            )
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            if len(dims) != len(spec.shape) or any(
                _is_static_dim(d) and d.dim_value != s for d, s in zip(dims, spec.shape)
            ):
                model_shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
                raise ModelImportError(
                    f"{origin}: input {spec.name!r} has shape {model_shape} in the model, "
                    f"input_info gives {list(spec.shape)}"
                )
        tensor_type.elem_type = dtypes.to_onnx(spec.dtype)
        tensor_type.ClearField("shape")
        tensor_type.shape.SetInParent()  # a rank-0 input still needs an (empty) shape
        for d in spec.shape:
            tensor_type.shape.dim.add().dim_value = d
    for name, vi in graph_inputs.items():
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise DynamicShapeError(
                f"{origin}: input {name!r} has no shape in the model; give it with "
                f"input_info=[({name!r}, [...], 'float32')] or --input {name}:1x3x224x224:float32"
            )
        for axis, d in enumerate(tensor_type.shape.dim):
            if not d.HasField("dim_value") or d.dim_value < 0:  # 0 is a static, empty dimension
                label = d.dim_param or "?"
                shape = [x.dim_value if x.HasField("dim_value") else (x.dim_param or "?")
                         for x in tensor_type.shape.dim]
                raise DynamicShapeError(
                    f"{origin}: input {name!r} has a dynamic dimension {label!r} at axis {axis} "
                    f"(shape {shape}); fix it with input_info=[({name!r}, [...], "
                    f"{dtypes.name(dtypes.from_onnx(tensor_type.elem_type))!r})] or "
                    f"--input {name}:{'x'.join('1' if not isinstance(s, int) or s <= 0 else str(s) for s in shape)}"
                )


def _is_static_dim(dim) -> bool:
    """Whether a declared dimension is fixed. Exporters write an unknown one as a dim_param, an
    unset value, or (Paddle) `dim_value: -1`; 0 is unknown too when input_info gives a size,
    as tf2onnx and older exporters write it."""
    return dim.HasField("dim_value") and dim.dim_value > 0


def _infer_types(proto: onnx.ModelProto, initializers, forget_declared: bool = False) -> dict[str, TensorInfo]:
    """Types of every value ONNX's inference can work out, without copying big weights (and,
    with `forget_declared`, without the shapes the model declares for its values)."""
    light = _copy_without_initializers(proto)
    if forget_declared:
        del light.graph.value_info[:]
        for output in light.graph.output:
            output.type.tensor_type.ClearField("shape")
    input_names = {i.name for i in light.graph.input}
    for name, tensor in initializers.items():
        if np.prod(tensor.dims, dtype=np.int64) <= _MAX_INFERENCE_CONSTANT and not tensor.external_data:
            light.graph.initializer.append(tensor)
        elif name not in input_names:
            light.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # partial knowledge is fine: the IR re-infers what is missing node by node
        inferred = light
    known = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            try:
                known[vi.name] = info_from_onnx_type(vi.type)
            except TypeError:
                continue
    return known


def _copy_without_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    initializers = list(proto.graph.initializer)
    del proto.graph.initializer[:]
    try:
        light = onnx.ModelProto()
        light.CopyFrom(proto)
    finally:
        proto.graph.initializer.extend(initializers)
    return light


def _build_graph(proto, opset: int, initializers, inferred, origin: str) -> Graph:
    graph = Graph(name=proto.graph.name or Path(origin).stem, opset=opset)
    for name, tensor in initializers.items():
        try:
            graph.add_constant(name, numpy_helper.to_array(tensor))
        except (ValueError, TypeError) as exc:
            raise ModelImportError(f"{origin}: initializer {name!r} cannot be read ({_short(exc)})") from None
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        info = info_from_onnx_type(vi.type)
        graph.add_input(vi.name, info)
    used_names: set[str] = set()
    for index, node_proto in enumerate(proto.graph.node):
        name = _unique_node_name(node_proto, index, used_names)
        if node_proto.op_type == "Constant" and node_proto.domain in _DEFAULT_DOMAINS:
            try:
                value = constant_node_value(node_proto)
            except ValueError as exc:
                raise ModelImportError(f"{origin}: Constant node {name!r}: {exc}") from None
            graph.add_constant(node_proto.output[0], value)
            continue
        node = node_from_onnx(node_proto, name)
        node.implicit_inputs = outer_scope_reads(node_proto)
        try:
            graph.add_node(node)
        except Exception as exc:
            raise ModelImportError(f"{origin}: node {name!r} ({node.op_type}): {exc}") from None
        for out in node.outputs:
            if out and out in inferred:
                graph.tensors[out] = inferred[out]
    graph.outputs = [o.name for o in proto.graph.output]
    for out in proto.graph.output:
        if out.name not in graph.tensors and out.type.HasField("tensor_type") and out.type.tensor_type.elem_type:
            graph.tensors[out.name] = info_from_onnx_type(out.type)
    return graph


def _unique_node_name(node_proto, index: int, used: set[str]) -> str:
    base = node_proto.name or f"{node_proto.op_type}_{index}"
    name, i = base, 1
    while name in used:
        name = f"{base}_{i}"
        i += 1
    used.add(name)
    return name


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
