"""Converters of elementwise ops, activations and reductions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...dtypes import is_float
from .emit import (
    BOOL, FLOAT32, INT64, DataDependent, Emitter, TensorRef, Unsupported, normalize_dim, numpy_dtype,
)
from .registry import Converter, converts, int_list, is_tensor


# ----------------------------------------------------------------------------- pass-through


@converts("aten::contiguous", "aten::clone", "aten::detach", "aten::alias", "aten::lift_fresh",
          "aten::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::feature_alpha_dropout",
          "aten::positive", "aten::resolve_conj", "aten::resolve_neg", "prim::unchecked_cast")
def identity(e: Emitter, **args):
    """No op: the value passes through (dropout is the identity at inference)."""
    return next(iter(args.values()))  # the first argument, whatever the schema calls it


# ----------------------------------------------------------------------------- elementwise


def binary(e: Emitter, op_type: str, a: Any, b: Any, dtype: np.dtype | None = None) -> TensorRef:
    dtype = dtype or e.result_dtype(a, b)
    return e.op(op_type, [e.tensor(a, dtype), e.tensor(b, dtype)])


def scaled(e: Emitter, value: Any, alpha: Any) -> Any:
    if alpha in (None, 1):
        return value
    if not is_tensor(value):
        return value * alpha
    return binary(e, "Mul", value, alpha)


@converts("aten::add")
def add(e: Emitter, self=None, other=None, alpha=1, a=None, b=None, **_):
    """Add (other scaled by alpha first); list + list concatenates."""
    if isinstance(a, list):
        return a + list(b)
    return binary(e, "Add", self, scaled(e, other, alpha))


@converts("aten::sub")
def sub(e: Emitter, self, other, alpha=1, **_):
    """Sub (other scaled by alpha first)."""
    return binary(e, "Sub", self, scaled(e, other, alpha))


@converts("aten::rsub")
def rsub(e: Emitter, self, other, alpha=1, **_):
    """Sub with the operands swapped: other - alpha * self."""
    return binary(e, "Sub", other, scaled(e, self, alpha))


@converts("aten::mul")
def mul(e: Emitter, self, other, **_):
    """Mul."""
    return binary(e, "Mul", self, other)


def _float_result(e: Emitter, *values) -> np.dtype:
    dtype = e.result_dtype(*values)
    return dtype if is_float(dtype) else FLOAT32


@converts("aten::div", "aten::true_divide")
def div(e: Emitter, self, other, rounding_mode=None, **_):
    """Div; rounding_mode 'trunc' and 'floor' add Floor (and Sign/Abs for trunc)."""
    if rounding_mode is None:
        return binary(e, "Div", self, other, _float_result(e, self, other))
    if rounding_mode == "floor":
        return floor_divide(e, self, other)
    if rounding_mode != "trunc":
        raise Unsupported(f"rounding_mode {rounding_mode!r}")
    dtype = e.result_dtype(self, other)
    if not is_float(dtype):  # ONNX integer Div truncates, as C does
        return binary(e, "Div", self, other, dtype)
    quotient = binary(e, "Div", self, other, dtype)
    return e.op("Mul", [e.op("Sign", [quotient]), e.op("Floor", [e.op("Abs", [quotient])])])


@converts("aten::floor_divide")
def floor_divide(e: Emitter, self, other, **_):
    """Div + Floor (computed in float32 for integers, then cast back)."""
    dtype = e.result_dtype(self, other)
    work = dtype if is_float(dtype) else FLOAT32
    result = e.op("Floor", [binary(e, "Div", self, other, work)])
    return e.cast(result, dtype)


@converts("aten::remainder")
def remainder(e: Emitter, self, other, **_):
    """Python's modulo (sign of the divisor): Mod for integers, a - floor(a / b) * b for floats."""
    dtype = e.result_dtype(self, other)
    if not is_float(dtype):
        return binary(e, "Mod", self, other, dtype)
    a, b = e.tensor(self, dtype), e.tensor(other, dtype)
    return e.op("Sub", [a, e.op("Mul", [e.op("Floor", [e.op("Div", [a, b])]), b])])


