"""rblnc's own quantisation written out as a QDQ ONNX file, in onnxruntime's QDQ format.

insert.py quantises the float graph by writing QuantizeLinear / DequantizeLinear around every int8
tensor; the quantize stage keeps that graph (`snapshot`) before qdq.py rewrites it into int8 ops.
`export_qdq` writes it as standard ONNX: activations as a per-tensor QuantizeLinear ->
DequantizeLinear pair with rblnc's scale and zero point, weights as int8 initializers read through
a per-output-channel DequantizeLinear (axis), Conv / Gemm biases as int32 initializers at scale
input x weight (as onnxruntime's `quantize_static` writes them, so onnxruntime fuses the same
QLinearConv rblnc computes), every op rblnc keeps in float left float, and rblnc's own fused ops
written as their standard decompositions. Importing the file (qdq.py) gives back the same scales.
The graph is the one rblnc quantised: after its passes (BatchNormalization folded into the conv,
Conv + Relu fused then split again), so it is the same quantised model, not the source file with
QDQ pasted in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from ..errors import CompileError
from ..ir.graph import Graph, Node, TensorInfo
from ..ir.onnx_bridge import make_model
from ..ir.quantized_ops import bias_params
from ..quant_params import QuantParams

# Per-channel DequantizeLinear (its `axis`) is ONNX opset 13 on.
_MIN_OPSET = 13
# protobuf cannot serialise a message over 2 GiB: larger models keep their weights in a side file.
_EXTERNAL_DATA_BYTES = 1 << 30


def snapshot(graph: Graph) -> Graph:
    """A copy of the graph in its QDQ form (constants shared, not copied), without the constants
    nothing reads any more (the float weights insert.py replaced by int8 ones)."""
    kept = graph.copy()
    for name in [c for c in kept.constants if not kept.consumers(c) and c not in kept.outputs]:
        kept.remove_constant(name)
    return kept


def qdq_model(graph: Graph) -> onnx.ModelProto:
    """The QDQ graph as an ONNX model (checked by onnx.checker); `graph` is left as it is."""
    if graph.opset < _MIN_OPSET:
        raise CompileError(f"export_qdq: the model is at ONNX opset {graph.opset} (it could not be converted to a "
                           f"newer one); per-channel DequantizeLinear needs opset {_MIN_OPSET} or later")
    graph = graph.copy()
    for node in list(graph.topological_order()):
        if node.op_type in ("Conv", "Gemm", "MatMul") and not node.domain:
            _quantize_bias(graph, node)
        elif node.op_type == "QuantizeLinear" and not node.domain:
            _drop_saturated_activation(graph, node)
    nodes = graph.topological_order()
    constants = sorted({i for n in nodes for i in n.inputs + n.implicit_inputs if i and graph.is_constant(i)}
                       | {o for o in graph.outputs if graph.is_constant(o)})
    model = make_model(graph, nodes, graph.inputs, graph.outputs, name=graph.name or "rblnc_qdq",
                       initializers=constants)
    model.doc_string = "rblnc's int8 quantisation in QDQ form (docs/precision.md)"
    if not _large(model):  # a larger one is checked once written (the checker reads its side file)
        onnx.checker.check_model(model)
    return model


def _large(model: onnx.ModelProto) -> bool:
    return sum(len(t.raw_data) for t in model.graph.initializer) >= _EXTERNAL_DATA_BYTES


def export_qdq(graph: Graph, path: str | os.PathLike) -> Path:
    """Writes the QDQ graph to `path` (.onnx); returns the path."""
    model = qdq_model(graph)
    path = Path(path)
    if not path.parent.is_dir():
        raise CompileError(f"export_qdq: the folder of {str(path)!r} does not exist")
    large = _large(model)
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{path.name}.data" if large else None)
    if large:
        onnx.checker.check_model(str(path))
    return path


def _dequantize_params(graph: Graph, tensor: str, integer_kind: str) -> tuple[QuantParams, bool] | None:
    """(params, per channel) of a DequantizeLinear whose input is an activation ("i": int8 or
    uint8, per tensor) or an int8 constant (the weight), with constant scale and zero point."""
    producer = graph.producer(tensor)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain:
        return None
    source, scale, zero = (list(producer.inputs) + ["", ""])[:3]
    if not scale or not graph.is_constant(scale) or (zero and not graph.is_constant(zero)):
        return None
    if graph.is_constant(source) != (integer_kind == "weight"):
        return None
    values = np.asarray(graph.constants[scale], np.float32)
    zeros = np.asarray(graph.constants[zero]) if zero else np.zeros(values.shape, np.int64)
    return QuantParams.make(values, zeros, int(producer.attrs.get("axis", 1))), values.size > 1


def _drop_saturated_activation(graph: Graph, quantize: Node) -> None:
    """Relu / Clip -> QuantizeLinear where the quantisation's saturation already clamps at the
    activation's bounds (a Relu's zero point at the integer minimum, as rblnc's ranges calibrated
    on the Relu's output have): the activation goes, as onnxruntime's QDQ files leave it out. Exact
    (quantisation is monotone), and rblnc's passes would otherwise fuse it into the op before, out
    of reach of the QDQ rewrite on import."""
    activation = graph.producer(quantize.inputs[0])
    if activation is None or activation.op_type not in ("Relu", "Clip") or activation.domain \
            or activation.outputs[0] in graph.outputs or len(graph.consumers(activation.outputs[0])) != 1:
        return
    scale, zero = (list(quantize.inputs) + ["", ""])[1:3]
    if not graph.is_constant(scale) or not zero or not graph.is_constant(zero):
        return
    scale = float(np.asarray(graph.constants[scale]).reshape(-1)[0])
    zero_array = np.asarray(graph.constants[zero])
    if zero_array.size != 1 or zero_array.dtype not in (np.int8, np.uint8):
        return
    info = np.iinfo(zero_array.dtype)
    if activation.op_type == "Relu":
        low, high = 0.0, np.inf
    else:
        bounds = [activation.inputs[k] if len(activation.inputs) > k else "" for k in (1, 2)]
        if any(b and not graph.is_constant(b) for b in bounds):
            return
        low, high = (float(np.asarray(graph.constants[b])) if b else default
                     for b, default in zip(bounds, (-np.inf, np.inf)))
    zero_point = int(zero_array.reshape(-1)[0])
    # ONNX QuantizeLinear before saturation: round_half_even(v / scale) + zero_point (in fp32).
    quantised = lambda v: float(np.round(np.float32(v) / np.float32(scale))) + zero_point  # noqa: E731
    if (low == -np.inf or quantised(low) <= info.min) and (high == np.inf or quantised(high) >= info.max):
        graph.set_input(quantize, 0, activation.inputs[0])
        graph.remove_node(activation.name)


def _quantize_bias(graph: Graph, node: Node) -> None:
    """A float constant bias of a Conv / Gemm (or of the Add of a constant vector that is a MatMul's
    only reader) between an int8 activation and an int8 weight becomes an int32 initializer at scale
    input x weight (per output channel), read through a DequantizeLinear: the values qdq.py rounds
    it to when it makes the QConv / QGemm."""
    if node.op_type == "MatMul":
        readers = graph.consumers(node.outputs[0])
        if len(readers) != 1 or readers[0].op_type != "Add" or readers[0].domain \
                or node.outputs[0] in graph.outputs:
            return
        user = readers[0]
        position = 1 if user.inputs[0] == node.outputs[0] else 0
    else:
        user, position = node, 2
    if len(user.inputs) <= position or not user.inputs[position] or not graph.is_constant(user.inputs[position]):
        return
    x = _dequantize_params(graph, node.inputs[0], "activation")
    w = _dequantize_params(graph, node.inputs[1], "weight")
    if x is None or w is None or not x[0].per_tensor:
        return
    weight = graph.tensors[graph.producer(node.inputs[1]).inputs[0]]
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "Gemm":
        axis = 0 if node.attrs.get("transB", 0) else 1
    else:
        axis = 1
    channels = weight.shape[axis]
    if w[1] and w[0].axis != axis:
        return
    name = user.inputs[position]
    bias = np.asarray(graph.constants[name], np.float64)
    if bias.size not in (1, channels) or (node.op_type == "MatMul" and bias.shape not in ((channels,), (1, channels))):
        return
    scale = np.broadcast_to(bias_params(x[0], w[0]).scale, (channels,)).astype(np.float32)
    real = np.broadcast_to(bias.reshape(-1), (channels,))
    integers = np.clip(np.round(real / scale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
    stored = graph.add_constant(graph.unique_name(f"{name}_int32"), integers)
    scale_name = graph.add_constant(graph.unique_name(f"{name}_int32_scale"), scale)
    zero_name = graph.add_constant(graph.unique_name(f"{name}_int32_zero_point"), np.zeros(channels, np.int32))
    dequantised = graph.unique_name(f"{name}_dequantized")
    graph.add_node(Node(graph.unique_name(f"{name}_DequantizeLinear"), "DequantizeLinear",
                        [stored, scale_name, zero_name], [dequantised], {"axis": 0}),
                   [TensorInfo(np.dtype(np.float32), (channels,))])
    graph.set_input(user, position, dequantised)
