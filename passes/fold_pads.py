"""Pad folding: an explicit zero Pad before a Conv or pooling becomes the op's own padding.

    Pad(x, pads, 0) -> Conv(., W)                        => Conv(x, W, pads += spatial pads)
    Pad(x, pads, 0) -> AveragePool(count_include_pad=1)  => AveragePool(x, pads += ...)
    Pad(x, pads, -inf) -> MaxPool                        => MaxPool(x, pads += ...)
    Pad(Relu(x), pads, 0) -> MaxPool                     => MaxPool(Relu(x), pads += ...)

(The last because a window of values >= 0 that holds at least one of them has the same
maximum whether its padding is 0 or -inf: Keras pads ResNet's stem with zeros this way.)

Only constant-mode pads of the spatial axes fold (batch and channel pads must be zero), and
only into ops without auto_pad. TensorFlow and Keras export "same" padding this way.
"""

from __future__ import annotations

import math

import numpy as np

from rblnc.ir import Graph, Node

from .manager import PassContext, graph_pass
from .rewriting import constant, replace_nodes, rewrite_each, scalar


@graph_pass("fold_pads")
def fold_pads(graph: Graph, ctx: PassContext) -> int:
    """Fold constant zero (or -inf before MaxPool) Pads into the Conv/pool that reads them."""
    return rewrite_each(graph, ctx, _fold_into_consumers, op_types=["Pad"])


def _fold_into_consumers(graph: Graph, pad: Node, ctx: PassContext) -> bool:
    spatial_pads = _spatial_pads(graph, pad)
    if spatial_pads is None or pad.outputs[0] in graph.outputs:
        return False
    fill = scalar(graph, pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] else 0.0
    folded = False
    for consumer in graph.consumers(pad.outputs[0]):
        if consumer.inputs.count(pad.outputs[0]) != 1 or consumer.inputs[0] != pad.outputs[0]:
            continue
        reason = _cannot_fold(consumer, fill, _non_negative(graph, pad.inputs[0]), spatial_pads)
        if reason:
            ctx.note(pad.name, f"not folded into {consumer.name}: {reason}")
            continue
        rank = len(spatial_pads) // 2
        own = list(consumer.attrs.get("pads") or [0] * (2 * rank))
        attrs = dict(consumer.attrs, pads=[a + b for a, b in zip(own, spatial_pads)])
        new = Node(consumer.name, consumer.op_type, [pad.inputs[0], *consumer.inputs[1:]],
                   list(consumer.outputs), attrs, consumer.domain,
                   source_ops=list(dict.fromkeys(pad.source_ops + consumer.source_ops)),
                   source_location=consumer.source_location or pad.source_location)
        replace_nodes(graph, [consumer], [new], inherit_sources=False)
        folded = True
    return folded


def _spatial_pads(graph: Graph, pad: Node) -> list[int] | None:
    """The Pad's [begin..., end...] for the axes after batch and channel, if it can fold."""
    if pad.attrs.get("mode", "constant") != "constant" or len(pad.inputs) > 3 and pad.inputs[3]:
        return None  # reflect/edge padding, or explicit axes
    pads = constant(graph, pad.inputs[1]) if len(pad.inputs) > 1 else None
    if pads is None or pads.ndim != 1 or pads.size % 2 or (pads < 0).any():
        return None
    rank = pads.size // 2
    begins, ends = pads[:rank].tolist(), pads[rank:].tolist()
    if rank < 3 or begins[:2] != [0, 0] or ends[:2] != [0, 0]:
        return None
    return [int(p) for p in begins[2:] + ends[2:]]


def _cannot_fold(consumer: Node, fill: float | None, non_negative: bool, pads: list[int]) -> str:
    if consumer.domain or consumer.op_type not in ("Conv", "AveragePool", "MaxPool"):
        return "only Conv, AveragePool and MaxPool take padding"
    if consumer.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return "it pads by auto_pad"
    if fill is None:
        return "the pad value is not a constant"
    if consumer.op_type == "MaxPool":
        if fill == -math.inf:
            return ""
        if fill == 0.0 and non_negative and _every_window_sees_data(consumer, pads):
            return ""
        return "MaxPool pads with -inf, this Pad with another value"
    if fill != 0.0:
        return f"it pads with zeros, this Pad with {fill:g}"
    if consumer.op_type == "AveragePool" and not consumer.attrs.get("count_include_pad", 0):
        return "AveragePool(count_include_pad=0) would not count the padded zeros"
    return ""


_NON_NEGATIVE = {"Relu", "Sigmoid", "Softplus", "Abs", "Exp", "HardSigmoid"}


def _non_negative(graph: Graph, tensor: str) -> bool:
    """Whether every value of `tensor` is >= 0 by construction (an activation's range)."""
    node = graph.producer(tensor)
    if node is None:
        return False
    if not node.domain and node.op_type in _NON_NEGATIVE:
        return True
    if not node.domain and node.op_type == "Clip":
        low = scalar(graph, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        return low is not None and low >= 0
    activation = node.attrs.get("activation") if node.domain == "ai.rblnc" else None
    params = node.attrs.get("activation_params") or [0.0]
    return activation in _NON_NEGATIVE or (activation == "Clip" and params[0] >= 0)


def _every_window_sees_data(pool: Node, pads: list[int]) -> bool:
    """No pooling window lies wholly in the padding (there a 0 and a -inf pad would differ)."""
    kernel = list(pool.attrs.get("kernel_shape", []))
    rank = len(kernel)
    if pool.attrs.get("ceil_mode", 0) or any(d != 1 for d in pool.attrs.get("dilations", [1] * rank)):
        return False
    own = list(pool.attrs.get("pads") or [0] * (2 * rank))
    total = [a + b for a, b in zip(own, pads)]
    return len(total) == 2 * rank and all(p < kernel[i % rank] for i, p in enumerate(total))