@converts("aten::fmod")
def fmod(e: Emitter, self, other, **_):
    """Mod with fmod=1 (sign of the dividend)."""
    dtype = e.result_dtype(self, other)
    return e.op("Mod", [e.tensor(self, dtype), e.tensor(other, dtype)], {"fmod": 1})


@converts("aten::pow")
def pow_(e: Emitter, self, exponent, **_):
    """Pow (x ** 2 becomes Mul)."""
    if isinstance(self, TensorRef) and isinstance(exponent, (int, float)) and exponent in (1, 2):
        return self if exponent == 1 else e.op("Mul", [self, self])
    return binary(e, "Pow", self, exponent)


@converts("aten::square")
def square(e: Emitter, self, **_):
    """Mul of the input by itself."""
    return e.op("Mul", [self, self])


@converts("aten::maximum", "aten::fmax")
def maximum(e: Emitter, self, other, **_):
    """Max."""
    return binary(e, "Max", self, other)


@converts("aten::minimum", "aten::fmin")
def minimum(e: Emitter, self, other, **_):
    """Min."""
    return binary(e, "Min", self, other)


def _comparison(op_type: str, negate: bool = False) -> Converter:
    def convert(e: Emitter, self, other, **_):
        result = binary(e, op_type, self, other)
        return e.op("Not", [result]) if negate else result

    convert.__doc__ = f"{op_type}{' + Not' if negate else ''} (operands promoted to a common type)."
    return convert


for _kind, _op, _neg in [("eq", "Equal", False), ("ne", "Equal", True), ("lt", "Less", False),
                         ("le", "LessOrEqual", False), ("gt", "Greater", False),
                         ("ge", "GreaterOrEqual", False)]:
    converts(f"aten::{_kind}")(_comparison(_op, _neg))


def _logical(op_type: str) -> Converter:
    def convert(e: Emitter, self, other, **_):
        return e.op(op_type, [e.tensor(self, BOOL), e.tensor(other, BOOL)])

    convert.__doc__ = f"{op_type} (on booleans)."
    return convert


converts("aten::logical_and")(_logical("And"))
converts("aten::logical_or")(_logical("Or"))
converts("aten::logical_xor")(_logical("Xor"))


def _bitwise(op_type: str) -> Converter:
    def convert(e: Emitter, self, other, **_):
        if e.result_dtype(self, other) != BOOL:
            raise Unsupported("bitwise operations on integers (ONNX has them only from opset 18)")
        return e.op(op_type, [e.tensor(self, BOOL), e.tensor(other, BOOL)])

    convert.__doc__ = f"{op_type} (boolean tensors only)."
    return convert


converts("aten::bitwise_and", "aten::__and__")(_bitwise("And"))
converts("aten::bitwise_or", "aten::__or__")(_bitwise("Or"))
converts("aten::bitwise_xor", "aten::__xor__")(_bitwise("Xor"))


@converts("aten::logical_not", "aten::bitwise_not")
def logical_not(e: Emitter, self, **_):
    """Not (on booleans)."""
    if e.dtype(self) != BOOL and not isinstance(self, torch.Tensor):
        raise Unsupported("bitwise not of an integer tensor")
    return e.op("Not", [e.tensor(self, BOOL)])


@converts("aten::where")
def where(e: Emitter, condition, self=None, other=None, **_):
    """Where (operands promoted to a common type)."""
    if self is None:
        raise DataDependent("where(condition) returns the indices of true elements (a data-dependent shape)")
    dtype = e.result_dtype(self, other)
    return e.op("Where", [e.tensor(condition, BOOL), e.tensor(self, dtype), e.tensor(other, dtype)])


@converts("aten::masked_fill")
def masked_fill(e: Emitter, self, mask, value, **_):
    """Where(mask, value, self)."""
    dtype = e.dtype(self)
    return e.op("Where", [e.tensor(mask, BOOL), e.tensor(value, dtype), e.tensor(self)])


def _unary(op_type: str, float_only: bool = True, doc: str = "") -> Converter:
    def convert(e: Emitter, self, **_):
        x = e.tensor(self)
        if float_only and not is_float(e.dtype(x)):
            x = e.cast(x, FLOAT32)
        return e.op(op_type, [x])

    convert.__doc__ = doc or f"{op_type}."
    return convert


