"""NPU kernels of the emulator: ONNX-semantics ops computed with torch's CPU ops (oneDNN).

A kernel is `fn(inputs, attrs) -> list of outputs` over torch tensors; an omitted optional
input is None. Kernels see attributes exactly as stored in the command. Our own ops register
as "ai.rblnc::OpType". A kernel computes in fp32: in a reduced-precision program the runner
hands it fp32 copies of the float inputs and rounds its outputs to the program's precision.

A kernel may also have a fast path (`@prepare`, see prepared.py): a function of the command's
static context (attributes, constant inputs, shapes, precision) returning a closure over the
inputs, or None when it does not apply; the runner uses it instead of the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Kernel = Callable[[Sequence[torch.Tensor | None], dict[str, Any]], list[torch.Tensor]]
KERNELS: dict[str, Kernel] = {}
Prepared = Callable[[list], list]


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            KERNELS[op_type] = fn
        return fn

    return register


@dataclass
class Epilogue:
    """Commands right after a convolution that its fast path may apply before writing the result
    (the runner then skips them): exact where rounding commutes (ReLU, ReLU6), and in fp32, where
    rounding to the program's type is the identity, also BatchNormalization and a residual Add."""

    batch_norm: tuple | None = None     # (scale, bias, mean, var, epsilon), constants
    residual: bool = False              # the last argument is a tensor added to the result
    residual_inplace: bool = False      # ... whose storage the result may take
    # After the rest: "relu" or "relu6"; in fp32 also "silu" (x * sigmoid(x)); for our fused ops,
    # a name of rblnc.ir.fused_ops.ACTIVATIONS with `activation_params`.
    activation: str | None = None
    activation_params: tuple = ()


