"""TensorFlow importer: a tf.function, Keras model, GraphDef or SavedModel becomes an IR graph via a frozen GraphDef."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import dtypes
from ..errors import DynamicShapeError, ModelImportError
from ..ir.graph import Graph
from .input_info import InputSpec, parse_input_info
from .onnx_importer import import_onnx
from .tensorflow_onnx import graph_def_to_onnx, quiet_tensorflow

# The layouts a model's 4-D inputs can be declared in. The tag is recorded on the inputs
# (Graph.input_layouts, the artifact's ValueInfo.layout); the interface keeps the model's own
# layout either way, since changing it would change what callers must feed.
LAYOUTS = ("NHWC", "NCHW")
_VARIABLE_OPS = {"VarHandleOp", "VariableV2", "Variable", "ReadVariableOp", "VarIsInitializedOp"}
_NOT_OUTPUTS = {"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert", "SaveV2", "RestoreV2"}
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class _Frozen:
    """A frozen GraphDef and how its tensors map to the compiled model's inputs and outputs."""

    graph_def: Any
    inputs: list[tuple[str, str]]  # (name in the compiled model, TF tensor "node:0")
    outputs: list[tuple[str, str]]
    origin: str  # how error messages name the model
    name: str  # the graph's name


# --------------------------------------------------------------------------- entry points


def import_tf_function(func: Any, input_info: Sequence | None = None, outputs: Sequence[str] | None = None,
                       layout: str | None = "NHWC", *, origin: str | None = None) -> Graph:
    """Import a tf.function, a Keras model (or any callable TF can trace), or a ConcreteFunction.

    `input_info` = [(name, shape, dtype)] gives the inputs in call order; without it the
    function's input_signature (or the Keras model's inputs) must have static shapes.
    `outputs` picks tensors of the traced graph ("node" or "node:k") instead of the returned ones.
    """
    _check_layout(layout)
    _tensorflow()
    specs = parse_input_info(input_info)
    frozen = _freeze_callable(func, specs, origin)
    if outputs:
        frozen.outputs = _resolve_outputs(frozen.graph_def, outputs, frozen.origin)
    return _import_frozen(frozen, specs, layout)


def import_tf_graph_def(graph_def: Any, outputs: Sequence[str] | None = None, layout: str | None = "NHWC",
                        input_info: Sequence | None = None) -> Graph:
    """Import a frozen GraphDef (proto, serialized bytes or a .pb path). Its Placeholders are the
    inputs; without `outputs`, the tensors no node consumes are the outputs."""
    _check_layout(layout)
    graph_def, origin = _load_graph_def(graph_def)
    specs = parse_input_info(input_info)
    variables = sorted({n.op for n in graph_def.node if n.op in _VARIABLE_OPS})
    if variables:
        raise ModelImportError(
            f"{origin}: the GraphDef reads variables ({', '.join(variables)}); freeze it first, e.g. with "
            "tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2"
        )
    inputs = [(n.name, f"{n.name}:0") for n in graph_def.node if n.op == "Placeholder"]
    name = Path(origin).stem if origin not in ("GraphDef", "<bytes>") else "graph_def"
    frozen = _Frozen(graph_def, inputs, [], origin, name)
    frozen.outputs = (_resolve_outputs(graph_def, outputs, origin) if outputs
                      else _sink_outputs(graph_def, origin))
    return _import_frozen(frozen, specs, layout)


def import_tf_saved_model(path: str | os.PathLike, input_info: Sequence | None = None,
                          outputs: Sequence[str] | None = None, layout: str | None = "NHWC",
                          signature: str = "serving_default") -> Graph:
    """Import a SavedModel directory (tf.saved_model.save, Keras' model.export) through one of its
    signatures, or a model file saved by Keras (.keras, .h5)."""
    path = Path(path)
    # A signature does not own the variables it reads: the loaded SavedModel must outlive freezing.
    function, owner = _load_tf_model(path, signature)
    graph = import_tf_function(function, input_info, outputs, layout, origin=str(path))
    del owner
    return graph


