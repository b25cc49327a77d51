"""Our quantised ops (domain ai.rblnc): int8 compute whose scales are the operands' QuantParams.

The quantize stage (rblnc/quantize/) writes them. Every integer operand and result carries its
`graph.quantization` entry (real = scale * (q - zero_point)); an op means the float op on the
dequantised operands, its result quantised (round half to even, saturated) to its own params:

    QConv(X, W, [B])      Q(act(Conv(DQ(X), DQ(W), DQ(B))))     Conv attrs + activation
    QGemm(X, W, [B])      Q(act(DQ(X) @ DQ(W)^T + DQ(B)))       W is [N, K] (per-row scales), X [..., K]
    QAdd(A, B)            Q(act(DQ(A) + DQ(B)))                 activation
    QGlobalAveragePool(X) Q(GlobalAveragePool(DQ(X)))
    QMaxPool(X)           Q(MaxPool(DQ(X)))                     MaxPool attrs
    QAveragePool(X)       Q(AveragePool(DQ(X)))                 AveragePool attrs (2-D)
    QConcat(X0, X1, ...)  Q(Concat(DQ(X0), DQ(X1), ...))        Concat's axis

QConcat requantises each input whose params (or integer type) differ from the result's as
saturate(round_half_even((q - zp) * fp32(scale / y_scale)) + y_zp) and copies the others' integers
exactly (rblnc's own quantisation gives a Concat's inputs its result's params, so there it is a
pure copy). QAveragePool sums each window's (q - zp) in int32 (a padded element is real 0) and
requantises that sum by fp32(scale / (count * y_scale)), count the window's elements with the
padding (count_include_pad=1) or without it, as QGlobalAveragePool with count the plane's size.

X, A, and results are int8 or uint8; W is int8, symmetric (zero point 0), per tensor or per
output channel; B is int32 with scale X.scale * W.scale and zero point 0. `activation` is ""
(none), "Relu", or "Clip" with `activation_params` [min, max]: clamping commutes with the
monotone quantisation, so the device clamps the integer result. Decompositions (DequantizeLinear,
the float op, QuantizeLinear) let a quantised op that ends up on the host run in onnxruntime.
The emulator's integer kernels are in rblnc/emulator/int8_kernels.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..quant_params import QuantParams
from .graph import RBLNC_DOMAIN, Graph, Node, TensorInfo
from .onnx_bridge import DECOMPOSITIONS
from .shape_inference import INFERENCE_RULES, ShapeInferenceError

QUANTIZED_OP_TYPES = ("QConv", "QGemm", "QAdd", "QGlobalAveragePool", "QMaxPool", "QAveragePool", "QConcat")
# The float op each one computes (QGemm: Gemm with transB=1).
FLOAT_OP = {"QConv": "Conv", "QGemm": "Gemm", "QAdd": "Add", "QGlobalAveragePool": "GlobalAveragePool",
            "QMaxPool": "MaxPool", "QAveragePool": "AveragePool", "QConcat": "Concat"}
QUANTIZED_ACTIVATIONS = ("", "Relu", "Clip")
_OWN_ATTRS = ("activation", "activation_params")


def float_attrs(node: Node) -> dict:
    """The attributes of the float op a quantised node computes."""
    attrs = {k: v for k, v in node.attrs.items() if k not in _OWN_ATTRS}
    if node.op_type == "QGemm":
        attrs = {"transB": 1}
    return attrs


def _float_output_shape(node: Node, inputs: list[TensorInfo | None]) -> tuple:
    """The output shape ONNX's inference gives the float op on float operands of these shapes."""
    op_type = FLOAT_OP[node.op_type]
    names = [f"i{k}" if info is not None else "" for k, info in enumerate(inputs)]
    if op_type == "Gemm" and inputs[0] is not None and len(inputs[0].shape) != 2:
        x, w = inputs[0].shape, inputs[1].shape
        return tuple(x[:-1]) + (w[0],)
    proto = helper.make_node(op_type, names, ["y"], **float_attrs(node))
    graph = helper.make_graph(
        [proto], "shape",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(info.shape))
         for n, info in zip(names, inputs) if info is not None],
        [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims)