for _kind, _op, _float_only in [
    ("relu", "Relu", False), ("sigmoid", "Sigmoid", True), ("tanh", "Tanh", True), ("exp", "Exp", True),
    ("log", "Log", True), ("sqrt", "Sqrt", True), ("abs", "Abs", False), ("neg", "Neg", False),
    ("reciprocal", "Reciprocal", True), ("floor", "Floor", False), ("ceil", "Ceil", False),
    ("sin", "Sin", True), ("cos", "Cos", True), ("tan", "Tan", True), ("asin", "Asin", True),
    ("acos", "Acos", True), ("atan", "Atan", True), ("sinh", "Sinh", True), ("cosh", "Cosh", True),
    ("erf", "Erf", True), ("sign", "Sign", False),
]:
    converts(f"aten::{_kind}")(_unary(_op, _float_only))


@converts("aten::round")
def round_(e: Emitter, self, decimals=0, **_):
    """Round (half to even, as torch); decimals=0 only."""
    if decimals:
        raise Unsupported(f"round with decimals={decimals}")
    return e.op("Round", [self]) if is_float(e.dtype(self)) else self


@converts("aten::rsqrt")
def rsqrt(e: Emitter, self, **_):
    """Reciprocal of Sqrt."""
    return e.op("Reciprocal", [_unary("Sqrt")(e, self)])


@converts("aten::log1p")
def log1p(e: Emitter, self, **_):
    """Log of (x + 1)."""
    x = e.cast(e.tensor(self), _float_result(e, self))
    return e.op("Log", [e.op("Add", [x, e.tensor(1.0, e.dtype(x))])])


@converts("aten::expm1")
def expm1(e: Emitter, self, **_):
    """Exp - 1."""
    x = e.cast(e.tensor(self), _float_result(e, self))
    return e.op("Sub", [e.op("Exp", [x]), e.tensor(1.0, e.dtype(x))])


@converts("aten::log2", "aten::log10")
def log_base(e: Emitter, self, **_):
    """Log divided by log(base)."""
    x = e.cast(e.tensor(self), _float_result(e, self))
    base = 2.0 if e.source_op.endswith("log2") or e.source_op.endswith("log2_") else 10.0
    return e.op("Div", [e.op("Log", [x]), e.tensor(math.log(base), e.dtype(x))])


@converts("aten::silu")
def silu(e: Emitter, self, **_):
    """x * Sigmoid(x) (the SiLU pattern the passes fuse)."""
    return e.op("Mul", [self, e.op("Sigmoid", [self])])


@converts("aten::mish")
def mish(e: Emitter, self, **_):
    """x * Tanh(Softplus(x))."""
    return e.op("Mul", [self, e.op("Tanh", [e.op("Softplus", [self])])])


@converts("aten::hardswish")
def hardswish(e: Emitter, self, **_):
    """HardSwish."""
    return e.op("HardSwish", [self])


@converts("aten::hardsigmoid")
def hardsigmoid(e: Emitter, self, **_):
    """HardSigmoid(alpha=1/6, beta=0.5)."""
    return e.op("HardSigmoid", [self], {"alpha": 1.0 / 6.0, "beta": 0.5})


@converts("aten::gelu")
def gelu(e: Emitter, self, approximate="none", **_):
    """x * 0.5 * (1 + Erf(x / sqrt 2)), or the tanh form (Gelu itself is opset 20)."""
    dtype = e.dtype(self)

    def c(value: float) -> TensorRef:
        return e.tensor(value, dtype)

    if approximate == "none":
        erf = e.op("Erf", [e.op("Div", [self, c(math.sqrt(2.0))])])
        return e.op("Mul", [e.op("Mul", [self, e.op("Add", [erf, c(1.0)])]), c(0.5)])
    if approximate != "tanh":
        raise Unsupported(f"approximate={approximate!r}")
    cube = e.op("Mul", [e.op("Mul", [self, self]), self])
    inner = e.op("Mul", [e.op("Add", [self, e.op("Mul", [cube, c(0.044715)])]), c(math.sqrt(2.0 / math.pi))])
    return e.op("Mul", [e.op("Mul", [self, e.op("Add", [e.op("Tanh", [inner]), c(1.0)])]), c(0.5)])


