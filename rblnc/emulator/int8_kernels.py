"""Integer kernels of the emulator: int8 x int8 -> int32 accumulation and requantisation, on
torch's quantized CPU ops (oneDNN int8 where the CPU has VNNI, else QNNPACK: whichever accumulates
exactly; weights prepacked once per command).

Numerics (docs/precision.md): an int8 command computes acc = sum (x - x_zp) * w + bias (int32),
then y = saturate(round_half_even(float32(acc) * multiplier) + y_zp), the requantisation
multiplier fp32(x_scale * w_scale) * fp32(1 / y_scale) applied in fp32 (requantisation_multipliers:
QNNPACK's way of computing it, which the onnxruntime engine, onnx_int8.py, reproduces bit for bit). Activations
are held as ONNX's int8 (or uint8); torch's kernels take uint8 activations, so an int8 tensor is
shifted by 128 (its sign bit flipped, with the zero point moved along), which changes no real value.
QuantizeLinear and DequantizeLinear run at the int8/float boundaries with ONNX semantics.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings

import numpy as np
import torch

from ..quant_params import QuantParams
from .kernels import (
    KERNELS, CommandContext, _spatial_pads, _symmetric, _torch_pad_order, average_pool_windows, kernel, max_pool,
    prepare,
)

_SIGNED = torch.int8
# torch deprecates its quantized tensor types, which are its int8 kernels' interface. One narrow
# filter, set once: catch_warnings per request swaps the process-wide filter list (not thread-safe).
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                        category=UserWarning)
# The engine weights are prepacked for: the first of these whose uint8 x int8 products accumulate
# exactly in int32 on this CPU (`_exact_engine` measures it once). oneDNN does on CPUs with VNNI
# (AVX512-VNNI, AVX-VNNI); without VNNI, oneDNN, fbgemm and x86 sum pairs of products in int16
# (vpmaddubsw) and saturate on full-range activations: on an AVX2-only EPYC, rblnc's own int8 MLP
# was 17 LSB off onnxruntime's QDQ reference with oneDNN, fbgemm's depthwise convolution tens of
# LSB on MobileNet. QNNPACK widens to int16 before multiplying (exact on every CPU). The packed
# weights carry their engine, whatever the global one is.
_ENGINE_PREFERENCE = ("onednn", "qnnpack")


@functools.lru_cache(maxsize=1)
def _exact_engine() -> str | None:
    """The first engine of _ENGINE_PREFERENCE whose quantized::linear gives the exact int32 sum
    on a product pair that overflows int16 (255 x 127 twice), or None (torch's default)."""
    activations = torch._make_per_tensor_quantized_tensor(torch.full((1, 2), 255, dtype=torch.uint8), 1.0, 0)
    weights = torch._make_per_tensor_quantized_tensor(torch.full((1, 2), 127, dtype=torch.int8), 1.0, 0)
    previous = torch.backends.quantized.engine
    try:
        for engine in _ENGINE_PREFERENCE:
            if engine not in torch.backends.quantized.supported_engines:
                continue
            torch.backends.quantized.engine = engine
            packed = torch.ops.quantized.linear_prepack(weights, None)
            # Output scale 256: 2 x 255 x 127 = 64770 -> 253; int16 saturation gives 32767 -> 128.
            result = torch.ops.quantized.linear(activations, packed, 256.0, 0).int_repr()
            if int(result[0, 0]) == round(2 * 255 * 127 / 256):
                return engine
    finally:
        torch.backends.quantized.engine = previous
    return None


# QNNPACK takes requantisation multipliers (x scale x weight scale / y scale) that are normal
# floats below 256 only.
_QNNPACK_MULTIPLIERS = (float(np.finfo(np.float32).tiny), 256.0)


def requantisation_multipliers(x_params: QuantParams, w_params: QuantParams, y_params: QuantParams) -> np.ndarray:
    """The requantisation multiplier per weight scale, computed as QNNPACK computes it (torch's
    generate_requantization_scales): fp32(x_scale * w_scale[c]) * fp32(1 / y_scale), not
    x_scale * w_scale / y_scale, which is 1 ulp away for some scales (on ResNet-50 one element in
    65536 of a layer then rounds the other way at a tie). The onnxruntime engine (onnx_int8.py)
    multiplies by these same values."""
    return ((np.float32(x_params.scale[0]) * w_params.scale.astype(np.float32)).astype(np.float32)
            * (np.float32(1.0) / np.float32(y_params.scale[0]))).astype(np.float32)


def _vanishing_channels(weight: torch.Tensor, bias: torch.Tensor | None, x_params: QuantParams,
                        w_params: QuantParams, y_params: QuantParams
                        ) -> tuple[torch.Tensor, torch.Tensor | None, QuantParams, np.ndarray]:
    """(weight, bias, weight params, multipliers) with every output channel whose requantisation
    multiplier is below the smallest normal float (a trained model's dead channel: weights around
    1e-40, so a scale of 1e-42) made all zero at scale 1: |acc| < 2^33 times such a multiplier
    rounds to 0 whatever the integers, so the channel's result is the zero point either way, and
    no engine has to take a denormal multiplier (QNNPACK refuses one)."""
    multipliers = requantisation_multipliers(x_params, w_params, y_params)
    vanishing = multipliers < _QNNPACK_MULTIPLIERS[0]
    if w_params.per_tensor or not vanishing.any():
        return weight, bias, w_params, multipliers
    rows = torch.from_numpy(vanishing)
    weight = weight.clone()
    weight[rows] = 0
    if bias is not None:
        bias = bias.clone()
        bias[rows] = 0
    scale = np.where(vanishing, np.float32(1.0), w_params.scale).astype(np.float32)
    params = QuantParams(scale, w_params.zero_point, w_params.axis)
    multipliers = (np.float32(x_params.scale[0]) * scale / np.float32(y_params.scale[0])).astype(np.float32)
    return weight, bias, params, multipliers


def _engine_for(multipliers: np.ndarray) -> str | None:
    """The exact engine, unless it is QNNPACK and a multiplier is out of its range: then oneDNN
    (which may saturate on a CPU without VNNI, as _exact_engine says)."""
    engine = _exact_engine()
    if engine == "qnnpack" and np.any(multipliers >= _QNNPACK_MULTIPLIERS[1]):
        return "onednn" if "onednn" in torch.backends.quantized.supported_engines else None
    return engine


@contextlib.contextmanager
def _packing_engine(engine: str | None = None):
    if engine is None:
        yield
        return
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _unavailable(inputs, attrs):
    raise RuntimeError("an int8 kernel needs its operands' quantisation (it runs through prepare_command)")


def _quantized_tensor(values: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """A torch quint8 tensor of an int8/uint8 activation (int8 shifted by 128: the same reals)."""
    zero = int(params.zero_point[0])
    if values.dtype == _SIGNED:
        values, zero = values.view(torch.uint8).bitwise_xor(128), zero + 128
    return torch._make_per_tensor_quantized_tensor(values, float(params.scale[0]), zero)


def _from_quantized(result: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    values = result.int_repr()
    return values.bitwise_xor(128).view(_SIGNED) if dtype == _SIGNED else values


def _torch_zero_point(params: QuantParams, dtype: torch.dtype) -> int:
    return int(params.zero_point[0]) + (128 if dtype == _SIGNED else 0)


def _weight(values: torch.Tensor, params: QuantParams) -> torch.Tensor:
    if params.per_tensor:
        return torch._make_per_tensor_quantized_tensor(values, float(params.scale[0]), 0)
    return torch._make_per_channel_quantized_tensor(
        values, torch.from_numpy(params.scale.astype("float64")),
        torch.zeros(params.scale.size, dtype=torch.long), params.axis)


def _float_bias(bias: torch.Tensor | None, params: QuantParams | None) -> torch.Tensor | None:
    """The int32 bias as the float torch's kernels take (they requantise it exactly back)."""
    if bias is None:
        return None
    return (bias.double() * torch.from_numpy(params.scale.astype("float64"))).float()


def _clamp_bounds(ctx: CommandContext, dtype: torch.dtype) -> tuple[int, int] | None:
    return clamp_bounds(ctx.attrs, ctx.output_quantization[0], dtype)


def clamp_bounds(attrs, params: QuantParams, dtype: torch.dtype) -> tuple[int, int] | None:
    """The fused activation (`attrs`' activation, activation_params) as integer bounds of a
    result at `params`: quantisation is monotone, so Q(clip(v, lo, hi)) = clamp(Q(v), Q(lo), Q(hi))."""
    activation = attrs.get("activation", "")
    if not activation:
        return None
    info = torch.iinfo(dtype)
    scale, zero = float(params.scale[0]), int(params.zero_point[0])
    low, high = (0.0, math.inf) if activation == "Relu" else tuple(attrs["activation_params"])

    def quantise(v: float, default: int) -> int:
        if math.isinf(v):
            return default
        return max(info.min, min(info.max, round(v / scale) + zero))

    return quantise(low, info.min), quantise(high, info.max)


def _finish(ctx: CommandContext):
    dtype = ctx.output_dtypes[0]
    bounds = _clamp_bounds(ctx, dtype)

    def finish(y: torch.Tensor) -> torch.Tensor:
        y = _from_quantized(y, dtype)
        return y.clamp_(*bounds) if bounds is not None else y

    return finish


@kernel("ai.rblnc::QConv", "ai.rblnc::QGemm", "ai.rblnc::QAdd", "ai.rblnc::QMaxPool",
        "ai.rblnc::QGlobalAveragePool", "ai.rblnc::QAveragePool", "ai.rblnc::QConcat")
def _needs_context(inputs, attrs):
    return _unavailable(inputs, attrs)


@prepare("ai.rblnc::QConv")
def prepare_qconv(ctx: CommandContext):
    x_params, w_params = ctx.input_quantization[0], ctx.input_quantization[1]
    y_params, y_dtype = ctx.output_quantization[0], ctx.output_dtypes[0]
    weight, bias = ctx.constants[1], ctx.constants[2] if len(ctx.constants) > 2 else None
    if weight is None or len(ctx.input_shapes[0]) != 4:
        raise ValueError("QConv needs a constant weight and a 4-D input")
    kernel_shape = list(ctx.attrs.get("kernel_shape", weight.shape[2:]))
    strides = list(ctx.attrs.get("strides", [1, 1]))
    dilations = list(ctx.attrs.get("dilations", [1, 1]))
    pads = _spatial_pads(torch.empty(ctx.input_shapes[0], device="meta"), ctx.attrs, kernel_shape, strides, dilations)
    padding = _symmetric(pads)
    pre_pad = None
    if padding is None:  # torch pads symmetrically: pad the integers with the zero point (real 0) first
        pre_pad, padding = _torch_pad_order(pads), [0, 0]
    x_zero = int(x_params.zero_point[0])
    weight, bias, w_params, multipliers = _vanishing_channels(weight, bias, x_params, w_params, y_params)
    with _packing_engine(_engine_for(multipliers)):
        packed = torch.ops.quantized.conv2d_prepack(
            _weight(weight, w_params), _float_bias(bias, ctx.input_quantization[2] if bias is not None else None),
            strides, padding, dilations, int(ctx.attrs.get("group", 1)))
    y_scale, y_zero = float(y_params.scale[0]), _torch_zero_point(y_params, y_dtype)
    finish = _finish(ctx)

    def run(args):
        x = args[0]
        if pre_pad is not None:
            x = torch.nn.functional.pad(x, pre_pad, value=x_zero)
        return [finish(torch.ops.quantized.conv2d(_quantized_tensor(x, x_params), packed, y_scale, y_zero))]

    return run


@prepare("ai.rblnc::QGemm")
def prepare_qgemm(ctx: CommandContext):
    x_params, w_params = ctx.input_quantization[0], ctx.input_quantization[1]
    y_params, y_dtype = ctx.output_quantization[0], ctx.output_dtypes[0]
    weight, bias = ctx.constants[1], ctx.constants[2] if len(ctx.constants) > 2 else None
    if weight is None:
        raise ValueError("QGemm needs a constant weight")
    weight, bias, w_params, multipliers = _vanishing_channels(weight, bias, x_params, w_params, y_params)
    with _packing_engine(_engine_for(multipliers)):
        packed = torch.ops.quantized.linear_prepack(
            _weight(weight, w_params), _float_bias(bias, ctx.input_quantization[2] if bias is not None else None))
    y_scale, y_zero = float(y_params.scale[0]), _torch_zero_point(y_params, y_dtype)
    finish = _finish(ctx)

    def run(args):
        return [finish(torch.ops.quantized.linear(_quantized_tensor(args[0], x_params), packed, y_scale, y_zero))]

    return run


@prepare("ai.rblnc::QAdd")
def prepare_qadd(ctx: CommandContext):
    """As onnxruntime's QLinearAdd: each operand's integers times scale_i / y_scale in fp32, added,
    rounded half to even (broadcasting, a constant operand allowed)."""
    a_params, b_params = ctx.input_quantization[0], ctx.input_quantization[1]
    y_params, y_dtype = ctx.output_quantization[0], ctx.output_dtypes[0]
    y_scale = float(y_params.scale[0])
    a_multiplier = torch.tensor(float(a_params.scale[0]) / y_scale, dtype=torch.float32)
    b_multiplier = torch.tensor(float(b_params.scale[0]) / y_scale, dtype=torch.float32)
    a_zero, b_zero, y_zero = int(a_params.zero_point[0]), int(b_params.zero_point[0]), int(y_params.zero_point[0])
    info = torch.iinfo(y_dtype)
    low, high = _clamp_bounds(ctx, y_dtype) or (info.min, info.max)

    def run(args):
        total = ((args[0].to(torch.int32) - a_zero).float() * a_multiplier
                 + (args[1].to(torch.int32) - b_zero).float() * b_multiplier)
        return [(torch.round(total) + y_zero).clamp_(low, high).to(y_dtype)]

    return run


def requantize(values: torch.Tensor, source: QuantParams, target: QuantParams, dtype: torch.dtype,
               count: int = 1) -> torch.Tensor:
    """Integers (or an int32 sum of `count` of them) at `source` params as `dtype` at `target`:
    round_half_even((q - zp) * multiplier) + zp', multiplier = s / (count * s') in fp32."""
    multiplier = float(source.scale[0]) / (count * float(target.scale[0]))
    centred = values.to(torch.int32) - count * int(source.zero_point[0])
    info = torch.iinfo(dtype)
    scaled = torch.round(centred.float() * torch.tensor(multiplier, dtype=torch.float32))
    return (scaled + int(target.zero_point[0])).clamp_(info.min, info.max).to(dtype)


@prepare("ai.rblnc::QMaxPool")
def prepare_qmaxpool(ctx: CommandContext):
    x_params, y_params, y_dtype = ctx.input_quantization[0], ctx.output_quantization[0], ctx.output_dtypes[0]
    attrs, same = ctx.attrs, x_params.same_as(y_params)

    def run(args):
        # A max selects one of its inputs: on the integers as floats (exact up to 2^24) it is exact.
        selected = max_pool([args[0].float()], attrs)[0].to(args[0].dtype)
        return [selected if same else requantize(selected, x_params, y_params, y_dtype)]

    return run


@prepare("ai.rblnc::QGlobalAveragePool")
def prepare_qglobal_average_pool(ctx: CommandContext):
    x_params, y_params, y_dtype = ctx.input_quantization[0], ctx.output_quantization[0], ctx.output_dtypes[0]
    shape = ctx.input_shapes[0]
    axes = tuple(range(2, len(shape)))
    count = math.prod(shape[2:])

    def run(args):
        total = args[0].to(torch.int32).sum(dim=axes, keepdim=True, dtype=torch.int32)
        return [requantize(total, x_params, y_params, y_dtype, count)]

    return run


@prepare("ai.rblnc::QConcat")
def prepare_qconcat(ctx: CommandContext):
    """Each input at the result's params: copied where they are its own (rblnc's quantisation gives
    a Concat's inputs its result's range), else requantised as `requantize` with count 1."""
    y_params, y_dtype = ctx.output_quantization[0], ctx.output_dtypes[0]
    axis = int(ctx.attrs.get("axis", 0))
    sources = list(ctx.input_quantization)
    same = [params.same_as(y_params) for params in sources]

    def run(args):
        parts = [x if copy and x.dtype == y_dtype else requantize(x, params, y_params, y_dtype)
                 for x, copy, params in zip(args, same, sources)]
        return [torch.cat(parts, dim=axis)]

    return run


def average_pool_layout(shape, attrs: dict, x_params: QuantParams, y_params: QuantParams
                        ) -> tuple[list[int], torch.Tensor]:
    """(the ONNX pads the window sums are taken over, the fp32 requantisation multiplier of each
    output position, fp32(sx / (count * sy)) with `count` its window's cells that count: the
    padding's with count_include_pad=1, shaped [1, 1, *out])."""
    _, count, pads = average_pool_windows(torch.zeros((1, 1) + tuple(shape[2:])), attrs, sums=False)
    multiplier = (float(x_params.scale[0]) / (count.double() * float(y_params.scale[0]))).float()
    return pads, multiplier


@prepare("ai.rblnc::QAveragePool")
def prepare_qaverage_pool(ctx: CommandContext):
    """Each window's sum of (q - zx) (padding is real 0), exact in fp32, times the position's
    multiplier (average_pool_layout) in fp32, rounded half to even, plus zy, saturated."""
    x_params, y_params, y_dtype = ctx.input_quantization[0], ctx.output_quantization[0], ctx.output_dtypes[0]
    if len(ctx.input_shapes[0]) != 4:
        raise ValueError("QAveragePool needs a 4-D input")
    attrs = ctx.attrs
    _, multiplier = average_pool_layout(ctx.input_shapes[0], attrs, x_params, y_params)
    x_zero, y_zero = int(x_params.zero_point[0]), int(y_params.zero_point[0])
    info = torch.iinfo(y_dtype)

    def run(args):
        summed, _, _ = average_pool_windows((args[0].to(torch.int32) - x_zero).float(), attrs)
        return [(torch.round(summed * multiplier) + y_zero).clamp_(info.min, info.max).to(y_dtype)]

    return run


def _params_tensor(ctx: CommandContext, position: int, rank: int) -> tuple[torch.Tensor, int]:
    """Scale or zero point input `position` shaped to broadcast along ONNX's `axis`."""
    value = ctx.constants[position]
    if value is None:
        raise ValueError("scale and zero point must be constants")
    if value.numel() > 1:
        axis = int(ctx.attrs.get("axis", 1)) % rank
        return value.reshape([-1 if d == axis else 1 for d in range(rank)]), axis
    return value.reshape(()), -1


@prepare("QuantizeLinear")
def prepare_quantize_linear(ctx: CommandContext):
    rank = len(ctx.input_shapes[0])
    scale, _ = _params_tensor(ctx, 1, rank)
    scale = scale.float()
    if len(ctx.constants) > 2 and ctx.constants[2] is not None:
        zero = _params_tensor(ctx, 2, rank)[0].to(torch.int32)
        dtype = ctx.output_dtypes[0]
    else:
        zero, dtype = torch.zeros((), dtype=torch.int32), torch.uint8
    info = torch.iinfo(dtype)

    def run(args):
        # ONNX: saturate(round_half_even(x / scale) + zero_point); torch.round rounds half to even.
        return [(torch.round(args[0].float() / scale) + zero).clamp_(info.min, info.max).to(dtype)]

    return run


@prepare("DequantizeLinear")
def prepare_dequantize_linear(ctx: CommandContext):
    rank = max(1, len(ctx.input_shapes[0]))
    scale = _params_tensor(ctx, 1, rank)[0].float()
    zero = (_params_tensor(ctx, 2, rank)[0].to(torch.int32)
            if len(ctx.constants) > 2 and ctx.constants[2] is not None else torch.zeros((), dtype=torch.int32))
    out_dtype = ctx.output_dtypes[0] if ctx.output_dtypes and ctx.output_dtypes[0] is not None else ctx.float_type

    def run(args):
        return [((args[0].to(torch.int32) - zero).float() * scale).to(out_dtype)]

    return run


KERNELS.setdefault("QuantizeLinear", _unavailable)
KERNELS.setdefault("DequantizeLinear", _unavailable)

__all__ = ["average_pool_layout", "clamp_bounds", "requantisation_multipliers", "requantize"]
