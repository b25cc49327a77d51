"""Converters of linear algebra, attention, convolution, pooling, normalization and resampling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .emit import BOOL, Emitter, Poisoned, TensorRef, Unsupported
from .registry import converts, int_list
from .ops_elementwise import binary, scaled
from .ops_shape import t, transpose


# ----------------------------------------------------------------------------- linear algebra


@converts("aten::linear")
def linear(e: Emitter, input, weight, bias=None, **_):
    """Gemm (transB) for 2-D inputs; MatMul with the transposed weight (+ Add of the bias) otherwise."""
    x = e.tensor(input)
    if e.rank(x) == 2 and e.rank(weight) == 2:
        inputs = [x, e.tensor(weight)]
        if bias is not None:
            inputs.append(e.tensor(bias))
        return e.op("Gemm", inputs, {"transB": 1})
    if isinstance(weight, torch.Tensor):
        w = e.tensor(weight.t().contiguous() if weight.dim() == 2 else weight, name_hint=e.constant_name(weight) + "_t")
    else:
        w = t(e, weight)
    y = e.op("MatMul", [x, w])
    return y if bias is None else e.op("Add", [y, e.tensor(bias)])


@converts("aten::matmul", "aten::mm", "aten::bmm")
def matmul(e: Emitter, self, other=None, mat2=None, **_):
    """MatMul."""
    return binary(e, "MatMul", self, other if other is not None else mat2)


@converts("aten::addmm")
def addmm(e: Emitter, self, mat1, mat2, beta=1, alpha=1, **_):
    """Gemm (alpha, beta)."""
    return e.op("Gemm", [e.tensor(mat1), e.tensor(mat2), e.tensor(self)], {"alpha": float(alpha), "beta": float(beta)})


@converts("aten::baddbmm")
def baddbmm(e: Emitter, self, batch1, batch2, beta=1, alpha=1, **_):
    """MatMul scaled by alpha + self scaled by beta."""
    product = scaled(e, binary(e, "MatMul", batch1, batch2), alpha)
    return binary(e, "Add", scaled(e, self, beta), product)


@converts("aten::einsum")
def einsum(e: Emitter, equation, tensors, path=None, **_):
    """Einsum."""
    dtype = e.result_dtype(*tensors)
    return e.op("Einsum", [e.tensor(t, dtype) for t in tensors], {"equation": equation})


@converts("aten::scaled_dot_product_attention")
def scaled_dot_product_attention(e: Emitter, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, **_):
    """MatMul, Mul by the scale, Add of the mask, Softmax, MatMul."""
    if enable_gqa:
        raise Unsupported("grouped-query attention (enable_gqa=True)")
    q, k, v = e.tensor(query), e.tensor(key), e.tensor(value)
    dtype, q_shape, k_shape = e.dtype(q), e.shape(q), e.shape(k)
    scores = e.op("MatMul", [q, t(e, k) if e.rank(k) == 2 else transpose(e, k, -2, -1)])
    factor = scale if scale is not None else 1.0 / math.sqrt(q_shape[-1])
    scores = e.op("Mul", [scores, e.tensor(float(factor), dtype)])
    if is_causal:
        causal = np.triu(np.full((q_shape[-2], k_shape[-2]), -np.inf, dtype=dtype), 1)
        scores = e.op("Add", [scores, e.constant(causal, "causal_mask")])
    if attn_mask is not None:
        if e.dtype(attn_mask) == BOOL:
            zero, minus_inf = e.tensor(0.0, dtype), e.tensor(float("-inf"), dtype)
            attn_mask = e.op("Where", [e.tensor(attn_mask), zero, minus_inf])
        scores = e.op("Add", [scores, e.tensor(attn_mask, dtype)])
    return e.op("MatMul", [e.op("Softmax", [scores], {"axis": -1}), v])


# ----------------------------------------------------------------------------- convolution and pooling


def _conv(e: Emitter, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    spatial = e.rank(weight) - 2
    x = e.tensor(input)
    attrs: dict[str, Any] = {"strides": int_list(stride, spatial, "stride"),
                             "dilations": int_list(dilation, spatial, "dilation"), "group": int(groups)}
    kernel = list(e.shape(weight)[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * spatial * 2
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(attrs["dilations"], kernel)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            raise Unsupported(f"padding={padding!r}")
    else:
        pads = int_list(padding, spatial, "padding") * 2
    attrs["pads"] = pads
    attrs["kernel_shape"] = kernel
    if transposed:
        out_pad = int_list(output_padding, spatial, "output_padding")
        if any(out_pad):
            attrs["output_padding"] = out_pad
    inputs = [x, e.tensor(weight)]
    if bias is not None:
        inputs.append(e.tensor(bias))
    return e.op("ConvTranspose" if transposed else "Conv", inputs, attrs)


@converts("aten::_convolution", "aten::convolution")
def convolution(e: Emitter, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, **_):
    """Conv or ConvTranspose."""
    return _conv(e, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)


@converts("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution_mode")
def conv(e: Emitter, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, **_):
    """Conv (padding may be 'same' or 'valid')."""
    return _conv(e, input, weight, bias, stride, padding, dilation, False, 0, groups)


@converts("aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d")
def conv_transpose(e: Emitter, input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                   dilation=1, **_):
    """ConvTranspose."""
    return _conv(e, input, weight, bias, stride, padding, dilation, True, output_padding, groups)


@converts("aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d")
def max_pool(e: Emitter, self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False, **_):
    """MaxPool."""
    spatial = e.rank(self) - 2
    kernel = int_list(kernel_size, spatial, "kernel_size")
    strides = int_list(stride, spatial, "stride") if stride not in ((), [], None) else kernel
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": int_list(padding, spatial, "padding") * 2,
             "ceil_mode": int(ceil_mode)}
    dilations = int_list(dilation, spatial, "dilation")
    if any(d != 1 for d in dilations):
        attrs["dilations"] = dilations
    return e.op("MaxPool", [e.tensor(self)], attrs)


@converts("aten::max_pool2d_with_indices")
def max_pool_with_indices(e: Emitter, self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False, **_):
    """MaxPool (the indices output is not supported)."""
    values = max_pool(e, self, kernel_size, stride, padding, dilation, ceil_mode)
    return values, Poisoned("the indices of max_pool2d_with_indices are not supported")


@converts("aten::avg_pool1d", "aten::avg_pool2d", "aten::avg_pool3d")
def avg_pool(e: Emitter, self, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None, **_):
    """AveragePool."""
    if divisor_override is not None:
        raise Unsupported("avg_pool with divisor_override")
    spatial = e.rank(self) - 2
    kernel = int_list(kernel_size, spatial, "kernel_size")
    strides = int_list(stride, spatial, "stride") if stride not in ((), [], None) else kernel
    pads = int_list(padding, spatial, "padding") * 2
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": int(ceil_mode),
             "count_include_pad": int(bool(count_include_pad) and any(pads))}
    return e.op("AveragePool", [e.tensor(self)], attrs)


def _pool_matrix(length: int, bins: int, dtype: np.dtype) -> np.ndarray:
    """[bins, length] averaging weights of adaptive pooling's bins along one axis."""
    matrix = np.zeros((bins, length), dtype=dtype)
    for i in range(bins):
        start, end = (i * length) // bins, -(-((i + 1) * length) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@converts("aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d")