def _clip(e: Emitter, x: Any, low: Any, high: Any) -> TensorRef:
    dtype = e.dtype(x)
    bounds = [None if v is None else e.tensor(v, dtype) for v in (low, high)]
    if any(b is not None and b.name not in e.graph.constants for b in bounds):
        result = e.tensor(x)
        if bounds[0] is not None:
            result = e.op("Max", [result, bounds[0]])
        if bounds[1] is not None:
            result = e.op("Min", [result, bounds[1]])
        return result
    return e.op("Clip", [e.tensor(x), *bounds])


@converts("aten::hardtanh")
def hardtanh(e: Emitter, self, min_val=-1.0, max_val=1.0, **_):
    """Clip(min_val, max_val) (ReLU6 is hardtanh(0, 6))."""
    return _clip(e, self, min_val, max_val)


@converts("aten::relu6")
def relu6(e: Emitter, self, **_):
    """Clip(0, 6)."""
    return _clip(e, self, 0.0, 6.0)


@converts("aten::clamp", "aten::clip")
def clamp(e: Emitter, self, min=None, max=None, **_):
    """Clip (Max/Min when a bound is a computed tensor)."""
    return _clip(e, self, min, max)


@converts("aten::clamp_min")
def clamp_min(e: Emitter, self, min, **_):
    """Clip with a lower bound."""
    return _clip(e, self, min, None)


@converts("aten::clamp_max")
def clamp_max(e: Emitter, self, max, **_):
    """Clip with an upper bound."""
    return _clip(e, self, None, max)


@converts("aten::leaky_relu")
def leaky_relu(e: Emitter, self, negative_slope=0.01, **_):
    """LeakyRelu."""
    return e.op("LeakyRelu", [self], {"alpha": float(negative_slope)})


@converts("aten::elu")
def elu(e: Emitter, self, alpha=1.0, scale=1.0, input_scale=1.0, **_):
    """Elu (scale and input_scale 1 only)."""
    if scale != 1 or input_scale != 1:
        raise Unsupported("elu with scale or input_scale other than 1")
    return e.op("Elu", [self], {"alpha": float(alpha)})


@converts("aten::selu")
def selu(e: Emitter, self, **_):
    """Selu."""
    return e.op("Selu", [self])


@converts("aten::celu")
def celu(e: Emitter, self, alpha=1.0, **_):
    """Celu."""
    return e.op("Celu", [self], {"alpha": float(alpha)})


@converts("aten::softplus")
def softplus(e: Emitter, self, beta=1.0, threshold=20.0, **_):
    """Softplus (beta 1; with another beta: Softplus(beta x) / beta)."""
    if beta == 1:
        return e.op("Softplus", [self])
    dtype = e.dtype(self)
    scaled = e.op("Mul", [self, e.tensor(float(beta), dtype)])
    return e.op("Div", [e.op("Softplus", [scaled]), e.tensor(float(beta), dtype)])


@converts("aten::log_sigmoid")
def log_sigmoid(e: Emitter, self, **_):
    """-Softplus(-x)."""
    return e.op("Neg", [e.op("Softplus", [e.op("Neg", [self])])])


@converts("aten::threshold")
def threshold(e: Emitter, self, threshold, value, **_):
    """Where(x > threshold, x, value)."""
    dtype = e.dtype(self)
    keep = e.op("Greater", [self, e.tensor(threshold, dtype)])
    return e.op("Where", [keep, self, e.tensor(value, dtype)])


@converts("aten::prelu")
def prelu(e: Emitter, self, weight, **_):
    """PRelu (the per-channel slope reshaped to broadcast over dimension 1)."""
    rank = e.rank(self)
    slope = e.tensor(weight)
    if rank >= 2 and e.shape(slope) != (1,):
        slope = e.reshape(slope, [e.shape(slope)[0]] + [1] * (rank - 2))
    return e.op("PRelu", [self, slope])


