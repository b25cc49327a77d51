"""A frozen TensorFlow GraphDef becomes an ONNX model through tf2onnx's stages, without its slow safety copies."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Iterator

import onnx
import onnx.defs

from ..errors import ModelImportError, UnsupportedOpError
from ..ir.graph import CANONICAL_OPSET

# tf2onnx logs every unmapped op and optimiser statistic (rblnc reports the unmapped ops as
# errors instead); TF logs deprecation notices for the TF1 graph APIs tf2onnx calls.
_CHATTY_LOGGERS = ("tf2onnx", "tensorflow")


def graph_def_to_onnx(graph_def, input_names: list[str], output_names: list[str],
                      renames: dict[str, str], origin: str) -> onnx.ModelProto:
    """Convert a frozen GraphDef whose inputs are `input_names` ("node:0") and outputs
    `output_names` to an ONNX model at the canonical opset; `renames` maps TF tensor names
    to the names the ONNX model's inputs and outputs get."""
    import tensorflow as tf

    try:
        from tf2onnx import optimizer, tf_loader
        from tf2onnx.tfonnx import process_tf_graph
    except ImportError:
        raise ModelImportError("compiling TensorFlow models needs tf2onnx: pip install 'rblnc[tf]'") from None

    def convert(optimized):
        with tf.Graph().as_default() as tf_graph:
            tf.import_graph_def(optimized, name="")
            return process_tf_graph(
                tf_graph, continue_on_error=False, opset=CANONICAL_OPSET,
                input_names=list(input_names), output_names=list(output_names),
                tensors_to_rename=dict(renames),
            )

    register_missing_handlers()
    _rebuild_node_protos_on_update()
    graph_def, hidden = _hide_large_constants(graph_def)
    graph_def = _inlinable(graph_def)
    with quiet_tensorflow():
        try:
            with tf.Graph().as_default():  # grappler: constant folding, function inlining
                optimized = tf_loader.tf_optimize(list(input_names), list(output_names), graph_def)
            _restore_constants(optimized, hidden)
            onnx_graph = convert(optimized)
        except Exception as exc:  # grappler's and the op handlers' own errors
            raise ModelImportError(f"{origin}: tf2onnx could not convert the graph: {_short(exc)}") from None
        _refuse_unmapped_ops(onnx_graph, origin)
        # tf2onnx's public from_graph_def runs the optimisers with catch_errors=True, which
        # deep-copies the whole graph before each of the 12 optimisers in every round: 35-70%
        # of the conversion time on the Keras zoo (docs/tensorflow.md).
        try:
            onnx_graph = optimizer.optimize_graph(onnx_graph, catch_errors=False)
        except Exception:  # an optimiser failed half-way: start again with tf2onnx's rollbacks
            onnx_graph = optimizer.optimize_graph(convert(optimized), catch_errors=True)
        return onnx_graph.make_model(f"converted from {origin}")


# Constants at least this big pass grappler as placeholders (_hide_large_constants).
_HIDDEN_CONSTANT_BYTES = 64 * 1024


def _hide_large_constants(graph_def):
    """`graph_def` with its large Const nodes replaced by Placeholders of the same type and shape,
    and those Const nodes by name.

    Grappler copies the graph it optimises about ten times over (export to a MetaGraphDef,
    serialise, parse in C++, fold, serialise back, parse): with ConvNeXtBase's 350 MB of weights
    that was 3.6 GB, and ConvNeXtXLarge needed 15 GB. Its constant folding gains nothing from
    the weights' values that rblnc's own fold_constants pass does not do later, and shapes, which
    it does need, stay on the placeholders.
    """
    from tensorflow.core.framework import attr_value_pb2, graph_pb2

    hidden = {}
    for node in graph_def.node:
        if node.op == "Const" and len(node.attr["value"].tensor.tensor_content) >= _HIDDEN_CONSTANT_BYTES:
            hidden[node.name] = node
    if not hidden:
        return graph_def, hidden
    light = graph_pb2.GraphDef()
    light.versions.CopyFrom(graph_def.versions)
    light.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in hidden:
            light.node.add().CopyFrom(node)
            continue
        tensor = node.attr["value"].tensor
        placeholder = light.node.add(name=node.name, op="Placeholder", device=node.device)
        placeholder.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=tensor.dtype))
        placeholder.attr["shape"].CopyFrom(attr_value_pb2.AttrValue(shape=tensor.tensor_shape))
    return light, hidden


def _restore_constants(graph_def, hidden: dict) -> None:
    """Puts the Const nodes `_hide_large_constants` took out back in place of their placeholders."""
    for node in graph_def.node:
        if node.op == "Placeholder" and node.name in hidden:
            node.CopyFrom(hidden[node.name])