@dataclass
class CommandContext:
    """What a fast path may specialise on: everything about a command but its run-time inputs."""

    op_type: str
    domain: str
    attrs: dict[str, Any]
    constants: list[torch.Tensor | None]        # per input: its value when constant, else None
    input_shapes: list[tuple | None]            # None for an omitted input
    output_shapes: list[tuple]
    float_type: torch.dtype                     # the program's precision
    # Position of the input whose storage the first output may take (the memory plan put the
    # output in its bytes and the runner owns them), or None.
    inplace: int | None = None
    # Commands that follow this one and that a fast path may apply itself (see Epilogue); it
    # reports doing so by setting `fused`.
    epilogue: Epilogue | None = None
    fused: bool = False
    # Quantised operands (int8 programs): per input and per output, its QuantParams or None; and
    # each output's element type (int8_kernels.py).
    input_quantization: list = field(default_factory=list)
    output_quantization: list = field(default_factory=list)
    output_dtypes: list = field(default_factory=list)

    @property
    def qualified_type(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type


Preparer = Callable[[CommandContext], Prepared | None]
PREPARERS: dict[str, Preparer] = {}


def prepare(*op_types: str) -> Callable[[Preparer], Preparer]:
    def register(fn: Preparer) -> Preparer:
        for op_type in op_types:
            PREPARERS[op_type] = fn
        return fn

    return register


def prepare_command(context: CommandContext) -> Prepared:
    """The closure that runs one command: its fast path if one applies, else its kernel under
    the precision rule (fp32 compute, outputs rounded to the program's precision)."""
    preparer = PREPARERS.get(context.qualified_type)
    if preparer is not None:
        try:
            fast = preparer(context)
        except Exception:  # e.g. oneDNN refusing weights that contradict the declared shapes:
            fast = None    # the kernel then runs, and fails, if it must, naming the command
            context.fused = False
        if fast is not None:
            return fast
    fn, attrs, float_type = KERNELS[context.qualified_type], context.attrs, context.float_type
    if float_type == torch.float32:
        return lambda args: fn(args, attrs)

    def reduced(args):
        wide = [a.float() if a is not None and a.dtype == float_type else a for a in args]
        return [r.to(float_type) if r.is_floating_point() else r for r in fn(wide, attrs)]

    return reduced


_TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return _TORCH_DTYPES[np.dtype(dtype).name]


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


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
    """ONNX's AveragePool as its reference evaluates it, dilations and ceil_mode included."""
    summed, count, _ = average_pool_windows(inputs[0], attrs)
    return [summed / count]


def average_pool_windows(x: torch.Tensor, attrs: dict, sums: bool = True
                         ) -> tuple[torch.Tensor | None, torch.Tensor, list[int]]:
    """(each window's sum (None without `sums`), each window's count of the cells that count,
    shaped [1, 1, *out], and the ONNX pads [begins, ends] the sums are taken over, padded with
    0): a depthwise convolution with ones sums each window, another counts the cells. On
    integer values whose window sums stay below 2^24 the sums are exact (int8's QAveragePool)."""
    kernel_shape = list(attrs["kernel_shape"])
    rank = len(kernel_shape)
    strides, dilations, pads = _window(attrs, x, kernel_shape)
    include_pad = bool(attrs.get("count_include_pad", 0))
    ceil_mode = bool(attrs.get("ceil_mode", 0)) and attrs.get("auto_pad", "NOTSET") == "NOTSET"
    spatial = list(x.shape[2:])
    begins, ends = list(pads[:rank]), list(pads[rank:])
    counted = [n + b + e for n, b, e in zip(spatial, begins, ends)]  # window cells past this do not count
    if ceil_mode:
        for axis, (n, k, s, d) in enumerate(zip(spatial, kernel_shape, strides, dilations)):
            window = d * (k - 1) + 1
            out = math.ceil((n + begins[axis] + ends[axis] - window) / s + 1)
            if (out - 1) * s >= n + begins[axis]:
                out -= 1
            extra = (out - 1) * s + window - n - begins[axis] - ends[axis]
            if extra > 0:  # the reference pads the shortfall half before, half after
                begins[axis] += extra // 2
                ends[axis] += extra - extra // 2
    padded = F.pad(x, _torch_pad_order(begins + ends))
    mask = torch.zeros([1, 1] + list(padded.shape[2:]), dtype=x.dtype)
    region = [slice(None), slice(None)]
    for axis in range(rank):
        low = 0 if include_pad else begins[axis]
        high = counted[axis] if include_pad else min(begins[axis] + spatial[axis], counted[axis])
        region.append(slice(low, high))
    mask[tuple(region)] = 1
    if include_pad:
        padded = padded * mask
    channels = x.shape[1]
    conv = _CONV[rank]
    summed = None
    if sums:
        ones = torch.ones([channels, 1] + kernel_shape, dtype=x.dtype)
        summed = conv(padded, ones, None, strides, 0, dilations, channels)
    count = conv(mask, torch.ones([1, 1] + kernel_shape, dtype=x.dtype), None, strides, 0, dilations)
    return summed, count, begins + ends


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
    total = inputs[0].clone() if len(inputs) == 1 else inputs[0]
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
    if low is None and high is None:
        return [x.clone()]
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


# -- elementwise ------------------------------------------------------------------------


@kernel("Sub")
def sub(inputs, attrs):
    return [inputs[0] - inputs[1]]


@kernel("Div")
def div(inputs, attrs):
    return [inputs[0] / inputs[1]]


@kernel("Pow")
def pow_(inputs, attrs):
    return [torch.pow(inputs[0], inputs[1].to(inputs[0].dtype))]


def _variadic(fn):
    def run(inputs, attrs):
        values = [t for t in inputs if t is not None]
        result = values[0].clone() if len(values) == 1 else values[0]
        for x in values[1:]:
            result = fn(result, x)
        return [result]

    return run


kernel("Max")(_variadic(torch.maximum))
kernel("Min")(_variadic(torch.minimum))


@kernel("Mean")
def mean(inputs, attrs):
    values = [t for t in inputs if t is not None]
    total = values[0]
    for x in values[1:]:
        total = total + x
    return [total / len(values)]


def _unary(fn):
    return lambda inputs, attrs: [fn(inputs[0])]


kernel("Neg")(_unary(torch.neg))
kernel("Abs")(_unary(torch.abs))
kernel("Sqrt")(_unary(torch.sqrt))
kernel("Reciprocal")(_unary(torch.reciprocal))
kernel("Exp")(_unary(torch.exp))
kernel("Log")(_unary(torch.log))
kernel("Tanh")(_unary(torch.tanh))
kernel("Softplus")(_unary(lambda x: torch.where(x > 20, x, torch.log1p(torch.exp(x)))))
kernel("HardSwish")(_unary(F.hardswish))


@kernel("LeakyRelu")
def leaky_relu(inputs, attrs):
    return [F.leaky_relu(inputs[0], attrs.get("alpha", 0.01))]


@kernel("HardSigmoid")
def hard_sigmoid(inputs, attrs):
    return [torch.clamp(inputs[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)]


@kernel("Elu")
def elu(inputs, attrs):
    return [F.elu(inputs[0], attrs.get("alpha", 1.0))]


@kernel("Selu")
def selu(inputs, attrs):
    x = inputs[0]
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@kernel("PRelu")
def prelu(inputs, attrs):
    x, slope = inputs[0], inputs[1]
    return [torch.where(x < 0, x * slope, x)]


# -- normalisation and reductions --------------------------------------------------------


@kernel("LayerNormalization")
def layer_normalization(inputs, attrs):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", -1)
    axis = axis + x.dim() if axis < 0 else axis
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    inv_std = torch.rsqrt((centered * centered).mean(dim=dims, keepdim=True) + attrs.get("epsilon", 1e-5))
    y = centered * inv_std * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std]


@kernel("InstanceNormalization")
def instance_normalization(inputs, attrs):
    x, scale, bias = inputs[:3]
    return [F.instance_norm(x, weight=scale, bias=bias, eps=attrs.get("epsilon", 1e-5))]


@kernel("GlobalMaxPool")
def global_max_pool(inputs, attrs):
    x = inputs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


_REDUCE_EMPTY = {"ReduceSum": 0.0, "ReduceMean": math.nan, "ReduceMax": -math.inf, "ReduceMin": math.inf}


def _reduce(op_type: str, fn):
    def run(inputs, attrs):
        x = inputs[0]
        if op_type == "ReduceSum":  # axes became an input at opset 13
            axes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else []
            if not axes and attrs.get("noop_with_empty_axes", 0):
                return [x.clone()]
        else:
            axes = list(attrs.get("axes", []))
        keep = bool(attrs.get("keepdims", 1))
        dims = tuple(sorted(a % x.dim() for a in axes)) if axes else tuple(range(x.dim()))
        if x.numel() == 0 or not dims:
            shape = [1 if (d in dims and keep) else n for d, n in enumerate(x.shape) if keep or d not in dims]
            if not dims:
                return [x.clone()]
            return [torch.full(shape, _REDUCE_EMPTY[op_type], dtype=x.dtype)]
        return [fn(x, dims, keep)]

    return run


kernel("ReduceSum")(_reduce("ReduceSum", lambda x, d, k: x.sum(dim=d, keepdim=k)))
kernel("ReduceMean")(_reduce("ReduceMean", lambda x, d, k: x.mean(dim=d, keepdim=k)))
kernel("ReduceMax")(_reduce("ReduceMax", lambda x, d, k: x.amax(dim=d, keepdim=k)))
kernel("ReduceMin")(_reduce("ReduceMin", lambda x, d, k: x.amin(dim=d, keepdim=k)))


# -- data movement -----------------------------------------------------------------------


@kernel("Identity")
def identity(inputs, attrs):
    return [inputs[0]]


@kernel("Squeeze")
def squeeze(inputs, attrs):
    x = inputs[0]
    axes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    drop = {a % x.dim() for a in axes}
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in drop])]


