"""Fast paths of the emulator's kernels: specialised once per command, run per request.

Each keeps the device numerics of docs/precision.md while skipping the generic path's fp32
copies where torch already computes that way:
* ops that are exact in any precision (moves, max, relu, views) run on the program's type;
* elementwise ops, normalisation, softmax, pooling and bf16 matrix products run natively:
  torch (and oneDNN) evaluates one such op in fp32 and rounds its result once;
* convolutions use oneDNN with weights reordered once for channels-last activations; fp16
  programs compute them in fp32 (oneDNN's fp16 path is slower on CPUs without AMX-FP16),
  which is the same arithmetic: fp16 operands, fp32 accumulation, one rounding.
Outputs are written over a dying input where the memory plan put them there (`inplace`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .kernels import (
    KERNELS, CommandContext, Epilogue, _spatial_pads, _symmetric, _torch_pad_order, apply_resize, prepare,
    resize_plan,
)

_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_CHANNELS_LAST = torch.channels_last
# Whether bf16 commands compute in bf16 (oneDNN's AVX-512 kernels: fp32 accumulation, one
# rounding, and faster than fp32) or in fp32 on the bf16 operands with the result rounded once,
# which is the same rule. On an AVX2-only CPU (this project's AMD EPYC machines) torch's bf16
# convolutions and matrix products ran 9x to 50x slower than fp32 (a 3x3 convolution, 64
# channels at 56x56: 253 ms against 28 ms), and its bf16 transposed convolution rounded partial
# sums (6.0625 for a sum of 6.0845, where one rounding gives 6.09375).
# The same test as the engine choice's (npu.choose_engine): oneDNN's own "bf16 supported".
BF16_COMPUTE = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _native(op_type: str):
    """The registered kernel run on the program's own type (exact for these ops)."""
    fn = KERNELS[op_type]
    return lambda ctx: (lambda args, attrs=ctx.attrs: fn(args, attrs))


# Ops whose result is exactly representable in the inputs' type: moving, selecting, max/min.
for _op in ("MaxPool", "GlobalMaxPool", "Concat", "Transpose", "Identity", "Slice", "Gather",
            "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Max", "Min", "Neg", "Abs",
            "ReduceMax", "ReduceMin", "Pad"):
    prepare(_op)(_native(_op))


