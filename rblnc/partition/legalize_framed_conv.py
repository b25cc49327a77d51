"""A 1-D Conv whose stride divides its kernel, beyond the NPU's kernel or stride limits, rewritten
as framing and one matrix product (legalisation).

Audio models compute their spectrogram as a Conv over the waveform: silero-vad's STFT is a Conv
with a 256-tap kernel and stride 128, which no NPU convolution engine takes (rbln-ca12: kernel
<= 16, stride <= 8), so it ran as a host partition between two NPU ones. With K = m * S the
windows are m consecutive blocks of S samples, so (N, C, L) becomes:

    blocks = Reshape(Slice(Pad(x)), (N, C, T + m - 1, S))     T output positions
    frames = Concat(blocks[:, :, j:j + T] for j < m, axis=3)   (N, C, T, K)
    y      = Transpose(Reshape(Transpose(frames)) @ W^T + b)    (N, Cout, T)

The same products and sums as the convolution, in another order of summation (exact up to
rounding, like any two kernels).
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from ..target import TargetSpec
from .emitter import RewriteEmitter


def framed_conv(node: Node, graph: Graph, target: TargetSpec):
    """(new nodes, constants they added) computing the Conv as frames x weights, or None."""
    form = _framable(node, graph, target)
    if form is None:
        return None
    (batch, channels, length), kernel, stride, (pad_begin, pad_end) = form
    weight = graph.constants[node.inputs[1]].astype(np.float32)
    out_channels = weight.shape[0]
    padded = length + pad_begin + pad_end
    positions = (padded - kernel) // stride + 1
    pieces = kernel // stride
    blocks_needed = positions + pieces - 1
    emit = RewriteEmitter(graph, node)
    x = node.inputs[0]
    if pad_begin or pad_end:
        pads = emit.constant("pads", np.asarray([0, 0, pad_begin, 0, 0, pad_end], np.int64))
        x = emit.one("Pad", [x, pads], "padded", mode="constant")
    if blocks_needed * stride < padded:
        x = emit.one("Slice", [x, emit.constant("used_start", np.asarray([0], np.int64)),
                               emit.constant("used_end", np.asarray([blocks_needed * stride], np.int64)),
                               emit.constant("used_axis", np.asarray([2], np.int64))], "used")
    blocks = emit.one("Reshape", [x, emit.constant("block_shape", np.asarray(
        [batch, channels, blocks_needed, stride], np.int64))], "blocks")
    axis2 = emit.constant("axis2", np.asarray([2], np.int64))
    shifted = [emit.one("Slice", [blocks, emit.constant(f"from{j}", np.asarray([j], np.int64)),
                                  emit.constant(f"to{j}", np.asarray([j + positions], np.int64)), axis2], f"shift{j}")
               for j in range(pieces)]
    frames = shifted[0] if pieces == 1 else emit.one("Concat", shifted, "frames", axis=3)
    rows = emit.one("Transpose", [frames], "frames_by_position", perm=[0, 2, 1, 3])
    rows = emit.one("Reshape", [rows, emit.constant("row_shape", np.asarray(
        [batch, positions, channels * kernel], np.int64))], "rows")
    product = emit.one("MatMul", [rows, emit.constant("weight_t", np.ascontiguousarray(
        weight.reshape(out_channels, channels * kernel).T))], "product")
    if len(node.inputs) > 2 and node.inputs[2]:
        product = emit.one("Add", [product, node.inputs[2]], "biased")
    emit.one("Transpose", [product], "output", output=node.outputs[0], perm=[0, 2, 1])
    return emit.nodes, emit.constants


def _framable(node: Node, graph: Graph, target: TargetSpec):
    """((N, C, L), kernel, stride, (pad begin, pad end)) of a Conv this rewrite covers, else None."""
    if node.domain or node.op_type != "Conv" or len(node.inputs) < 2 or not graph.is_constant(node.inputs[1]):
        return None
    if len(node.inputs) > 2 and node.inputs[2] and not graph.is_constant(node.inputs[2]):
        return None
    x = graph.tensors.get(node.inputs[0])
    weight = graph.constants[node.inputs[1]]
    if x is None or not x.is_static or len(x.shape) != 3 or weight.ndim != 3:
        return None
    attrs = node.attrs
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1])):
        return None
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return None
    kernel = int(weight.shape[2])
    stride = int(attrs.get("strides", [1])[0])
    if kernel <= target.max_kernel_size and stride <= target.max_stride:
        return None  # the NPU's own convolution takes it
    if stride < 1 or kernel % stride:
        return None
    pads = list(attrs.get("pads", [0, 0]))
    if x.shape[1] != weight.shape[1] or x.shape[2] + pads[0] + pads[1] < kernel:
        return None
    return tuple(x.shape), kernel, stride, (pads[0], pads[1])