@kernel("Unsqueeze")
def unsqueeze(inputs, attrs):
    x = inputs[0]
    rank = x.dim() + len(_ints(inputs[1]))
    new = {a % rank for a in _ints(inputs[1])}
    dims = iter(x.shape)
    return [x.reshape([1 if i in new else next(dims) for i in range(rank)])]


def _slice_indices(size: int, start: int, end: int, step: int) -> range:
    """ONNX Slice's clamping of one axis."""
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, -1), size - 1), min(max(end, -1), size - 1)
    return range(start, end, step)


@kernel("Slice")
def slice_(inputs, attrs):
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis %= x.dim()
        picked = _slice_indices(x.shape[axis], start, end, step)
        if step == 1:
            x = x.narrow(axis, picked.start, len(picked))
        else:
            x = x.index_select(axis, torch.tensor(list(picked), dtype=torch.long))
    return [x]


@kernel("Split")
def split(inputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", 0) % x.dim()
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = _ints(inputs[1])
    elif "num_outputs" in attrs:
        n = attrs["num_outputs"]
        chunk = -(-x.shape[axis] // n)
        sizes = [chunk] * (n - 1) + [x.shape[axis] - chunk * (n - 1)]
    else:
        raise ValueError("Split without 'split' sizes: the number of outputs is only known to the runner")
    return list(torch.split(x, sizes, dim=axis))


@kernel("Gather")
def gather(inputs, attrs):
    x, indices = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0) % x.dim()
    flat = torch.where(indices < 0, indices + x.shape[axis], indices).reshape(-1)
    picked = x.index_select(axis, flat)
    return [picked.reshape(list(x.shape[:axis]) + list(indices.shape) + list(x.shape[axis + 1:]))]


@kernel("Expand")
def expand(inputs, attrs):
    x = inputs[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(inputs[1])))
    return [x.expand(shape)]


