"""NPU kernels of the emulator: ONNX-semantics ops computed with torch's CPU ops (oneDNN).

A kernel is `fn(inputs, attrs) -> list of outputs` over torch tensors; an omitted optional
input is None. Kernels see attributes exactly as stored in the command."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

Kernel = Callable[[Sequence[torch.Tensor | None], dict[str, Any]], list[torch.Tensor]]
KERNELS: dict[str, Kernel] = {}


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            KERNELS[op_type] = fn
        return fn

    return register


# -- padding helpers -----------------------------------------------------------------------


def _spatial_pads(x: torch.Tensor, attrs: dict, kernel_shape: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...], resolving auto_pad."""
    spatial = x.shape[2:]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel_shape, strides, dilations):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * len(spatial))
    return list(attrs.get("pads", [0] * (2 * len(spatial))))


def _torch_pad_order(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, e1, e2] -> torch's F.pad order [b_last, e_last, ..., b1, e1]."""
    n = len(pads) // 2
    order: list[int] = []
    for axis in reversed(range(n)):
        order += [pads[axis], pads[axis + n]]
    return order


def _symmetric(pads: Sequence[int]) -> list[int] | None:
    n = len(pads) // 2
    return list(pads[:n]) if list(pads[:n]) == list(pads[n:]) else None


def _window(attrs: dict, x: torch.Tensor, kernel_shape: Sequence[int]):
    rank = len(kernel_shape)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    return strides, dilations, _spatial_pads(x, attrs, kernel_shape, strides, dilations)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# -- kernels ------------------------------------------------------------------------------


@kernel("Conv")
def conv(inputs, attrs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel_shape = list(attrs.get("kernel_shape", w.shape[2:]))
    strides, dilations, pads = _window(attrs, x, kernel_shape)
    padding = _symmetric(pads)
    if padding is None:
        x = F.pad(x, _torch_pad_order(pads))
        padding = [0] * len(kernel_shape)
    return [_CONV[len(kernel_shape)](x, w, bias, strides, padding, dilations, attrs.get("group", 1))]


@kernel("MaxPool")
def max_pool(inputs, attrs):
    x = inputs[0]
    kernel_shape = list(attrs["kernel_shape"])
    strides, dilations, pads = _window(attrs, x, kernel_shape)
    padding = _symmetric(pads)
    if padding is None or any(p > k // 2 for p, k in zip(padding, kernel_shape)):
        x = F.pad(x, _torch_pad_order(pads), value=-math.inf)
        padding = [0] * len(kernel_shape)
    return [_MAX_POOL[len(kernel_shape)](x, kernel_shape, strides, padding, dilations,
                                         ceil_mode=bool(attrs.get("ceil_mode", 0)))]


@kernel("AveragePool")
def average_pool(inputs, attrs):
    x = inputs[0]
    kernel_shape = list(attrs["kernel_shape"])
    strides, _, pads = _window(attrs, x, kernel_shape)
    include_pad = bool(attrs.get("count_include_pad", 0))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    pool = _AVG_POOL[len(kernel_shape)]
    padding = _symmetric(pads)
    if padding is not None and all(p <= k // 2 for p, k in zip(padding, kernel_shape)):
        return [pool(x, kernel_shape, strides, padding, ceil_mode=ceil_mode, count_include_pad=include_pad)]
    padded = F.pad(x, _torch_pad_order(pads))
    summed = pool(padded, kernel_shape, strides, 0, ceil_mode=ceil_mode)
    if include_pad:
        return [summed]
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad_order(pads))
    return [summed / pool(ones, kernel_shape, strides, 0, ceil_mode=ceil_mode)]


@kernel("GlobalAveragePool")
def global_average_pool(inputs, attrs):
    x = inputs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@kernel("Gemm")
def gemm(inputs, attrs):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if c is None:
        y = a @ b
        return [y * alpha if alpha != 1.0 else y]
    return [torch.addmm(c.expand(a.shape[0], b.shape[1]), a, b, beta=beta, alpha=alpha)]


@kernel("MatMul")
def matmul(inputs, attrs):
    return [torch.matmul(inputs[0], inputs[1])]


@kernel("Add")
def add(inputs, attrs):
    return [inputs[0] + inputs[1]]


@kernel("Sum")
def sum_(inputs, attrs):
    total = inputs[0]
    for x in inputs[1:]:
        total = total + x
    return [total]


@kernel("Mul")
def mul(inputs, attrs):
    return [inputs[0] * inputs[1]]


@kernel("Relu")
def relu(inputs, attrs):
    return [torch.relu(inputs[0])]


@kernel("Sigmoid")
def sigmoid(inputs, attrs):
    return [torch.sigmoid(inputs[0])]


@kernel("Clip")
def clip(inputs, attrs):
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 else None
    high = inputs[2] if len(inputs) > 2 else None
    return [torch.clamp(x, None if low is None else low.item(), None if high is None else high.item())]


@kernel("Softmax")
def softmax(inputs, attrs):
    return [torch.softmax(inputs[0], dim=attrs.get("axis", -1))]


@kernel("BatchNormalization")
def batch_normalization(inputs, attrs):
    x, scale, bias, mean, var = inputs[:5]
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))]


@kernel("Concat")
def concat(inputs, attrs):
    return [torch.cat([t for t in inputs if t is not None], dim=attrs["axis"])]


@kernel("Reshape")
def reshape(inputs, attrs):
    x, shape = inputs[0], [int(d) for d in inputs[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@kernel("Flatten")
def flatten(inputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    outer = math.prod(x.shape[:axis])
    return [x.reshape(outer, -1) if x.numel() else x.reshape(outer, math.prod(x.shape[axis:]))]


@kernel("Transpose")
def transpose(inputs, attrs):
    x = inputs[0]
    perm = attrs.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*perm)]
