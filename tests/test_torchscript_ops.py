"""Each aten converter on a tiny traced function: compiled, run, and compared with eager torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rblnc

# Tracing and scripting are what these tests exercise; torch's deprecation notices and the
# tracer's warnings about Python values are expected here.
pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

RNG = np.random.default_rng(0)


def floats(*shape, low=-2.0, high=2.0):
    return RNG.uniform(low, high, size=shape).astype(np.float32)


def ints(*shape, high=10):
    return RNG.integers(0, high, size=shape, dtype=np.int64)


class Fn(nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn = fn
        self.layers = nn.ModuleList(modules)

    def forward(self, *xs):
        return self.fn(*xs, *self.layers) if self.layers else self.fn(*xs)


X = floats(2, 3, 8, 8)
V = floats(2, 5, 6)
P = floats(2, 3, 8, 8, low=0.1, high=3.0)  # positive, for log/sqrt/pow

# id -> (function of the inputs [and modules], inputs, modules)
CASES = {
    # elementwise arithmetic, with Python scalars and type promotion
    "add_alpha": (lambda x, y: torch.add(x, y, alpha=0.5), [X, floats(3, 1, 1)], []),
    "sub_scalar": (lambda x: x - 1.5, [X], []),
    "rsub": (lambda x: 1 - x, [X], []),
    "mul_broadcast": (lambda x, y: x * y, [X, floats(8)], []),
    "div": (lambda x, y: x / y, [X, P], []),
    "div_trunc": (lambda x: torch.div(x, 0.7, rounding_mode="trunc"), [X], []),
    "div_floor": (lambda x: torch.div(x, 0.7, rounding_mode="floor"), [X], []),
    "int_floor_divide": (lambda a: a // 3, [ints(4, 5)], []),
    "int_true_divide": (lambda a: a / 4, [ints(4, 5)], []),
    "remainder": (lambda x: torch.remainder(x, 0.75), [X], []),
    "int_remainder": (lambda a: a % 3, [ints(4, 5)], []),
    "fmod": (lambda x: torch.fmod(x, 0.75), [X], []),
    "pow": (lambda x: x ** 2 + x ** 0.5, [P], []),
    "maximum_minimum": (lambda x, y: torch.maximum(x, y) - torch.minimum(x, y), [X, X[:, :, ::-1].copy()], []),
    "compare_where": (lambda x: torch.where(x > 0.5, x, torch.where(x <= -0.5, -x, x * 0)), [X], []),
    "eq_ne": (lambda x: (x.round() == 1).float() + (x.round() != 0).float(), [X], []),
    "logical": (lambda x: ((x > 0) & (x < 1) | ~(x > -1) ^ (x > 1.5)).float(), [X], []),
    "masked_fill": (lambda x: x.masked_fill(x > 1, -3.0), [X], []),
    "clamp": (lambda x: x.clamp(-0.5, 0.7) + x.clamp(min=0.2) + x.clamp(max=-0.1), [X], []),
    "clamp_tensor_bounds": (lambda x, lo: torch.clamp(x, min=lo), [X, floats(8)], []),
    "int_arithmetic": (lambda a: a * 3 + 2 - a.max(), [ints(3, 4)], []),
    "int_to_float": (lambda a: a.float() * 0.5 + a.to(torch.float32).sum(), [ints(3, 4)], []),
    "sum_of_ints_is_int64": (lambda a: a.to(torch.int32).sum(1), [ints(3, 4)], []),
    # unary
    **{f"unary_{n}": (getattr(torch, n), [X], []) for n in
       ["relu", "sigmoid", "tanh", "exp", "abs", "neg", "floor", "ceil", "round", "sin", "cos", "erf", "sign",
        "square", "expm1"]},
    **{f"unary_{n}": (getattr(torch, n), [P], []) for n in ["log", "sqrt", "rsqrt", "reciprocal", "log1p", "log2"]},
    # activations
    "relu6_hardtanh": (lambda x: F.relu6(x) + F.hardtanh(x, -0.3, 0.4), [X], []),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), [X], []),
    "elu_selu_celu": (lambda x: F.elu(x, 0.7) + F.selu(x) + F.celu(x, 1.3), [X], []),
    "softplus": (lambda x: F.softplus(x) + F.softplus(x, beta=2.0), [X], []),
    "log_sigmoid": (lambda x: F.logsigmoid(x), [X], []),
    "threshold": (lambda x: F.threshold(x, 0.3, -1.0), [X], []),
    "prelu": (lambda x, m: m(x), [X], [nn.PReLU(3)]),
    "gelu": (lambda x: F.gelu(x) + F.gelu(x, approximate="tanh"), [X], []),
    "silu_mish": (lambda x: F.silu(x) + F.mish(x), [X], []),
    "hardswish_hardsigmoid": (lambda x: F.hardswish(x) + F.hardsigmoid(x), [X], []),
    "inplace_relu": (lambda x, m: m(x * 2) + 1, [X], [nn.ReLU(inplace=True)]),
    "inplace_add": (lambda x: x.clone().add_(1.0).mul_(2.0), [X], []),
    # shapes
    "view_reshape_flatten": (lambda x: x.view(2, 3, 64).reshape(6, -1).flatten() + 0, [X], []),
    "flatten_unflatten": (lambda x: x.flatten(1, 2).unflatten(1, (6, 4)) * 1, [X], []),
    "squeeze_unsqueeze": (lambda x: x[:, :1].squeeze(1).unsqueeze(-1) * 2, [X], []),
    "permute_transpose": (lambda x: x.permute(0, 2, 3, 1).transpose(1, 2) * 1, [X], []),
    "t_movedim": (lambda a, x: a.t() @ a + x.movedim(1, -1).sum(), [floats(3, 4), X], []),
    "expand": (lambda x: x[:, :1].expand(-1, 3, -1, -1) + x.mean((1,), keepdim=True).expand_as(x), [X], []),
    "repeat": (lambda x: x.repeat(2, 1, 1, 2), [V], []),
    "cat_stack": (lambda x, y: torch.cat([torch.stack([x, y], 1).flatten(1, 2), x], 1), [V, V[::-1].copy()], []),
    "chunk_split": (lambda x: [c * (i + 1) for i, c in enumerate(x.chunk(3, 2))][2]
                    + x.split([2, 4], 2)[0].sum(2, keepdim=True) + sum(x.unbind(1))[:, None, :2], [V], []),
    "chunk_uneven": (lambda x: torch.cat(x.chunk(4, 1)[::-1], 1), [floats(2, 7)], []),
    "select_narrow_slice": (lambda x: x[:, 1] + x.narrow(1, 0, 1)[:, 0] + x[:, -1, 1:7:2].sum(), [X], []),
    "index_tensor": (lambda x, i: x[:, i] + x.index_select(2, i[:3]).sum(), [X, np.array([2, 0, 1, 1])], []),
    # CLIP's text pooling: one row per batch item at a position computed at run time
    "index_rows_cols": (lambda v, ids: v[torch.arange(v.shape[0]), ids.argmax(-1)], [V, ints(2, 5)], []),
    "index_adjacent_inner": (lambda x: x[:, torch.tensor([[0, 2], [1, -1]]), torch.tensor([1, 7])], [X], []),
    "gather": (lambda x, i: torch.gather(x, 1, i), [floats(3, 5), ints(3, 4, high=5)], []),
    "flip_roll": (lambda x: x.flip(-1) + torch.roll(x, 2, 1) + torch.roll(x, (1, -1), (2, 3)), [X], []),
    "pad": (lambda x: F.pad(x, (1, 2, 0, 1)) + F.pad(x, (1, 2, 0, 1), value=3.0)
            + F.pad(x, (1, 2, 0, 1), mode="reflect") + F.pad(x, (1, 2, 0, 1), mode="replicate"), [X], []),
    "tril_triu": (lambda x: torch.tril(x, -1) + torch.triu(x, 1), [floats(5, 5)], []),
    "like_constants": (lambda x: torch.zeros_like(x) + torch.ones_like(x) * 2 + torch.full_like(x, 3.0)
                       + x.new_ones(x.shape[-1]) + x, [X], []),
    # reductions
    "sum_mean_prod": (lambda x: x.sum((1, 3)) + x.mean(-1).mean(1) * x.prod(1, keepdim=True)[:, 0, 0],
                      [floats(2, 3, 4, 4, low=0.5, high=1.5)], []),
    "amax_amin": (lambda x: x.amax((2, 3)) - x.amin(1).mean((1, 2))[:, None], [X], []),
    "max_min_dim": (lambda x: x.max(1)[0] + x.max(1)[1].float() + x.min(-1, keepdim=True)[0].mean(1)
                    + x.max() + x.min(), [V], []),
    "argmax_argmin": (lambda x: x.argmax(-1) * 10 + x.argmin(1)[:, :1], [V], []),
    "argmax_flat": (lambda x: x.argmax(), [V], []),
    "var_std": (lambda x: x.var(1) + x.std((1, 2), keepdim=True)[:, 0] + x.var(-1, unbiased=False)[:, :1], [V], []),
    "norm_logsumexp": (lambda x: x.norm(dim=1) + torch.linalg.vector_norm(x, 1, -1)[:, :1]
                       + torch.logsumexp(x, 2)[:, :1], [V], []),
    "any_all": (lambda x: (x > 1).any(1).float().sum(-1) + (x > -1.9).all(-1).float().sum(-1), [V], []),
    "cumsum": (lambda x: torch.cumsum(x, 1), [V], []),
    "topk": (lambda x: x.topk(3, -1)[0] + x.topk(3, 1, largest=False)[1].float().sum(), [V], []),
    "softmax": (lambda x: F.softmax(x, 1) + F.log_softmax(x, -1), [V], []),
    # linear algebra
    "linear_3d": (lambda x, m: m(x), [V], [nn.Linear(6, 4)]),
    "linear_no_bias_2d": (lambda x, m: m(x), [floats(3, 6)], [nn.Linear(6, 4, bias=False)]),
    "matmul_bmm": (lambda a, b: torch.matmul(a, b) + torch.bmm(a, b), [floats(2, 3, 4), floats(2, 4, 5)], []),
    "addmm_baddbmm": (lambda c, a, b: torch.addmm(c, a, b, beta=0.5, alpha=2.0)
                      + torch.baddbmm(c[None], a[None], b[None], alpha=0.3)[0],
                      [floats(3, 5), floats(3, 4), floats(4, 5)], []),
    "einsum": (lambda a, b: torch.einsum("bij,bjk->bik", a, b), [floats(2, 3, 4), floats(2, 4, 5)], []),
    "sdpa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
             + F.scaled_dot_product_attention(q, k, v, is_causal=True), [floats(1, 2, 5, 8)] * 3, []),
    "sdpa_bool_mask": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                       [floats(1, 2, 5, 8), floats(1, 2, 5, 8), floats(1, 2, 5, 8),
                        np.tril(np.ones((5, 5), dtype=bool))], []),
    "embedding": (lambda i, m: m(i), [ints(2, 7, high=20)], [nn.Embedding(20, 6)]),
    # convolution and pooling
    "conv1d": (lambda x, m: m(x), [V], [nn.Conv1d(5, 4, 3, padding=1)]),
    "conv2d_same_dilated_grouped": (lambda x, m: m(x), [X], [nn.Conv2d(3, 6, 3, padding="same", dilation=2, groups=3)]),
    "conv_transpose2d": (lambda x, m: m(x), [X], [nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)]),
    "conv3d": (lambda x, m: m(x), [floats(1, 2, 4, 6, 6)], [nn.Conv3d(2, 3, 3)]),
    "max_pool_ceil": (lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True) * 1, [X], []),
    "max_pool1d_padded": (lambda x: F.max_pool1d(x, 3, 1, 1), [V], []),
    "avg_pool": (lambda x: F.avg_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [X], []),
    "adaptive_avg_pool": (lambda x: F.adaptive_avg_pool2d(x, 3).sum((2, 3))
                          + F.adaptive_avg_pool2d(x, (4, 2)).sum((2, 3)),
                          [X], []),
    "adaptive_avg_pool_keep_dim": (lambda x: F.adaptive_avg_pool2d(x, (None, 3)), [X], []),
    "upsample_size_and_scale": (lambda x: F.interpolate(x, scale_factor=2.5)
                                + torch.ops.aten.upsample_nearest2d(x, [20, 20], 2.5, 2.5), [X], []),
    "adaptive_max_pool": (lambda x: F.adaptive_max_pool2d(x, 1)
                          + F.adaptive_max_pool2d(x, 2).amax((2, 3), keepdim=True), [X], []),
    "batch_norm_alone": (lambda x, m: m(x), [X], [nn.BatchNorm2d(3)]),
    "layer_norm_no_affine": (lambda x: F.layer_norm(x, (6,)) + F.layer_norm(x, (5, 6), eps=1e-3), [V], []),
    "group_norm": (lambda x, m: m(x), [floats(2, 4, 5, 5)], [nn.GroupNorm(2, 4)]),
    "instance_norm": (lambda x, m: m(x), [X], [nn.InstanceNorm2d(3, affine=True)]),
    # resampling
    "nearest_scale_and_size": (lambda x: F.interpolate(x, scale_factor=2)[..., :10, :10]
                               + F.interpolate(x, size=(10, 10)), [X], []),
    "nearest_exact": (lambda x: F.interpolate(x, size=(12, 5), mode="nearest-exact"), [X], []),
    "bilinear": (lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear")
                 + F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=True), [X], []),
    "bicubic": (lambda x: F.interpolate(x, size=(11, 13), mode="bicubic"), [X], []),
    "pixel_shuffle": (lambda x: F.pixel_unshuffle(F.pixel_shuffle(x, 2) * 2, 2), [floats(1, 8, 3, 3)], []),
    # arithmetic, unfold, repeat, attention, recurrence
    "addcmul": (lambda x, y: torch.addcmul(x, y, x, value=0.5) + torch.addcmul(x, y, y), [X, floats(8)], []),
    "unfold": (lambda x, m: m(x) + F.unfold(x, 2, stride=2).sum(), [X], [nn.Unfold(3, dilation=2, padding=1, stride=2)]),
    "repeat_interleave": (lambda x: x.repeat_interleave(2, dim=1).reshape(2, 3, 2, 8, 8).sum(2) + x.repeat_interleave(3).reshape(2, 3, 8, 24)[..., :8]
                          + x.repeat_interleave(torch.tensor([1, 3, 2, 1, 1, 1, 1, 2]), dim=3)[..., :8], [X], []),
    "mha_fast_path": (lambda x, m: m(x, x, x, need_weights=False)[0], [V[..., :4]],
                      [nn.MultiheadAttention(4, 2, batch_first=True)]),
    "mha_weights_padding_mask": (lambda x, m: (lambda o: o[0].sum(-1) + o[1].sum(-1) + o[1][..., 0])(
        m(x, x, x, key_padding_mask=torch.tensor([[False] * 4 + [True], [False] * 5]))), [V[..., :4]],
        [nn.MultiheadAttention(4, 2, batch_first=True)]),
    "lstm": (lambda x, m: (lambda o: torch.cat([o[0].flatten(1), o[1][0].transpose(0, 1).flatten(1),
                                                 o[1][1].transpose(0, 1).flatten(1)], 1))(m(x)), [V],
             [nn.LSTM(6, 4, num_layers=2, batch_first=True, bidirectional=True)]),
    "lstm_initial_state": (lambda x, h, c, m: m(x, (h, c))[0], [V.transpose(1, 0, 2).copy(), floats(1, 2, 3), floats(1, 2, 3)],
                           [nn.LSTM(6, 3)]),
}


def _with_weights(modules: list[nn.Module]) -> list[nn.Module]:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            for name, buffer in module.named_buffers():
                if name == "running_var":
                    buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
                elif name == "running_mean":
                    buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.3)
    return modules


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_torch(case):
    fn, inputs, modules = CASES[case]
    model = Fn(fn, *_with_weights(modules)).eval()
    with torch.no_grad():
        expected = model(*[torch.from_numpy(x) for x in inputs]).numpy()
    info = [(f"x{i}", list(x.shape), x.dtype) for i, x in enumerate(inputs)]
    compiled = rblnc.compile_from_torch(model, info, dtype="fp32")
    actual = compiled.create_runtime().run(*inputs)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