@kernel("Tile")
def tile(inputs, attrs):
    return [inputs[0].repeat(_ints(inputs[1]))]


@kernel("DepthToSpace")
def depth_to_space(inputs, attrs):
    x = inputs[0]
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@kernel("SpaceToDepth")
def space_to_depth(inputs, attrs):
    x = inputs[0]
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


def _edge_or_reflect_indices(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    positions = torch.arange(-before, size + after)
    if mode == "edge":
        return positions.clamp(0, size - 1)
    period = 2 * (size - 1)
    folded = positions.remainder(period) if period else torch.zeros_like(positions)
    return torch.where(folded >= size, period - folded, folded)


@kernel("Pad")
def pad(inputs, attrs):
    x = inputs[0]
    pads = _ints(inputs[1])
    value = inputs[2].item() if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel() else 0.0
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(x.dim()))
    n = len(axes)
    mode = attrs.get("mode", "constant")
    if not any(pads):
        return [x.clone()]
    if mode == "constant":
        full = [0] * (2 * x.dim())
        for i, axis in enumerate(axes):
            full[axis % x.dim()], full[axis % x.dim() + x.dim()] = pads[i], pads[i + n]
        return [F.pad(x, _torch_pad_order(full), value=value)]
    for i, axis in enumerate(axes):
        axis %= x.dim()
        before, after = pads[i], pads[i + n]
        if before or after:
            x = x.index_select(axis, _edge_or_reflect_indices(x.shape[axis], before, after, mode))
    return [x]


def _source_coordinates(out_size: int, in_size: int, scale: float, mode: str) -> torch.Tensor:
    x = torch.arange(out_size, dtype=torch.float64)
    resized = in_size * scale  # ONNX's length_resized: not rounded when scales are given
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if resized > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (in_size - 1) / (resized - 1) if resized != 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise ValueError(f"coordinate_transformation_mode {mode!r} is not implemented")


_NEAREST = {
    "round_prefer_floor": lambda c: torch.ceil(c - 0.5),
    "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
    "floor": torch.floor,
    "ceil": torch.ceil,
}