def _load_tf_model(path: Path, signature: str) -> tuple[Any, Any]:
    """The callable a SavedModel directory (its `signature`) or a Keras model file holds, and
    the object that must stay alive while it is used."""
    tf = _tensorflow()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
            raise ModelImportError(f"{path}: a directory without saved_model.pb is not a SavedModel")
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises a zoo of types for damaged or foreign files
            raise ModelImportError(f"{path}: the SavedModel cannot be loaded ({_short(exc)})") from None
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        if signature in signatures:
            return signatures[signature], loaded
        if not signatures:
            raise ModelImportError(f"{path}: the SavedModel has no signatures to compile")
        raise ModelImportError(
            f"{path}: no signature {signature!r}; the SavedModel has {', '.join(map(repr, sorted(signatures)))}"
        )
    if path.suffix.lower() in KERAS_SUFFIXES:
        if not path.is_file():
            raise ModelImportError(f"{path}: no such file")
        import keras

        try:
            model = keras.models.load_model(str(path), compile=False)
            return model, model
        except Exception as exc:  # missing custom objects, a damaged zip or HDF5 file...
            raise ModelImportError(
                f"{path}: Keras cannot load the model ({_short(exc)}); a model with custom layers needs them "
                "registered (keras.saving.register_keras_serializable) before compiling"
            ) from None
    raise ModelImportError(f"{path}: expected a SavedModel directory or a Keras model file ({', '.join(KERAS_SUFFIXES)})")


# --------------------------------------------------------------------------- tracing and freezing


def _freeze_callable(func: Any, specs: list[InputSpec], origin: str | None) -> _Frozen:
    tf = _tensorflow()
    output_names = None
    graph_name = Path(origin).stem if origin else ""
    if _is_keras_model(func):
        graph_name = graph_name or func.name
        origin = origin or f"Keras model {func.name!r}"
        specs = specs or _keras_input_specs(func, origin)
        model = func
        function = tf.function(lambda *xs: model(xs[0] if len(xs) == 1 else list(xs), training=False))
        concrete = _trace(function, specs, origin)
        names = list(getattr(model, "output_names", None) or [])
        output_names = names if len(names) == len(concrete.outputs) else None
        input_names = [s.name for s in specs]
    elif isinstance(func, tf.types.experimental.ConcreteFunction):
        graph_name = graph_name or _function_name(func)
        origin = origin or f"concrete function {graph_name!r}"
        concrete = func
        input_names = _concrete_input_names(func, origin)
    else:
        if not isinstance(func, tf.types.experimental.PolymorphicFunction):
            if not callable(func):
                raise ModelImportError(
                    f"expected a tf.function, a Keras model or a ConcreteFunction, got {type(func).__name__}"
                )
            func = tf.function(func)
        graph_name = graph_name or _function_name(func)
        origin = origin or f"tf.function {graph_name!r}"
        if specs:
            concrete = _trace(func, specs, origin)
            input_names = [s.name for s in specs]
        elif func.input_signature is not None:
            concrete = func.get_concrete_function()
            input_names = _concrete_input_names(concrete, origin)
        else:
            raise ModelImportError(
                f"{origin} has no input_signature; give input_info=[(name, shape, dtype), ...] for its arguments"
            )
    try:
        graph_def, graph_inputs = _freeze(concrete)
    except Exception as exc:
        raise ModelImportError(f"{origin}: its variables cannot be frozen into constants ({_short(exc)})") from None
    if len(graph_inputs) != len(input_names):
        raise ModelImportError(
            f"{origin}: the traced graph has {len(graph_inputs)} inputs but {len(input_names)} were named "
            f"({', '.join(input_names)})"
        )
    flat_outputs = [t for t in concrete.outputs if t is not None]
    if not flat_outputs:
        raise ModelImportError(f"{origin} returns no tensors")
    output_names = output_names or _structured_output_names(concrete)
    if len(output_names) != len(flat_outputs):
        output_names = [f"output_{i}" for i in range(len(flat_outputs))]
    return _Frozen(
        graph_def,
        [(name, t.name) for name, t in zip(input_names, graph_inputs)],
        [(name, t.name) for name, t in zip(output_names, flat_outputs)],
        origin,
        graph_name,
    )


