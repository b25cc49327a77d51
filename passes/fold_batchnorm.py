"""BatchNorm folding: an inference BatchNormalization (or a per-channel scale) after a Conv,
ConvTranspose or Gemm goes into its weights.

    BN(Conv(x, W, b))  =>  Conv(x, W * s, (b - mean) * s + beta),   s = gamma / sqrt(var + eps)
    Mul(Conv(x, W, b), s) =>  Conv(x, W * s, b * s)     s constant per output channel

tf2onnx writes a Keras BatchNormalization as that Mul and an Add (which `fuse_bias` takes).

per output channel (axis 0 of a Conv weight, axis 1 of a ConvTranspose weight per group, the
columns of a Gemm's B). It does not fire when the producer's output is read by anything but
the BN (the un-normalised value is still needed), nor when weights or statistics are computed
at run time. Scale and bias are computed in float64; weights are scaled in their own type.
"""

from __future__ import annotations

import numpy as np

from rblnc.ir import Graph, Node, TensorInfo

from .manager import PassContext, graph_pass
from .rewriting import (
    add_constant, constant, fused_node, only_consumer, other_input, producer, replace_nodes, rewrite_each,
    static_shape,
)

_FOLDS_INTO = ("Conv", "ConvTranspose", "Gemm")


@graph_pass("fold_batchnorm")
def fold_batchnorm(graph: Graph, ctx: PassContext) -> int:
    """Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm that feeds it."""
    return rewrite_each(graph, ctx, _fold, op_types=["BatchNormalization"])


def _fold(graph: Graph, bn: Node, ctx: PassContext) -> bool:
    source = producer(graph, bn.inputs[0], *_FOLDS_INTO)
    if source is None or bn.attrs.get("training_mode", 0):
        return False
    if any(o and (graph.consumers(o) or o in graph.outputs) for o in bn.outputs[1:]):
        return False  # running statistics are read: training graph
    if only_consumer(graph, source.outputs[0]) is not bn:
        readers = [n.name for n in graph.consumers(source.outputs[0]) if n is not bn]
        ctx.note(bn.name, f"not folded into {source.name}: its output is also read by "
                          f"{', '.join(readers) or 'the graph outputs'}")
        return False
    params = [constant(graph, name) for name in bn.inputs[1:5]]
    weight = constant(graph, source.inputs[1])
    bias_name = source.inputs[2] if len(source.inputs) > 2 else ""
    bias = constant(graph, bias_name) if bias_name else None
    if any(p is None for p in params) or weight is None or (bias_name and bias is None):
        ctx.note(bn.name, f"not folded into {source.name}: weights or statistics are computed at run time")
        return False
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    # The weights are scaled in their own type: a float32 weight times a float32 scale is
    # rounded once, as the float64 product would be, at a quarter of the memory traffic.
    folded = _FOLDERS[source.op_type](source, weight, bias, scale.astype(weight.dtype), beta - mean * scale)
    if folded is None:
        return False
    new_weight, new_bias, attrs = folded
    inputs = [source.inputs[0],
              add_constant(graph, f"{source.inputs[1]}_bn", new_weight.astype(weight.dtype, copy=False)),
              add_constant(graph, f"{source.name}_bias", new_bias.astype(weight.dtype))]
    fused_node(graph, source, source.op_type, inputs, attrs, [source, bn], domain=source.domain)
    return True


@graph_pass("fold_channel_scale")
def fold_channel_scale(graph: Graph, ctx: PassContext) -> int:
    """Fold a constant per-output-channel Mul after Conv/ConvTranspose/Gemm into its weights."""
    return rewrite_each(graph, ctx, _fold_scale, op_types=_FOLDS_INTO)


def _fold_scale(graph: Graph, source: Node, ctx: PassContext) -> bool:
    mul = only_consumer(graph, source.outputs[0])
    if mul is None or mul.op_type != "Mul" or mul.domain:
        return False
    shape = static_shape(graph, source.outputs[0])
    factor = constant(graph, other_input(mul, source.outputs[0]))
    weight = constant(graph, source.inputs[1])
    bias_name = source.inputs[2] if len(source.inputs) > 2 else ""
    bias = constant(graph, bias_name) if bias_name else None
    if shape is None or factor is None or weight is None or (bias_name and bias is None) \
            or static_shape(graph, mul.outputs[0]) != shape or factor.dtype != weight.dtype:
        return False
    scale = per_channel(factor, shape)
    if scale is None:
        ctx.note(mul.name, f"not folded into {source.name}: the factor varies along more than the channel axis")
        return False
    folded = _FOLDERS[source.op_type](source, weight, bias, scale.astype(weight.dtype), np.zeros_like(scale))
    if folded is None:
        return False
    new_weight, new_bias, attrs = folded
    inputs = [source.inputs[0],
              add_constant(graph, f"{source.inputs[1]}_scaled", new_weight.astype(weight.dtype, copy=False))]
    if bias is not None or source.op_type == "Gemm" and len(source.inputs) > 2:
        inputs.append(add_constant(graph, f"{source.name}_bias", new_bias.astype(weight.dtype)))
    fused_node(graph, source, source.op_type, inputs, attrs, [source, mul], domain=source.domain)
    return True