def resize_plan(attrs: dict, in_shape: Sequence[int], out_shape: Sequence[int],
                scales: Sequence[float] | None) -> list[tuple[int, Any]]:
    """Per resized axis: (axis, long indices) for nearest, or (axis, (i0, i1, weight)) for linear."""
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    steps = []
    for axis, (n_in, n_out) in enumerate(zip(in_shape, out_shape)):
        scale = scales[axis] if scales else n_out / n_in
        if n_in == n_out and scale == 1.0:
            continue
        coords = _source_coordinates(n_out, n_in, scale, transform)
        if mode == "nearest":
            rounding = _NEAREST[attrs.get("nearest_mode", "round_prefer_floor")]
            steps.append((axis, rounding(coords).long().clamp(0, n_in - 1)))
        elif mode == "linear":
            low = torch.floor(coords)
            weight = (coords - low)
            i0 = low.long().clamp(0, n_in - 1)
            i1 = (low.long() + 1).clamp(0, n_in - 1)
            steps.append((axis, (i0, i1, weight)))
        else:
            raise ValueError(f"Resize mode {mode!r} is not implemented")
    return steps


def apply_resize(x: torch.Tensor, steps) -> torch.Tensor:
    for axis, how in steps:
        if isinstance(how, torch.Tensor):
            x = x.index_select(axis, how)
        else:
            i0, i1, weight = how
            shape = [1] * x.dim()
            shape[axis] = -1
            w = weight.to(x.dtype).reshape(shape)
            x = x.index_select(axis, i0) * (1 - w) + x.index_select(axis, i1) * w
    return x


@kernel("Resize")
def resize(inputs, attrs):
    x = inputs[0]
    scales = inputs[2].tolist() if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel() else None
    if scales is not None:
        out_shape = [int(math.floor(n * s)) for n, s in zip(x.shape, scales)]
    else:
        out_shape = _ints(inputs[3])
    return [apply_resize(x, resize_plan(attrs, x.shape, out_shape, scales)).clone()]


@kernel("ConvTranspose")
def conv_transpose(inputs, attrs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    rank = w.dim() - 2
    kernel_shape = list(attrs.get("kernel_shape") or w.shape[2:])
    strides = list(attrs.get("strides") or [1] * rank)
    dilations = list(attrs.get("dilations") or [1] * rank)
    output_padding = list(attrs.get("output_padding") or [0] * rank)
    groups = attrs.get("group", 1)
    spatial = x.shape[2:]
    full = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(spatial, strides, kernel_shape, dilations)]
    output_shape = list(attrs.get("output_shape") or [])[-rank:] if attrs.get("output_shape") else None
    auto_pad = attrs.get("auto_pad", "NOTSET")
    # As onnx's reference evaluates it: with SAME_* the padding makes the output `output_shape`
    # (default input * stride); otherwise the pads apply and `output_shape`, when given, cuts or
    # extends the output at its end.
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        lengths = output_shape or [n * s for n, s in zip(spatial, strides)]
        totals = [f + op - o for f, op, o in zip(full, output_padding, lengths)]
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        ends = [t - b for t, b in zip(totals, begins)]
    else:
        pads = list(attrs.get("pads") or [0] * (2 * rank))
        begins, ends = pads[:rank], pads[rank:]
        lengths = output_shape or [f + op - b - e for f, op, b, e in zip(full, output_padding, begins, ends)]
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
    if (begins == ends and output_shape is None and auto_pad == "NOTSET"
            and all(op < max(s, d) for op, s, d in zip(output_padding, strides, dilations))):
        return [fn(x, w, bias, strides, begins, output_padding, groups, dilations)]
    y = fn(x, w, None, strides, 0, 0, groups, dilations)
    around = []
    for f, b, length in zip(full, begins, lengths):
        around.append((-b, b + length - f))  # negative amounts cut
    order = [amount for before_after in reversed(around) for amount in before_after]
    y = F.pad(y, order)
    if bias is not None:
        y = y + bias.reshape([1, -1] + [1] * rank)
    return [y.contiguous()]