# ----------------------------------------------------------------------------- reductions


def _axes(e: Emitter, self: Any, dim: Any) -> list[int]:
    rank = e.rank(self)
    if dim is None or dim == []:
        return list(range(rank))
    return sorted(normalize_dim(d, rank) for d in int_list(dim, name="dim"))


def _reduce(e: Emitter, op_type: str, x: TensorRef, axes: list[int], keepdim: bool) -> TensorRef:
    if not axes:
        return x
    if op_type == "ReduceSum":
        return e.op(op_type, [x, e.int64s(axes)], {"keepdims": int(keepdim)})
    return e.op(op_type, [x], {"axes": axes, "keepdims": int(keepdim)})


@converts("aten::sum")
def sum_(e: Emitter, self, dim=None, keepdim=False, dtype=None, **_):
    """ReduceSum (integers and booleans summed as int64, as torch)."""
    x = e.tensor(self)
    target = numpy_dtype(dtype) if dtype is not None else (e.dtype(x) if is_float(e.dtype(x)) else INT64)
    return _reduce(e, "ReduceSum", e.cast(x, target), _axes(e, x, dim), keepdim)


@converts("aten::mean")
def mean(e: Emitter, self, dim=None, keepdim=False, dtype=None, **_):
    """ReduceMean."""
    x = e.cast(e.tensor(self), numpy_dtype(dtype) if dtype is not None else None)
    return _reduce(e, "ReduceMean", x, _axes(e, x, dim), keepdim)


@converts("aten::prod")
def prod(e: Emitter, self, dim=None, keepdim=False, dtype=None, **_):
    """ReduceProd."""
    x = e.cast(e.tensor(self), numpy_dtype(dtype) if dtype is not None else None)
    return _reduce(e, "ReduceProd", x, _axes(e, x, dim), keepdim)


@converts("aten::amax")
def amax(e: Emitter, self, dim=(), keepdim=False, **_):
    """ReduceMax."""
    return _reduce(e, "ReduceMax", e.tensor(self), _axes(e, self, list(dim)), keepdim)


@converts("aten::amin")
def amin(e: Emitter, self, dim=(), keepdim=False, **_):
    """ReduceMin."""
    return _reduce(e, "ReduceMin", e.tensor(self), _axes(e, self, list(dim)), keepdim)


def _max_min(op_type: str, elementwise: str, arg_op: str) -> Converter:
    def convert(e: Emitter, self, dim=None, keepdim=False, other=None, **_):
        if other is not None:
            return binary(e, elementwise, self, other)
        x = e.tensor(self)
        if dim is None:
            return _reduce(e, op_type, x, _axes(e, x, None), False)
        axis = normalize_dim(dim, e.rank(x))
        values = _reduce(e, op_type, x, [axis], keepdim)
        indices = e.op(arg_op, [x], {"axis": axis, "keepdims": int(keepdim)})
        return values, indices

    convert.__doc__ = f"{op_type} (with {arg_op} for the indices), or {elementwise} of two tensors."
    return convert


converts("aten::max")(_max_min("ReduceMax", "Max", "ArgMax"))
converts("aten::min")(_max_min("ReduceMin", "Min", "ArgMin"))


def _arg(op_type: str) -> Converter:
    def convert(e: Emitter, self, dim=None, keepdim=False, **_):
        x = e.tensor(self)
        if dim is None:
            flat = e.reshape(x, [int(np.prod(e.shape(x), dtype=np.int64))])
            result = e.op(op_type, [flat], {"axis": 0, "keepdims": 0})
            return e.reshape(result, [1] * e.rank(x)) if keepdim else result
        return e.op(op_type, [x], {"axis": normalize_dim(dim, e.rank(x)), "keepdims": int(keepdim)})

    convert.__doc__ = f"{op_type} (first index of the extreme, as torch)."
    return convert


converts("aten::argmax")(_arg("ArgMax"))
converts("aten::argmin")(_arg("ArgMin"))