@prepare("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def prepare_view(ctx: CommandContext):
    shape = list(ctx.output_shapes[0])
    return lambda args: [args[0].reshape(shape)]


@prepare("Split")
def prepare_split(ctx: CommandContext):
    rank = len(ctx.input_shapes[0])
    axis = ctx.attrs.get("axis", 0) % rank
    sizes = [shape[axis] for shape in ctx.output_shapes]
    return lambda args: list(torch.split(args[0], sizes, dim=axis))


@prepare("Resize")
def prepare_resize(ctx: CommandContext):
    mode = ctx.attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        return None
    for i in (2, 3):  # scales, sizes: set the output coordinates, so must be known now
        if i < len(ctx.input_shapes) and ctx.input_shapes[i] is not None and ctx.constants[i] is None:
            return None
    scales = ctx.constants[2] if len(ctx.constants) > 2 else None
    scales = scales.tolist() if scales is not None and scales.numel() else None
    in_shape, out_shape = ctx.input_shapes[0], ctx.output_shapes[0]
    if mode == "linear":
        return _torch_linear_resize(ctx, in_shape, out_shape, scales)
    steps = resize_plan(ctx.attrs, in_shape, out_shape, scales)
    if not steps:
        return lambda args: [args[0].clone()]
    torch_mode = _torch_nearest_mode(steps, in_shape, out_shape)
    if torch_mode is not None:
        # One pass over the data that keeps a channels-last input channels-last (what the
        # convolutions around it read), instead of a gather per axis into NCHW.
        size = list(out_shape[2:])
        # (torch interpolates floating point only: an int8 tensor, which a nearest Resize copies
        # unchanged, takes the gather)
        return lambda args: [F.interpolate(args[0], size=size, mode=torch_mode) if args[0].is_floating_point()
                             else apply_resize(args[0], steps).contiguous()]
    return lambda args: [apply_resize(args[0], steps).contiguous()]


def _torch_nearest_mode(steps, in_shape, out_shape) -> str | None:
    """The F.interpolate mode ("nearest": asymmetric coordinates, floor; "nearest-exact":
    half-pixel, rounding halves up) that picks the source indices of `steps` on every axis, if
    one does: spatial axes only, of a 1-D to 3-D image."""
    if not 3 <= len(in_shape) <= 5 or any(axis < 2 for axis, _ in steps):
        return None
    for torch_mode in ("nearest", "nearest-exact"):
        for axis, indices in steps:
            if not isinstance(indices, torch.Tensor):
                return None
            ramp = torch.arange(in_shape[axis], dtype=torch.float32).reshape(1, 1, -1)
            picked = F.interpolate(ramp, size=out_shape[axis], mode=torch_mode).reshape(-1).long()
            if not torch.equal(picked, indices):
                break
        else:
            return torch_mode
    return None


_TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _torch_linear_resize(ctx: CommandContext, in_shape, out_shape, scales):
    """Linear Resize of the spatial axes as F.interpolate, which keeps channels-last inputs
    channels-last and computes reduced-precision inputs in fp32 with one rounding. Its source
    coordinates are ONNX's for half_pixel (negative ones clamped to 0, as ONNX's edge padding
    gives), pytorch_half_pixel with every output axis longer than 1, and align_corners where
    the output length is the resized length; None (the general path) otherwise."""
    attrs = ctx.attrs
    rank = len(in_shape) - 2
    if (rank not in _TORCH_LINEAR or tuple(in_shape[:2]) != tuple(out_shape[:2]) or attrs.get("axes")
            or attrs.get("antialias", 0) or attrs.get("exclude_outside", 0)):
        return None
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    spatial_out = list(out_shape[2:])
    if scales is not None:
        spatial_scales = [float(s) for s in scales[2:]]
        if len(scales) != len(in_shape) or list(scales[:2]) != [1.0, 1.0] or \
                [math.floor(n * s) for n, s in zip(in_shape[2:], spatial_scales)] != spatial_out:
            return None
    if transform == "pytorch_half_pixel" and min(spatial_out) > 1:
        transform = "half_pixel"
    if transform == "half_pixel":
        align_corners = False
    elif transform == "align_corners" and (scales is None or all(
            n * s == o for n, s, o in zip(in_shape[2:], spatial_scales, spatial_out))):
        align_corners = True
    else:
        return None
    mode = _TORCH_LINEAR[rank]
    if scales is not None and not align_corners:
        # ONNX's coordinates divide by the given scale, not by output / input length.
        where = {"scale_factor": spatial_scales, "recompute_scale_factor": False}
    else:
        where = {"size": spatial_out}
    general = KERNELS["Resize"]
    float_type = ctx.float_type

    def run(args):
        x = args[0]
        if not x.is_floating_point():
            return general(args, ctx.attrs)
        if x.dtype == torch.float16:  # no fp32 arithmetic inside torch's fp16 kernel: widen, round once
            return [F.interpolate(x.float(), mode=mode, align_corners=align_corners, **where).to(float_type)]
        return [F.interpolate(x, mode=mode, align_corners=align_corners, **where)]

    return run


# -- elementwise: one torch op, fp32 inside, one rounding ----------------------------------

_UNARY = {
    "Relu": (torch.relu, torch.relu_), "Sigmoid": (torch.sigmoid, torch.sigmoid_),
    "Tanh": (torch.tanh, torch.tanh_), "Exp": (torch.exp, torch.exp_), "Log": (torch.log, torch.log_),
    "Sqrt": (torch.sqrt, torch.sqrt_), "Reciprocal": (torch.reciprocal, torch.reciprocal_),
    "HardSwish": (F.hardswish, lambda x: F.hardswish(x, inplace=True)),
}


@prepare(*_UNARY)
def prepare_unary(ctx: CommandContext):
    fresh, inplace = _UNARY[ctx.op_type]
    if ctx.inplace == 0:
        return lambda args: [inplace(args[0])]
    return lambda args: [fresh(args[0])]


@prepare("LeakyRelu")
def prepare_leaky_relu(ctx: CommandContext):
    alpha, inplace = ctx.attrs.get("alpha", 0.01), ctx.inplace == 0
    return lambda args: [F.leaky_relu(args[0], alpha, inplace=inplace)]


@prepare("Clip")
def prepare_clip(ctx: CommandContext):
    bounds = [ctx.constants[i] if i < len(ctx.constants) else None for i in (1, 2)]
    if any(b is None and i < len(ctx.input_shapes) and ctx.input_shapes[i] is not None
           for i, b in zip((1, 2), bounds)):
        return None  # a bound computed at run time
    low, high = (None if b is None else b.item() for b in bounds)
    if low is None and high is None:
        return lambda args: [args[0].clone()]
    if ctx.inplace == 0:
        return lambda args: [args[0].clamp_(low, high)]
    return lambda args: [torch.clamp(args[0], low, high)]


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@prepare(*_BINARY)
def prepare_binary(ctx: CommandContext):
    fn = _BINARY[ctx.op_type]
    if ctx.inplace is not None:
        target = ctx.inplace
        return lambda args: [fn(args[0], args[1], out=args[target])]
    return lambda args: [fn(args[0], args[1])]


@prepare("Sum")
def prepare_sum(ctx: CommandContext):
    if len(ctx.input_shapes) != 2:
        return None
    return prepare_binary(CommandContext("Add", "", ctx.attrs, ctx.constants, ctx.input_shapes,
                                         ctx.output_shapes, ctx.float_type, ctx.inplace))


@prepare("Softmax")
def prepare_softmax(ctx: CommandContext):
    axis = ctx.attrs.get("axis", -1)
    return lambda args: [torch.softmax(args[0], axis)]


@prepare("BatchNormalization")
def prepare_batch_normalization(ctx: CommandContext):
    params = ctx.constants[1:5]
    if any(p is None for p in params) or len(ctx.output_shapes) > 1:
        return None
    scale, bias, mean, var = params
    eps = ctx.attrs.get("epsilon", 1e-5)
    return lambda args: [torch.batch_norm(args[0], scale, bias, mean, var, False, 0.0, eps, False)]


@prepare("LayerNormalization")
def prepare_layer_normalization(ctx: CommandContext):
    """F.layer_norm over the axes from `axis` on (fp32 inside for bf16 and fp16, one rounding),
    when the scale and bias are constants and the mean and inverse deviation are not asked for."""
    shape = ctx.input_shapes[0]
    axis = ctx.attrs.get("axis", -1) % len(shape)
    normalized = list(shape[axis:])
    count = math.prod(normalized)
    scale = ctx.constants[1]
    has_bias = len(ctx.input_shapes) > 2 and ctx.input_shapes[2] is not None
    bias = ctx.constants[2] if has_bias else None
    if (scale is None or scale.numel() != count or (has_bias and (bias is None or bias.numel() != count))
            or any(s != () for s in ctx.output_shapes[1:])):
        return None
    eps = ctx.attrs.get("epsilon", 1e-5)
    # fp16: no fp32 statistics inside torch's fp16 kernel; bf16: as _compute_type says
    widen = _compute_type(ctx) != ctx.float_type
    compute = torch.float32 if widen else ctx.float_type
    weight = scale.reshape(normalized).to(compute)
    shift = None if bias is None else bias.reshape(normalized).to(compute)
    float_type = ctx.float_type

    def run(args):
        x = args[0]
        if widen:
            return [F.layer_norm(x.float(), normalized, weight, shift, eps).to(float_type)]
        return [F.layer_norm(x.to(compute), normalized, weight, shift, eps)]

    return run


@prepare("AveragePool")
def prepare_average_pool(ctx: CommandContext):
    kernel_shape = list(ctx.attrs["kernel_shape"])
    rank = len(kernel_shape)
    strides = list(ctx.attrs.get("strides", [1] * rank))
    pads = _spatial_pads(torch.empty(ctx.input_shapes[0], device="meta"), ctx.attrs, kernel_shape,
                         strides, [1] * rank)
    padding = _symmetric(pads)
    if (padding is None or any(p > k // 2 for p, k in zip(padding, kernel_shape))
            or ctx.attrs.get("ceil_mode", 0) or any(d != 1 for d in ctx.attrs.get("dilations", [1] * rank))
            or rank > 3):
        return None  # the general path: two convolutions, computed in fp32
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    include_pad = bool(ctx.attrs.get("count_include_pad", 0))
    return lambda args: [pool(args[0], kernel_shape, strides, padding, count_include_pad=include_pad)]


@prepare("GlobalAveragePool")
def prepare_global_average_pool(ctx: CommandContext):
    dims = tuple(range(2, len(ctx.input_shapes[0])))
    return lambda args: [args[0].mean(dim=dims, keepdim=True)]


# -- matrix engines ------------------------------------------------------------------------


def _compute_type(ctx: CommandContext) -> torch.dtype:
    if ctx.float_type == torch.bfloat16 and BF16_COMPUTE:
        return torch.bfloat16
    return torch.float32


def _rounder(ctx: CommandContext, compute: torch.dtype):
    if compute == ctx.float_type:
        return lambda y: y
    float_type = ctx.float_type
    return lambda y: y.to(float_type)


@prepare("Conv")
def prepare_conv(ctx: CommandContext):
    weight = ctx.constants[1]
    has_bias = len(ctx.input_shapes) > 2 and ctx.input_shapes[2] is not None
    bias = ctx.constants[2] if has_bias else None
    if weight is None or (has_bias and bias is None) or len(ctx.input_shapes[0]) != 4:
        return None
    return conv2d_closure(ctx, weight, bias, ctx.attrs, ctx.epilogue)


def conv2d_closure(ctx: CommandContext, weight: torch.Tensor, bias: torch.Tensor | None, attrs: dict,
                   epilogue: Epilogue | None = None):
    """A 2-D convolution on oneDNN with its weights reordered once for channels-last inputs, and
    the epilogue (folded batch norm, residual add, ReLU/ReLU6) as oneDNN post-ops. Fused
    convolution kernels of domain ai.rblnc can build their fast path with it. Reads args[0]
    (the input) and, with a residual, args[-1]; returns None when oneDNN is unavailable."""
    x_shape = ctx.input_shapes[0]
    if not _MKLDNN:
        return None
    kernel_shape = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    groups = attrs.get("group", 1)
    pads = _spatial_pads(torch.empty(x_shape, device="meta"), attrs, kernel_shape, strides, dilations)
    padding = _symmetric(pads)
    pre_pad = None
    padded_shape = list(x_shape)
    if padding is None:
        pre_pad = _torch_pad_order(pads)
        padded_shape[2] += pads[0] + pads[2]
        padded_shape[3] += pads[1] + pads[3]
        padding = [0, 0]
    compute = _compute_type(ctx)
    w, b = weight.double(), None if bias is None else bias.double()
    if epilogue is not None and epilogue.batch_norm is not None:
        # fp32 only (the runner asks only then): conv then BN is one affine map per channel.
        scale, shift, mean, var, eps = (t.double() if isinstance(t, torch.Tensor) else t for t in epilogue.batch_norm)
        factor = scale / torch.sqrt(var + eps)
        w = w * factor.reshape(-1, 1, 1, 1)
        b = ((b if b is not None else torch.zeros_like(mean)) - mean) * factor + shift
    w = w.to(compute).contiguous()
    b = None if b is None else b.to(compute).contiguous()
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, padding, strides, dilations, groups, padded_shape)
    post_op = onednn_unary(epilogue.activation, epilogue.activation_params) if epilogue else ("none", [], "")
    if post_op is None:
        return None
    unary, scalars, algorithm = post_op
    residual = epilogue is not None and epilogue.residual
    if residual and unary not in ("none", "relu"):
        return None  # oneDNN applies only ReLU after a residual add
    if epilogue is not None:
        ctx.fused = True
    round_out = _rounder(ctx, compute)

    def prepare_input(x):
        if x.dtype != compute:
            x = x.to(compute)
        if pre_pad is not None:
            x = F.pad(x, pre_pad)
        return x.contiguous(memory_format=_CHANNELS_LAST)

    if not residual:
        conv = torch.ops.mkldnn._convolution_pointwise

        def run(args):
            return [round_out(conv(prepare_input(args[0]), packed, b, padding, strides, dilations, groups,
                                   unary, scalars, algorithm))]

        return run
    post = None if unary == "none" else unary
    conv_beside = torch.ops.mkldnn._convolution_pointwise.binary

    def run_beside(args):
        other = args[-1].to(compute).contiguous(memory_format=_CHANNELS_LAST)
        return [round_out(conv_beside(prepare_input(args[0]), other, packed, b, padding, strides, dilations,
                                      groups, "add", 1.0, post, scalars, algorithm))]

    if not epilogue.residual_inplace or compute != ctx.float_type:
        return run_beside
    conv_into = torch.ops.mkldnn._convolution_pointwise_.binary

    def run_into(args):
        other = args[-1]
        if not other.is_contiguous(memory_format=_CHANNELS_LAST):
            return run_beside(args)
        return [conv_into(other, prepare_input(args[0]), packed, b, padding, strides, dilations, groups,
                          "add", 1.0, post, scalars, algorithm)]

    return run_into


def onednn_unary(name: str | None, params=()) -> tuple[str, list, str] | None:
    """The oneDNN eltwise post-op (attr, scalars, algorithm) computing activation `name`, or None."""
    params = [float(p) for p in params]
    if not name:
        return "none", [], ""
    simple = {"relu": "relu", "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
              "HardSwish": "hardswish", "silu": "swish", "SiLU": "swish"}
    if name in simple:
        return simple[name], [], ""
    if name == "relu6":
        return "hardtanh", [0.0, 6.0], ""
    if name in ("Gelu", "GeluTanh"):
        return "gelu", [], "tanh" if name == "GeluTanh" else "none"
    if name == "Clip" and len(params) == 2:
        return "hardtanh", params, ""
    if name == "LeakyRelu" and len(params) == 1:
        return "leaky_relu", params, ""
    if name == "HardSigmoid" and len(params) == 2 and abs(params[0] - 1 / 6) < 1e-7 and params[1] == 0.5:
        return "hardsigmoid", [], ""  # oneDNN's is PyTorch's (slope 1/6, offset 1/2), whatever the scalars
    return None


# -- our fused ops (rblnc/ir/fused_ops.py; their kernels are in fused_kernels.py) ------------


@prepare("ai.rblnc::FusedConv")
def prepare_fused_conv(ctx: CommandContext):
    """act(Conv(X, W, B) + Z) as one oneDNN convolution with post-ops: fp32 inside, one rounding."""
    shapes = ctx.input_shapes
    weight = ctx.constants[1]
    has_bias = len(shapes) > 2 and shapes[2] is not None
    has_addend = len(shapes) > 3 and shapes[3] is not None
    bias = ctx.constants[2] if has_bias else None
    if (weight is None or (has_bias and bias is None) or len(shapes[0]) != 4
            or (has_addend and (ctx.constants[3] is not None or tuple(shapes[3]) != tuple(ctx.output_shapes[0])))):
        return None
    attrs = {k: v for k, v in ctx.attrs.items() if k not in ("activation", "activation_params")}
    epilogue = Epilogue(residual=has_addend, residual_inplace=has_addend and ctx.inplace == 3,
                        activation=ctx.attrs.get("activation", ""),
                        activation_params=tuple(ctx.attrs.get("activation_params", ())))
    run = conv2d_closure(ctx, weight, bias, attrs, epilogue)
    ctx.fused = False  # it applies its own epilogue; no following command is absorbed
    return run


def linear_closure(ctx: CommandContext, weight: torch.Tensor, bias: torch.Tensor | None, a_shape, *,
                   trans_a: bool = False, post_op: tuple[str, list, str] = ("none", [], "")):
    """A @ weight.T (+ bias, then the oneDNN eltwise post-op) over the last axis of A, one rounding.
    The weight is reordered once for the product's row count (oneDNN's blocked layout: in bf16 an
    M=1 classifier head ran 2x, a 32x512x8210 OCR head 6x faster than from the plain matrix; in
    fp32 the latter 1.5x faster than MKL's GEMM)."""
    compute = _compute_type(ctx)
    weight = weight.to(compute).contiguous()
    bias = None if bias is None else bias.reshape(-1).to(compute).contiguous()
    round_out = _rounder(ctx, compute)
    unary, scalars, algorithm = post_op
    rows = a_shape[1] if trans_a else math.prod(a_shape[:-1])
    k, n = weight.shape[1], weight.shape[0]
    out_shape = [a_shape[1], n] if trans_a else [*a_shape[:-1], n]
    if not _MKLDNN:
        if unary != "none":
            return None

        def plain(args):
            a = args[0].t() if trans_a else args[0]
            return [round_out(F.linear(a.to(compute), weight, bias))]

        return plain
    if rows > 0:
        weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    linear = torch.ops.mkldnn._linear_pointwise

    def run(args):
        a = args[0].t() if trans_a else args[0]
        a = a.to(compute).reshape(rows, k).contiguous()
        return [round_out(linear(a, weight, bias, unary, scalars, algorithm).reshape(out_shape))]

    return run


@prepare("ai.rblnc::FusedGemm")
def prepare_fused_gemm(ctx: CommandContext):
    """act(Gemm(A, B, C)) as one oneDNN matrix product with a post-op."""
    attrs = ctx.attrs
    b = ctx.constants[1]
    has_c = len(ctx.input_shapes) > 2 and ctx.input_shapes[2] is not None
    c = ctx.constants[2] if has_c else None
    n = ctx.output_shapes[0][-1]
    post_op = onednn_unary(attrs.get("activation", ""), attrs.get("activation_params", ()))
    if (b is None or post_op is None or (has_c and (c is None or c.numel() != n or attrs.get("beta", 1.0) != 1.0))
            or attrs.get("alpha", 1.0) != 1.0 or not _MKLDNN):
        return None
    weight = b if attrs.get("transB", 0) else b.t()
    return linear_closure(ctx, weight, c, ctx.input_shapes[0], trans_a=bool(attrs.get("transA", 0)), post_op=post_op)


@prepare("ai.rblnc::FusedMatMul")
def prepare_fused_matmul(ctx: CommandContext):
    """act(A @ B + C) with B a constant matrix and C absent or a constant row: one oneDNN
    product with bias and post-op."""
    b = ctx.constants[1]
    has_c = len(ctx.input_shapes) > 2 and ctx.input_shapes[2] is not None
    c = ctx.constants[2] if has_c else None
    post_op = onednn_unary(ctx.attrs.get("activation", ""), ctx.attrs.get("activation_params", ()))
    if (b is None or b.dim() != 2 or post_op is None or len(ctx.input_shapes[0]) < 1
            or (has_c and (c is None or c.numel() != b.shape[1]))):
        return None
    return linear_closure(ctx, b.t(), c, ctx.input_shapes[0], post_op=post_op)


@prepare("ai.rblnc::SiLU")
def prepare_silu(ctx: CommandContext):
    inplace = ctx.inplace == 0
    return lambda args: [F.silu(args[0], inplace=inplace)]


@prepare("ai.rblnc::Gelu")
def prepare_gelu(ctx: CommandContext):
    approximate = "tanh" if ctx.attrs.get("approximate", "none") == "tanh" else "none"
    return lambda args: [F.gelu(args[0], approximate=approximate)]


@prepare("Gemm")
def prepare_gemm(ctx: CommandContext):
    attrs = ctx.attrs
    b = ctx.constants[1]
    c = ctx.constants[2] if len(ctx.constants) > 2 else None
    has_c = len(ctx.input_shapes) > 2 and ctx.input_shapes[2] is not None
    n = ctx.output_shapes[0][1]
    if (b is None or (has_c and c is None) or attrs.get("alpha", 1.0) != 1.0
            or (has_c and (attrs.get("beta", 1.0) != 1.0 or c.numel() != n))):
        return None
    weight = b if attrs.get("transB", 0) else b.t()
    return linear_closure(ctx, weight, c, ctx.input_shapes[0], trans_a=bool(attrs.get("transA", 0)))


@prepare("MatMul")
def prepare_matmul(ctx: CommandContext):
    compute = _compute_type(ctx)
    b = ctx.constants[1]
    if b is not None and b.dim() == 2 and ctx.constants[0] is None and len(ctx.input_shapes[0]) >= 1:
        return linear_closure(ctx, b.t(), None, ctx.input_shapes[0])  # a layer's weights
    round_out = _rounder(ctx, compute)
    constant = [None if c is None else c.to(compute) for c in ctx.constants[:2]]

    def run(args):
        a = constant[0] if constant[0] is not None else args[0].to(compute)
        b = constant[1] if constant[1] is not None else args[1].to(compute)
        return [round_out(torch.matmul(a, b))]

    return run


@prepare("ConvTranspose")
def prepare_conv_transpose(ctx: CommandContext):
    weight = ctx.constants[1]
    if weight is None:
        return None
    attrs = ctx.attrs
    rank = len(ctx.input_shapes[0]) - 2
    pads = list(attrs.get("pads") or [0] * (2 * rank))
    # The general path (asymmetric pads, an output shape) adds the bias as a second op.
    strides = list(attrs.get("strides") or [1] * rank)
    dilations = list(attrs.get("dilations") or [1] * rank)
    output_padding = list(attrs.get("output_padding") or [0] * rank)
    simple = (pads[:rank] == pads[rank:] and not attrs.get("output_shape")
              and attrs.get("auto_pad", "NOTSET") == "NOTSET"
              and all(op < max(s, d) for op, s, d in zip(output_padding, strides, dilations)))
    compute = _compute_type(ctx) if simple else torch.float32
    fn = KERNELS["ConvTranspose"]
    constants = [None if c is None else c.to(compute) for c in ctx.constants]
    round_out = _rounder(ctx, compute)

    def run(args):
        wide = [constants[i] if constants[i] is not None else (a if a is None else a.to(compute))
                for i, a in enumerate(args)]
        return [round_out(y) for y in fn(wide, attrs)]

    return run