def _freeze(concrete) -> tuple[Any, list]:
    """The function's GraphDef with its variables and captured tensors as Const nodes, and
    the graph inputs that remain (the function's own arguments).

    convert_variables_to_constants_v2 would also rebuild a ConcreteFunction from the frozen
    GraphDef, which we never call: a quarter of the import time of ResNet-50. So, as tf2onnx
    does for large models, we call the two steps it is made of and stop after the first.
    Control flow stays functional (While/If), which tf2onnx converts more reliably than the
    lowered TF1 form, and nested functions are inlined (tf2onnx's own settings).
    """
    try:
        from tensorflow.python.framework.convert_to_constants import (
            _FunctionConverterDataInEager, _replace_variables_by_constants,
        )
    except ImportError:  # pragma: no cover - a TF without these internals
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
        tf = _tensorflow()
        return frozen.graph.as_graph_def(), [t for t in frozen.inputs if t.dtype != tf.resource]
    converter = _FunctionConverterDataInEager(func=concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def, converted_indices = _replace_variables_by_constants(converter_data=converter)
    captures = concrete.graph.internal_captures
    converted = {id(captures[i]) for i in converted_indices}
    return graph_def, [t for t in concrete.inputs if id(t) not in converted]


def _trace(function, specs: list[InputSpec], origin: str):
    tf = _tensorflow()
    try:
        signature = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in specs]
    except TypeError as exc:
        raise ModelImportError(f"{origin}: TensorFlow has no type for an input_info dtype ({exc})") from None
    try:
        return function.get_concrete_function(*signature)
    except Exception as exc:  # the user's Python code raised while tracing
        described = ", ".join(f"{s.name}: {dtypes.name(s.dtype)}[{'x'.join(map(str, s.shape))}]" for s in specs)
        raise ModelImportError(f"{origin}: tracing with inputs ({described}) failed: {_tracing_cause(exc)}") from None


def _is_keras_model(func: Any) -> bool:
    try:
        import keras
    except ImportError:  # pragma: no cover - keras ships with tensorflow
        return False
    return isinstance(func, keras.Model)


def _keras_input_specs(model, origin: str) -> list[InputSpec]:
    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        dtype = dtypes.to_numpy(tensor.dtype)
        if any(d is None for d in shape):
            fixed = "x".join("1" if d is None else str(d) for d in shape)
            raise DynamicShapeError(
                f"{origin}: input {tensor.name!r} has shape {_shape_text(shape)}; fix its dynamic dimensions with "
                f"input_info=[({tensor.name!r}, [{fixed.replace('x', ', ')}], {dtypes.name(dtype)!r})] "
                f"or --input {tensor.name}:{fixed}:{dtypes.name(dtype)}"
            )
        specs.append(InputSpec(tensor.name, shape, dtype))
    return specs


def _concrete_input_names(concrete, origin: str) -> list[str]:
    """Argument names of a ConcreteFunction in the order of its graph's inputs (positional
    arguments, then keyword arguments sorted by name, as tf.nest flattens them)."""
    tf = _tensorflow()
    args, kwargs = concrete.structured_input_signature
    names = []
    for i, spec in enumerate(args):
        if not isinstance(spec, tf.TensorSpec):
            raise ModelImportError(f"{origin}: argument {i} is a {type(spec).__name__}, not a tensor")
        names.append(spec.name or f"input_{i}")
    for key in sorted(kwargs):
        if not isinstance(kwargs[key], tf.TensorSpec):
            raise ModelImportError(f"{origin}: argument {key!r} is a {type(kwargs[key]).__name__}, not a tensor")
        names.append(key)
    return names