def adaptive_avg_pool(e: Emitter, self, output_size, **_):
    """GlobalAveragePool (output 1), AveragePool (sizes divide), else MatMul by bin-averaging matrices."""
    shape = e.shape(self)
    spatial = len(shape) - 2
    if isinstance(output_size, (list, tuple)):  # None keeps that dimension's size
        output_size = [s if o is None else o for o, s in zip(output_size, shape[2:])]
    out = int_list(output_size, spatial, "output_size")
    x = e.tensor(self)
    if list(shape[2:]) == out:
        return x
    if all(o == 1 for o in out):
        return e.op("GlobalAveragePool", [x])
    if all(s % o == 0 for s, o in zip(shape[2:], out)):
        kernel = [s // o for s, o in zip(shape[2:], out)]
        return e.op("AveragePool", [x], {"kernel_shape": kernel, "strides": kernel})
    if spatial != 2:
        raise Unsupported(f"adaptive average pooling of {shape} to {out}")
    dtype = e.dtype(x)
    across = e.op("MatMul", [x, e.constant(_pool_matrix(shape[3], out[1], dtype).T.copy(), "pool_w")])
    return e.op("MatMul", [e.constant(_pool_matrix(shape[2], out[0], dtype), "pool_h"), across])


@converts("aten::adaptive_max_pool1d", "aten::adaptive_max_pool2d", "aten::adaptive_max_pool3d")
def adaptive_max_pool(e: Emitter, self, output_size, **_):
    """GlobalMaxPool (output 1) or MaxPool (sizes divide); the indices output is not supported."""
    shape = e.shape(self)
    spatial = len(shape) - 2
    out = int_list(output_size, spatial, "output_size")
    if all(o == 1 for o in out):
        values = e.op("GlobalMaxPool", [e.tensor(self)])
    elif all(s % o == 0 for s, o in zip(shape[2:], out)):
        kernel = [s // o for s, o in zip(shape[2:], out)]
        values = e.op("MaxPool", [e.tensor(self)], {"kernel_shape": kernel, "strides": kernel})
    else:
        raise Unsupported(f"adaptive max pooling of {list(shape)} to {out}")
    return values, Poisoned("the indices of adaptive_max_pool are not supported")


# ----------------------------------------------------------------------------- normalization


@converts("aten::batch_norm")
def batch_norm(e: Emitter, input, weight, bias, running_mean, running_var, training, momentum, eps, **_):
    """BatchNormalization (inference form, with the running statistics)."""
    if running_mean is None or running_var is None:
        raise Unsupported("batch_norm without running statistics (a module in training mode)")
    channels = e.shape(input)[1]
    dtype = e.dtype(input)
    scale = e.tensor(weight) if weight is not None else e.constant(np.ones(channels, dtype), "bn_scale")
    shift = e.tensor(bias) if bias is not None else e.constant(np.zeros(channels, dtype), "bn_bias")
    return e.op("BatchNormalization", [e.tensor(input), scale, shift, e.tensor(running_mean), e.tensor(running_var)],
                {"epsilon": float(eps), "momentum": 1.0 - float(momentum or 0.1)})


@converts("aten::layer_norm")
def layer_norm(e: Emitter, input, normalized_shape, weight=None, bias=None, eps=1e-5, **_):
    """LayerNormalization."""
    dims = int_list(normalized_shape, name="normalized_shape")
    dtype = e.dtype(input)
    scale = e.tensor(weight) if weight is not None else e.constant(np.ones(dims, dtype), "ln_scale")
    inputs = [e.tensor(input), scale] + ([e.tensor(bias)] if bias is not None else [])
    return e.op("LayerNormalization", inputs, {"axis": -len(dims), "epsilon": float(eps)})


@converts("aten::group_norm")
def group_norm(e: Emitter, input, num_groups, weight=None, bias=None, eps=1e-5, **_):
    """Reshape to groups, InstanceNormalization, Reshape back, Mul and Add of the affine terms."""
    shape = list(e.shape(input))
    dtype = e.dtype(input)
    grouped = e.reshape(e.tensor(input), [shape[0], num_groups, int(np.prod(shape[1:], dtype=np.int64)) // num_groups])
    ones, zeros = np.ones(num_groups, dtype), np.zeros(num_groups, dtype)
    normalized = e.op("InstanceNormalization", [grouped, e.constant(ones, "gn_one"), e.constant(zeros, "gn_zero")],
                      {"epsilon": float(eps)})
    y = e.reshape(normalized, shape)
    affine_shape = [shape[1]] + [1] * (len(shape) - 2)
    if weight is not None:
        y = e.op("Mul", [y, e.reshape(e.tensor(weight), affine_shape)])
    if bias is not None:
        y = e.op("Add", [y, e.reshape(e.tensor(bias), affine_shape)])
    return y


@converts("aten::instance_norm")
def instance_norm(e: Emitter, input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, **_):
    """InstanceNormalization (BatchNormalization when it uses running statistics)."""
    if not use_input_stats:
        return batch_norm(e, input, weight, bias, running_mean, running_var, False, momentum, eps)
    channels = e.shape(input)[1]
    dtype = e.dtype(input)
    scale = e.tensor(weight) if weight is not None else e.constant(np.ones(channels, dtype), "in_scale")
    shift = e.tensor(bias) if bias is not None else e.constant(np.zeros(channels, dtype), "in_bias")
    return e.op("InstanceNormalization", [e.tensor(input), scale, shift], {"epsilon": float(eps)})


# ----------------------------------------------------------------------------- resampling


def _resize(e: Emitter, input, output_size, scales, mode: str, coordinates: str, **extra) -> TensorRef:
    shape = list(e.shape(input))
    spatial = len(shape) - 2
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates, **extra}
    factors = scales if isinstance(scales, (list, tuple)) else [scales] * spatial
    if len(factors) == spatial and all(f is not None for f in factors):
        # Given scales, torch maps output to input coordinates by 1/scale, as ONNX does with `scales`.
        scales_input = e.constant(np.asarray([1.0, 1.0] + [float(f) for f in factors], dtype=np.float32), "scales")
        return e.op("Resize", [e.tensor(input), None, scales_input], attrs)
    if output_size is None:
        raise Unsupported("resampling with neither output_size nor scale factors")
    size = int_list(output_size, spatial, "output_size")
    return e.op("Resize", [e.tensor(input), None, None, e.int64s(shape[:2] + size)], attrs)


def _scales_argument(scale_factors=None, scales=None, scales_h=None, scales_w=None, scales_d=None) -> Any:
    if scale_factors is not None:
        return scale_factors
    listed = [s for s in (scales_d, scales_h, scales_w, scales) if s is not None]
    return listed or None


@converts("aten::upsample_nearest1d", "aten::upsample_nearest2d", "aten::upsample_nearest3d")
def upsample_nearest(e: Emitter, input=None, output_size=None, scale_factors=None, self=None, **scales):
    """Resize (nearest, asymmetric, floor)."""
    factors = _scales_argument(scale_factors, **{k: v for k, v in scales.items() if k.startswith("scales")})
    return _resize(e, input if input is not None else self, output_size, factors, "nearest", "asymmetric",
                   nearest_mode="floor")


@converts("aten::_upsample_nearest_exact1d", "aten::_upsample_nearest_exact2d", "aten::_upsample_nearest_exact3d")
def upsample_nearest_exact(e: Emitter, input=None, output_size=None, scale_factors=None, self=None, **scales):
    """Resize (nearest, half_pixel, round_prefer_ceil)."""
    factors = _scales_argument(scale_factors, **{k: v for k, v in scales.items() if k.startswith("scales")})
    return _resize(e, input if input is not None else self, output_size, factors, "nearest", "half_pixel",
                   nearest_mode="round_prefer_ceil")


@converts("aten::upsample_linear1d", "aten::upsample_bilinear2d", "aten::upsample_trilinear3d",
          "aten::upsample_bicubic2d")
def upsample_linear(e: Emitter, input=None, output_size=None, align_corners=False, scale_factors=None, self=None,
                    **scales):
    """Resize (linear or cubic; align_corners or pytorch_half_pixel)."""
    factors = _scales_argument(scale_factors, **{k: v for k, v in scales.items() if k.startswith("scales")})
    cubic = "bicubic" in e.source_op
    extra = {"cubic_coeff_a": -0.75} if cubic else {}
    coordinates = "align_corners" if align_corners else "pytorch_half_pixel"
    return _resize(e, input if input is not None else self, output_size, factors, "cubic" if cubic else "linear",
                   coordinates, **extra)


@converts("aten::pixel_shuffle")
def pixel_shuffle(e: Emitter, self, upscale_factor, **_):
    """Reshape, Transpose, Reshape (DepthToSpace CRD order)."""
    n, c, h, w = e.shape(self)
    r = upscale_factor
    x = e.reshape(e.tensor(self), [n, c // (r * r), r, r, h, w])
    x = e.op("Transpose", [x], {"perm": [0, 1, 4, 2, 5, 3]})
    return e.reshape(x, [n, c // (r * r), h * r, w * r])


@converts("aten::pixel_unshuffle")
def pixel_unshuffle(e: Emitter, self, downscale_factor, **_):
    """Reshape, Transpose, Reshape (the inverse of pixel_shuffle)."""
    n, c, h, w = e.shape(self)
    r = downscale_factor
    x = e.reshape(e.tensor(self), [n, c, h // r, r, w // r, r])
    x = e.op("Transpose", [x], {"perm": [0, 1, 3, 5, 2, 4]})
    return e.reshape(x, [n, c * r * r, h // r, w // r])


# ----------------------------------------------------------------------------- unfold, attention, recurrence


@converts("aten::im2col")
def im2col(e: Emitter, self, kernel_size, dilation, padding, stride, **_):
    """Conv with a constant one-hot weight (one output channel per input channel and kernel
    position, grouped by channel), then Reshape to (N, C*kh*kw, L): nn.Unfold."""
    x = e.tensor(self)
    n, c, _, _ = e.shape(x)
    kh, kw = int_list(kernel_size, 2, "kernel_size")
    weight = np.zeros((c * kh * kw, 1, kh, kw), dtype=e.dtype(x))
    for channel in range(c):
        for i in range(kh):
            for j in range(kw):
                weight[(channel * kh + i) * kw + j, 0, i, j] = 1
    pads = int_list(padding, 2, "padding")
    patches = e.op("Conv", [x, e.constant(weight, "unfold_weight")],
                   {"kernel_shape": [kh, kw], "strides": int_list(stride, 2, "stride"),
                    "dilations": int_list(dilation, 2, "dilation"), "pads": pads * 2, "group": c})
    _, channels, oh, ow = e.shape(patches)
    return e.reshape(patches, [n, channels, oh * ow])


@converts("aten::_native_multi_head_attention")
def native_multi_head_attention(e: Emitter, query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
                                proj_weight, proj_bias, mask=None, need_weights=True, average_attn_weights=True,
                                mask_type=None, **_):
    """nn.MultiheadAttention's fast path (batch first): the three projections (MatMul + Add),
    per-head MatMul, scale, mask, Softmax, MatMul, output projection."""
    if not all(isinstance(w, torch.Tensor) for w in (qkv_weight, qkv_bias)):
        raise Unsupported("projection weights computed at run time")
    heads, width = int(num_head), int(embed_dim)
    head_dim = width // heads
    projected = []
    for i, source in enumerate((query, key, value)):
        w = qkv_weight[i * width:(i + 1) * width]
        b = qkv_bias[i * width:(i + 1) * width]
        y = linear(e, source, w.contiguous(), b.contiguous())
        batch, length, _ = e.shape(y)
        y = e.reshape(y, [batch, length, heads, head_dim])
        projected.append(e.op("Transpose", [y], {"perm": [0, 2, 1, 3]}))
    q, k, v = projected
    dtype = e.dtype(q)
    scores = e.op("MatMul", [q, e.op("Transpose", [k], {"perm": [0, 1, 3, 2]})])
    scores = e.op("Mul", [scores, e.tensor(1.0 / math.sqrt(head_dim), dtype)])
    if mask is not None:
        batch, _, length, source_length = e.shape(scores)
        if mask_type == 1:  # key padding: (batch, source length)
            mask = e.reshape(e.tensor(mask), [batch, 1, 1, source_length])
        if e.dtype(mask) == BOOL:
            mask = e.op("Where", [e.tensor(mask), e.tensor(float("-inf"), dtype), e.tensor(0.0, dtype)])
        scores = e.op("Add", [scores, e.tensor(mask, dtype)])
    weights = e.op("Softmax", [scores], {"axis": -1})
    attended = e.op("Transpose", [e.op("MatMul", [weights, v])], {"perm": [0, 2, 1, 3]})
    batch, length, _, _ = e.shape(attended)
    output = linear(e, e.reshape(attended, [batch, length, width]), proj_weight, proj_bias)
    if not need_weights:
        return output, torch.empty(0, dtype=torch.float32)
    if average_attn_weights:
        weights = e.op("ReduceMean", [weights], {"axes": [1], "keepdims": 0})
    return output, weights


@converts("aten::lstm")
def lstm(e: Emitter, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first=False, **_):
    """ONNX LSTM per layer (gates reordered from torch's i, f, g, o to ONNX's i, o, f, c);
    outputs concatenated over directions; batch_first by Transposes."""
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in params):
        raise Unsupported("LSTM weights computed at run time")
    directions = 2 if bidirectional else 1
    per_direction = 4 if has_biases else 2
    if len(params) != num_layers * directions * per_direction:
        raise Unsupported("LSTM with projections (proj_size) is not supported")
    x = e.tensor(input)
    if batch_first:
        x = e.op("Transpose", [x], {"perm": [1, 0, 2]})
    h0, c0 = (e.tensor(h) for h in hx)
    hidden = int(params[1].shape[1])
    order = np.concatenate([np.arange(0, hidden), np.arange(3 * hidden, 4 * hidden),   # i, o
                            np.arange(hidden, 2 * hidden), np.arange(2 * hidden, 3 * hidden)])  # f, c(g)
    final_h, final_c = [], []
    for layer in range(num_layers):
        weights = [params[(layer * directions + d) * per_direction:(layer * directions + d + 1) * per_direction]
                   for d in range(directions)]
        w = np.stack([p[0].numpy()[order] for p in weights])
        r = np.stack([p[1].numpy()[order] for p in weights])
        inputs = [x, e.constant(w, "lstm_W"), e.constant(r, "lstm_R")]
        if has_biases:
            inputs.append(e.constant(np.stack([np.concatenate([p[2].numpy()[order], p[3].numpy()[order]])
                                               for p in weights]), "lstm_B"))
        else:
            inputs.append(None)
        start, end = layer * directions, (layer + 1) * directions
        inputs += [None, _rows(e, h0, start, end), _rows(e, c0, start, end)]
        y, y_h, y_c = e.op("LSTM", inputs, {"hidden_size": hidden,
                                             "direction": "bidirectional" if bidirectional else "forward"}, outputs=3)
        seq, _, batch, _ = e.shape(y)
        x = e.reshape(e.op("Transpose", [y], {"perm": [0, 2, 1, 3]}), [seq, batch, directions * hidden])
        final_h.append(y_h)
        final_c.append(y_c)
    if batch_first:
        x = e.op("Transpose", [x], {"perm": [1, 0, 2]})
    concat = (lambda parts: parts[0] if len(parts) == 1 else e.op("Concat", parts, {"axis": 0}))
    return x, concat(final_h), concat(final_c)


def _rows(e: Emitter, tensor: TensorRef, start: int, end: int) -> TensorRef:
    if (start, end) == (0, e.shape(tensor)[0]):
        return tensor
    return e.op("Slice", [tensor, e.int64s([start]), e.int64s([end]), e.int64s([0])])