# Keras 3 runs grouped convolutions (ConvNeXt's depthwise Conv2D(groups=C)) in a
# tf.function(jit_compile=True); grappler never inlines a function marked for XLA, and
# tf2onnx has no mapping for the call that is left (StatefulPartitionedCall).
_XLA_ATTRIBUTES = ("_XlaMustCompile", "_XlaCompile", "_XlaScope", "_XlaSeparateCompiledGradients", "_noinline")


def _inlinable(graph_def):
    """A copy of `graph_def` without the attributes that keep grappler from inlining calls."""
    if not any(a in n.attr for n in _graph_def_nodes(graph_def) for a in _XLA_ATTRIBUTES) and not any(
            a in f.attr for f in graph_def.library.function for a in _XLA_ATTRIBUTES):
        return graph_def
    copy = type(graph_def)()
    copy.CopyFrom(graph_def)
    for node in _graph_def_nodes(copy):
        for name in _XLA_ATTRIBUTES:
            if name in node.attr:
                del node.attr[name]
    for function in copy.library.function:
        for name in _XLA_ATTRIBUTES:
            if name in function.attr:
                del function.attr[name]
    return copy


def _graph_def_nodes(graph_def) -> Iterator:
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


_HANDLERS_REGISTERED = False


def register_missing_handlers() -> None:
    """Our tf2onnx handlers for TF ops it has none for (tf2onnx's `tf_op` registry), for ops
    Keras 3 and TF 2.x emit: Erfc (exact GELU: 0.5 * x * erfc(-x / sqrt(2)))."""
    global _HANDLERS_REGISTERED
    if _HANDLERS_REGISTERED:
        return
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            """1 - Erf(x): exact to fp32 rounding where erfc(x) is not tiny (x < ~3)."""
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"),
                                          inputs=[one.output[0], node.output[0]])

    _HANDLERS_REGISTERED = True


_NODE_PROTOS_REBUILT = False
_FIELDS_UPDATE_PROTO_WRITES = ("input", "output", "attribute")


def _rebuild_node_protos_on_update() -> None:
    """Make tf2onnx's `Node.update_proto` write into a fresh NodeProto instead of clearing and
    refilling the node's old one.

    With protobuf's upb backend a message's memory lives in its arena until the whole arena is
    freed: clearing `attribute` frees nothing, so every `update_proto` (once per optimiser per
    round, 36 times for a Keras ConvNeXt) left another copy of every constant behind. ConvNeXtBase
    (350 MB of weights) peaked at 16 GB during conversion and ConvNeXtLarge was killed for lack of
    memory; with a fresh proto per update the old one, arena and all, is freed. The NodeProto
    written is field for field the one tf2onnx writes.
    """
    global _NODE_PROTOS_REBUILT
    if _NODE_PROTOS_REBUILT:
        return
    from tf2onnx.graph import Node

    update_in_place = Node.update_proto

    def update_proto(self, external_tensor_storage=None):
        old = self._op
        fresh = onnx.NodeProto()
        for field, value in old.ListFields():
            if field.name in _FIELDS_UPDATE_PROTO_WRITES:
                continue  # update_proto writes these from the Node's own state
            # protobuf 7 dropped FieldDescriptor.label; older releases lack is_repeated
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            if repeated:
                getattr(fresh, field.name).extend(value)
            elif field.message_type is not None:
                getattr(fresh, field.name).CopyFrom(value)
            else:
                setattr(fresh, field.name, value)
        self._op = fresh
        update_in_place(self, external_tensor_storage)

    Node.update_proto = update_proto
    _NODE_PROTOS_REBUILT = True


def _refuse_unmapped_ops(onnx_graph, origin: str) -> None:
    """tf2onnx leaves a TF op it has no handler for in the graph (it only logs it)."""
    unmapped: dict[str, list[str]] = defaultdict(list)
    for node in _all_nodes(onnx_graph):
        if node.is_const() or node.is_graph_input():  # become initializers and inputs in make_model
            continue
        if not onnx.defs.has(node.type, node.domain or ""):
            unmapped[node.type].append(node.name)
    if not unmapped:
        return
    ops = "; ".join(
        f"{op} (node{'s' if len(names) > 1 else ''} {', '.join(map(repr, names[:3]))}"
        f"{f' and {len(names) - 3} more' if len(names) > 3 else ''})"
        for op, names in sorted(unmapped.items())
    )
    raise UnsupportedOpError(
        f"{origin}: TensorFlow op{'s' if len(unmapped) > 1 else ''} with no ONNX mapping in tf2onnx "
        f"{_tf2onnx_version()} at opset {CANONICAL_OPSET}: {ops}"
    )


def _all_nodes(onnx_graph) -> Iterator:
    for node in onnx_graph.get_nodes():
        yield node
        for body in (node.get_body_graphs() or {}).values():
            yield from _all_nodes(body)


@contextlib.contextmanager
def quiet_tensorflow():
    """Silence tf2onnx's and TF's Python loggers below CRITICAL for the duration."""
    saved = {}
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _tf2onnx_version() -> str:
    import tf2onnx

    return tf2onnx.__version__


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