def _structured_output_names(concrete) -> list[str]:
    tf = _tensorflow()
    structure = concrete.structured_outputs
    if isinstance(structure, (tf.Tensor, tf.TensorSpec)) or not tf.nest.is_nested(structure):
        return ["output_0"]
    paths = _flat_paths(structure)
    return [f"output_{p}" if p.isdigit() else p for p in paths]


def _flat_paths(structure, prefix: str = "") -> list[str]:
    """Paths of the leaves of nested dicts/lists in tf.nest.flatten's order (dict keys sorted)."""
    if isinstance(structure, dict):
        items = [(str(k), structure[k]) for k in sorted(structure)]
    elif isinstance(structure, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(structure)]
    else:
        return [prefix]
    return [p for key, value in items for p in _flat_paths(value, f"{prefix}/{key}" if prefix else key)]


# --------------------------------------------------------------------------- GraphDefs


def _load_graph_def(graph_def: Any):
    tf = _tensorflow()
    if isinstance(graph_def, tf.compat.v1.GraphDef):
        return graph_def, "GraphDef"
    if isinstance(graph_def, (str, os.PathLike)):
        path = Path(graph_def)
        if not path.is_file():
            raise ModelImportError(f"{path}: no such file")
        data, origin = path.read_bytes(), str(path)
    elif isinstance(graph_def, (bytes, bytearray, memoryview)):
        data, origin = bytes(graph_def), "<bytes>"
    else:
        raise ModelImportError(f"expected a GraphDef, its bytes or a .pb path, got {type(graph_def).__name__}")
    proto = tf.compat.v1.GraphDef()
    try:
        proto.ParseFromString(data)
    except Exception as exc:
        raise ModelImportError(f"{origin}: not a serialized GraphDef ({_short(exc)})") from None
    if not proto.node:
        raise ModelImportError(f"{origin}: the GraphDef has no nodes")
    return proto, origin


def _resolve_outputs(graph_def, outputs: Sequence[str], origin: str) -> list[tuple[str, str]]:
    if isinstance(outputs, str):
        outputs = [outputs]
    nodes = {n.name: n for n in graph_def.node}
    resolved = []
    for name in outputs:
        node_name, _, index = str(name).partition(":")
        if node_name not in nodes or (index and not index.isdigit()):
            close = difflib.get_close_matches(node_name, list(nodes), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ModelImportError(f"{origin}: output {name!r} names no tensor of the graph{hint}")
        resolved.append((str(name), f"{node_name}:{index or 0}"))
    return resolved


def _sink_outputs(graph_def, origin: str) -> list[tuple[str, str]]:
    consumed = set()
    for node in graph_def.node:
        for inp in node.input:
            consumed.add(inp.lstrip("^").partition(":")[0])
    sinks = [n for n in graph_def.node if n.name not in consumed and n.op not in _NOT_OUTPUTS]
    if not sinks:
        raise ModelImportError(f"{origin}: no node produces an unused tensor; name the outputs with outputs=[...]")
    outputs = []
    for node in sinks:
        count = len(node.attr["T"].list.type) if node.op == "IdentityN" else 1
        outputs += [(node.name if count == 1 else f"{node.name}:{i}", f"{node.name}:{i}") for i in range(count)]
    return outputs


# --------------------------------------------------------------------------- to the IR


def _import_frozen(frozen: _Frozen, specs: list[InputSpec], layout: str | None) -> Graph:
    tf = _tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.CopyFrom(frozen.graph_def)  # input shapes are set on the copy, not on the caller's proto
    _apply_input_info(graph_def, frozen, specs)
    keep = [t.partition(":")[0] for _, t in frozen.inputs + frozen.outputs]
    with quiet_tensorflow():  # extract_sub_graph is a TF1 API and says so on every first call
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, keep)
    renames = {tensor: name for name, tensor in frozen.inputs + frozen.outputs}
    proto = graph_def_to_onnx(
        graph_def, [t for _, t in frozen.inputs], [t for _, t in frozen.outputs], renames, frozen.origin
    )
    graph = import_onnx(proto)
    graph.name = frozen.name
    if layout:
        for name in graph.inputs:
            shape = graph.tensors[name].shape
            if shape is not None and len(shape) == 4:
                graph.input_layouts[name] = layout
    return graph