@graph_pass("rewrite_batchnorm_as_affine")
def rewrite_batchnorm_as_affine(graph: Graph, ctx: PassContext) -> int:
    """Rewrite a BatchNormalization that no Conv took as x * s + t, for elementwise chain fusion."""
    return rewrite_each(graph, ctx, _as_affine, op_types=["BatchNormalization"])


def _as_affine(graph: Graph, bn: Node, ctx: PassContext) -> bool:
    shape = static_shape(graph, bn.inputs[0])
    params = [constant(graph, name) for name in bn.inputs[1:5]]
    if shape is None or len(shape) < 2 or bn.attrs.get("training_mode", 0) or any(p is None for p in params):
        return False
    if any(o and (graph.consumers(o) or o in graph.outputs) for o in bn.outputs[1:]):
        return False
    dtype = graph.tensors[bn.inputs[0]].dtype
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    channel = (shape[1],) + (1,) * (len(shape) - 2)
    s = add_constant(graph, f"{bn.name}_scale", scale.reshape(channel).astype(dtype))
    t = add_constant(graph, f"{bn.name}_shift", (beta - mean * scale).reshape(channel).astype(dtype))
    scaled = graph.unique_name(f"{bn.outputs[0]}_scaled")
    replace_nodes(graph, [bn], [Node(f"{bn.name}_scale", "Mul", [bn.inputs[0], s], [scaled]),
                                Node(bn.name, "Add", [scaled, t], [bn.outputs[0]])],
                  {scaled: TensorInfo(dtype, shape)})
    return True


def per_channel(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """`value` as a float64 vector over axis 1 of `shape`, if it is constant along every other axis."""
    if value.ndim > len(shape):
        return None
    full = value.reshape((1,) * (len(shape) - value.ndim) + value.shape).astype(np.float64)
    if any(d != 1 for i, d in enumerate(full.shape) if i != 1):
        return None
    return np.broadcast_to(full.reshape(-1), (shape[1],)).copy()


def _fold_conv(conv, weight, bias, scale, shift):
    if scale.size != weight.shape[0]:
        return None
    new_weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    new_bias = shift + (0 if bias is None else bias.astype(np.float64) * scale.astype(np.float64))
    return new_weight, new_bias, dict(conv.attrs)


def _fold_conv_transpose(conv, weight, bias, scale, shift):
    group = int(conv.attrs.get("group", 1))
    per_group = weight.shape[1]
    if scale.size != per_group * group:
        return None
    # weight is (C_in, C_out / group, k...): output channel g * per_group + j is weight[g-th block, j]
    blocks = weight.reshape((group, weight.shape[0] // group, per_group) + weight.shape[2:])
    new_weight = (blocks * scale.reshape((group, 1, per_group) + (1,) * (weight.ndim - 2))).reshape(weight.shape)
    new_bias = shift + (0 if bias is None else bias.astype(np.float64) * scale.astype(np.float64))
    return new_weight, new_bias, dict(conv.attrs)


def _fold_gemm(gemm, weight, bias, scale, shift):
    trans_b = gemm.attrs.get("transB", 0)
    columns = weight.shape[0] if trans_b else weight.shape[1]
    if weight.ndim != 2 or scale.size != columns:
        return None
    alpha, beta = float(gemm.attrs.get("alpha", 1.0)), float(gemm.attrs.get("beta", 1.0))
    new_weight = weight * (scale.reshape(-1, 1) if trans_b else scale.reshape(1, -1)) * weight.dtype.type(alpha)
    # BN(alpha A B + beta C) = A (alpha B s) + (beta C s + shift)
    new_bias = shift + (0 if bias is None else beta * bias.astype(np.float64) * scale.astype(np.float64))
    attrs = {k: v for k, v in gemm.attrs.items() if k not in ("alpha", "beta")}
    return new_weight, np.asarray(new_bias), attrs


_FOLDERS = {"Conv": _fold_conv, "ConvTranspose": _fold_conv_transpose, "Gemm": _fold_gemm}