@converts("aten::var", "aten::std")
def var(e: Emitter, self, dim=None, unbiased=None, keepdim=False, correction=None, **_):
    """ReduceMean of squared deviations, scaled for the correction (Sqrt for std)."""
    x = e.tensor(self)
    axes = _axes(e, x, dim)
    count = int(np.prod([e.shape(x)[a] for a in axes], dtype=np.int64))
    if correction is None:
        correction = 1 if unbiased in (None, True) else 0
    deviation = e.op("Sub", [x, _reduce(e, "ReduceMean", x, axes, True)])
    result = _reduce(e, "ReduceMean", e.op("Mul", [deviation, deviation]), axes, keepdim)
    if correction:
        result = e.op("Mul", [result, e.tensor(count / max(count - correction, 0), e.dtype(x))])
    return e.op("Sqrt", [result]) if e.source_op.startswith("aten::std") else result


@converts("aten::norm", "aten::linalg_vector_norm")
def norm(e: Emitter, self, p=2, dim=None, keepdim=False, ord=None, dtype=None, **_):
    """ReduceL2 (p=2) or ReduceL1 (p=1)."""
    order = ord if ord is not None else (2 if p is None else p)
    op_type = {1: "ReduceL1", 2: "ReduceL2"}.get(order)
    if op_type is None:
        raise Unsupported(f"norm of order {order!r}")
    return _reduce(e, op_type, e.tensor(self), _axes(e, self, dim), keepdim)


@converts("aten::logsumexp")
def logsumexp(e: Emitter, self, dim, keepdim=False, **_):
    """ReduceLogSumExp."""
    return _reduce(e, "ReduceLogSumExp", e.tensor(self), _axes(e, self, dim), keepdim)


@converts("aten::any", "aten::all")
def any_all(e: Emitter, self, dim=None, keepdim=False, **_):
    """ReduceMax (any) or ReduceMin (all) on the input as integers, then Cast to bool."""
    x = e.cast(e.tensor(self, BOOL), np.dtype(np.int32))
    op_type = "ReduceMax" if e.source_op.startswith("aten::any") else "ReduceMin"
    return e.cast(_reduce(e, op_type, x, _axes(e, x, dim), keepdim), BOOL)


@converts("aten::cumsum")
def cumsum(e: Emitter, self, dim, dtype=None, **_):
    """CumSum."""
    x = e.tensor(self)
    target = numpy_dtype(dtype) if dtype is not None else (e.dtype(x) if is_float(e.dtype(x)) else INT64)
    axis = e.constant(np.asarray(normalize_dim(dim, e.rank(x)), dtype=np.int64), "axis")
    return e.op("CumSum", [e.cast(x, target), axis])


@converts("aten::topk")
def topk(e: Emitter, self, k, dim=-1, largest=True, sorted=True, **_):
    """TopK."""
    axis = normalize_dim(dim, e.rank(self))
    values, indices = e.op("TopK", [e.tensor(self), e.int64s([k])],
                           {"axis": axis, "largest": int(largest), "sorted": int(sorted)}, outputs=2)
    return values, indices


@converts("aten::softmax", "aten::_softmax")
def softmax(e: Emitter, self, dim, dtype=None, half_to_float=False, **_):
    """Softmax."""
    x = e.cast(e.tensor(self), numpy_dtype(dtype) if isinstance(dtype, int) else None)
    return e.op("Softmax", [x], {"axis": normalize_dim(dim, e.rank(x))})


@converts("aten::log_softmax", "aten::_log_softmax")
def log_softmax(e: Emitter, self, dim, dtype=None, half_to_float=False, **_):
    """LogSoftmax."""
    x = e.cast(e.tensor(self), numpy_dtype(dtype) if isinstance(dtype, int) else None)
    return e.op("LogSoftmax", [x], {"axis": normalize_dim(dim, e.rank(x))})


@converts("aten::addcmul")
def addcmul(e: Emitter, self, tensor1, tensor2, value=1, **_):
    """Mul, Mul by the value, Add."""
    dtype = e.result_dtype(self, tensor1, tensor2)
    product = scaled(e, binary(e, "Mul", tensor1, tensor2, dtype), value)
    return binary(e, "Add", self, product, dtype)