def _apply_input_info(graph_def, frozen: _Frozen, specs: list[InputSpec]) -> None:
    """Set each input Placeholder's shape from input_info; refuse inputs still dynamic."""
    tf = _tensorflow()
    placeholders = {n.name: n for n in graph_def.node if n.op == "Placeholder"}
    by_name = {name: placeholders.get(tensor.partition(":")[0]) for name, tensor in frozen.inputs}
    unknown = [s.name for s in specs if s.name not in by_name]
    if unknown:
        raise ModelImportError(
            f"{frozen.origin}: input_info names {', '.join(map(repr, unknown))}, but the inputs are "
            f"{', '.join(map(repr, by_name)) or 'none'}"
        )
    for spec in specs:
        node = by_name[spec.name]
        if node is None:
            continue
        model_dtype = dtypes.to_numpy(tf.as_dtype(node.attr["dtype"].type))
        if model_dtype != spec.dtype:
            raise ModelImportError(
                f"{frozen.origin}: input {spec.name!r} is {dtypes.name(model_dtype)} in the model, "
                f"input_info says {dtypes.name(spec.dtype)}"
            )
        model_shape = _placeholder_shape(node)
        if model_shape is not None and (
            len(model_shape) != len(spec.shape)
            or any(d is not None and d != s for d, s in zip(model_shape, spec.shape))
        ):
            raise ModelImportError(
                f"{frozen.origin}: input {spec.name!r} has shape {_shape_text(model_shape)} in the model, "
                f"input_info gives {list(spec.shape)}"
            )
        node.attr["shape"].shape.CopyFrom(tf.TensorShape(spec.shape).as_proto())
    for name, node in by_name.items():
        shape = None if node is None else _placeholder_shape(node)
        if node is not None and (shape is None or any(d is None for d in shape)):
            dtype = dtypes.name(dtypes.to_numpy(tf.as_dtype(node.attr["dtype"].type)))
            fixed = "x".join("1" if d is None else str(d) for d in shape or ())
            raise DynamicShapeError(
                f"{frozen.origin}: input {name!r} has shape {_shape_text(shape)}; fix its dynamic dimensions "
                f"with input_info=[({name!r}, [...], {dtype!r})] or --input {name}:{fixed or '1x...'}:{dtype}"
            )


def _placeholder_shape(node) -> tuple | None:
    proto = node.attr["shape"].shape
    if "shape" not in node.attr or proto.unknown_rank:
        return None
    return tuple(None if d.size < 0 else d.size for d in proto.dim)


# --------------------------------------------------------------------------- helpers


def _check_layout(layout: str | None) -> None:
    if layout is not None and layout not in LAYOUTS:
        raise ModelImportError(f"layout must be one of {', '.join(LAYOUTS)} (or None), got {layout!r}")


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelImportError(
            "compiling TensorFlow models needs TensorFlow and tf2onnx: pip install 'rblnc[tf]'"
        ) from None
    return tf


def _function_name(func) -> str:
    name = str(getattr(func, "__name__", "") or getattr(func, "name", "") or "function")
    return name.decode() if isinstance(name, bytes) else name


def _shape_text(shape) -> str:
    if shape is None:
        return "of unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _tracing_cause(exc: Exception) -> str:
    """The line that says what went wrong in an error raised while tracing: Keras puts it in
    bold between call details, TF ends its 'in user code:' stack with it."""
    text = str(exc)
    bold = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    if bold:
        return " ".join(bold.group(1).split())
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w*(Error|Exception)\b", line)]
    return (errors or lines or [type(exc).__name__])[-1]


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__ = ["LAYOUTS", "import_tf_function", "import_tf_graph_def", "import_tf_saved_model"]