def _rule(node: Node, inputs: list[TensorInfo | None], graph: Graph) -> list[TensorInfo]:
    if inputs[0] is None or inputs[0].shape is None:
        raise ShapeInferenceError(f"{node.name}: input shape unknown")
    existing = graph.tensors.get(node.outputs[0])
    dtype = existing.dtype if existing is not None else inputs[0].dtype
    return [TensorInfo(dtype, _float_output_shape(node, inputs))]


def _constant(name: str, value: np.ndarray) -> Node:
    return Node(name, "Constant", [], [name], {"value": np.asarray(value)})


def _params_nodes(graph: Graph, tensor: str, prefix: str, dtype: np.dtype) -> tuple[list[Node], list[str], dict]:
    params = graph.quantization[tensor]
    scale, zero = f"{prefix}_scale", f"{prefix}_zero_point"
    shape = () if params.per_tensor else (params.scale.size,)
    nodes = [_constant(scale, params.scale.reshape(shape)),
             _constant(zero, params.zero_point.astype(dtype).reshape(shape))]
    return nodes, [scale, zero], ({} if params.per_tensor else {"axis": params.axis})


def _decompose(node: Node, graph: Graph) -> list[Node]:
    nodes: list[Node] = []
    float_inputs = []
    for k, name in enumerate(node.inputs):
        if not name:
            float_inputs.append("")
            continue
        made, params, attrs = _params_nodes(graph, name, f"{node.name}_in{k}", graph.tensors[name].dtype)
        nodes += made
        dequantised = f"{node.name}_in{k}_real"
        nodes.append(Node(f"{node.name}_dq{k}", "DequantizeLinear", [name] + params, [dequantised], attrs))
        float_inputs.append(dequantised)
    result = f"{node.name}_real"
    nodes.append(Node(f"{node.name}_float", FLOAT_OP[node.op_type], float_inputs, [result], float_attrs(node)))
    activation = node.attrs.get("activation", "")
    if activation:
        bounds = [float(b) for b in node.attrs.get("activation_params", [])] if activation == "Clip" else []
        extra = []
        for b, bound in enumerate(bounds):
            extra.append(f"{node.name}_bound{b}")
            nodes.append(_constant(extra[-1], np.asarray(bound, dtype=np.float32)))
        nodes.append(Node(f"{node.name}_act", activation, [result] + extra, [f"{result}_act"]))
        result = f"{result}_act"
    out = node.outputs[0]
    made, params, attrs = _params_nodes(graph, out, f"{node.name}_out", graph.tensors[out].dtype)
    nodes += made
    nodes.append(Node(f"{node.name}_q", "QuantizeLinear", [result] + params, [out], attrs))
    return nodes


for _op in QUANTIZED_OP_TYPES:
    INFERENCE_RULES[_op] = _rule
    DECOMPOSITIONS[_op] = _decompose


def is_quantized_op(node: Node) -> bool:
    return node.domain == RBLNC_DOMAIN and node.op_type in QUANTIZED_OP_TYPES


def is_nearest_resize(node: Node | None) -> bool:
    """A nearest-neighbour Resize (a UNet's upsampling): it copies values, so int8 values pass
    through it unchanged, as through a view."""
    return (node is not None and not node.domain and node.op_type == "Resize"
            and node.attrs.get("mode", "nearest") == "nearest")


def bias_params(input_params: QuantParams, weight_params: QuantParams) -> QuantParams:
    """A bias's params: scale = input scale x weight scale (per channel when the weight is)."""
    scale = (input_params.scale.astype(np.float64) * weight_params.scale.astype(np.float64)).astype(np.float32)
    return QuantParams.make(scale, 0, 0)


__all__ = ["QUANTIZED_OP_TYPES", "FLOAT_OP", "QUANTIZED_ACTIVATIONS", "float_attrs", "is_quantized_op",
           "bias_params"]
