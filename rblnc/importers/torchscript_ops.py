"""The aten op table: one small converter per TorchScript op, emitting IR ops with ONNX semantics.

A converter is `fn(e: Emitter, **args)`; `args` are the op's inputs by their schema names,
each a `TensorRef` (computed at run time), a `torch.Tensor` (a constant) or a Python value.
It returns the op's value (a tuple when the op has several outputs). Ops whose inputs are
all constants never reach this table: the importer runs them with torch at compile time.
The first line of each converter's docstring says what it becomes; docs/torch_ops.md is
generated from them (`python -m rblnc.importers.torchscript_ops`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from .torchscript_emit import (
    BOOL, FLOAT32, INT64, DataDependent, Emitter, Poisoned, TensorRef, Unsupported, is_float, normalize_dim,
    numpy_dtype, scalar_type_number, torch_dtype,
)

Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}
_INT64_MAX = 2**63 - 1


def converts(*kinds: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for kind in kinds:
            if kind in CONVERTERS:
                raise ValueError(f"{kind} has two converters")
            CONVERTERS[kind] = fn
        return fn

    return register


def _is_tensor(value: Any) -> bool:
    return isinstance(value, (TensorRef, torch.Tensor))


def _ints(value: Any, rank: int | None = None, name: str = "argument") -> list[int]:
    """An int list argument; a single int is repeated `rank` times (kernel_size=3 -> [3, 3])."""
    if isinstance(value, int):
        return [value] * (rank or 1)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        if rank is not None and len(value) == 1:
            return list(value) * rank
        return list(value)
    if isinstance(value, (list, tuple)) and any(_is_tensor(v) for v in value):
        raise DataDependent(f"{name} is computed from tensor values at run time")
    raise Unsupported(f"{name} must be a list of integers, got {value!r}")


# ----------------------------------------------------------------------------- pass-through


@converts("aten::contiguous", "aten::clone", "aten::detach", "aten::alias", "aten::lift_fresh",
          "aten::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::feature_alpha_dropout",
          "aten::positive", "aten::resolve_conj", "aten::resolve_neg", "prim::unchecked_cast")
def identity(e: Emitter, **args):
    """No op: the value passes through (dropout is the identity at inference)."""
    return next(iter(args.values()))  # the first argument, whatever the schema calls it


# ----------------------------------------------------------------------------- elementwise


def _binary(e: Emitter, op_type: str, a: Any, b: Any, dtype: np.dtype | None = None) -> TensorRef:
    dtype = dtype or e.result_dtype(a, b)
    return e.op(op_type, [e.tensor(a, dtype), e.tensor(b, dtype)])


def _scaled(e: Emitter, value: Any, alpha: Any) -> Any:
    if alpha in (None, 1):
        return value
    if not _is_tensor(value):
        return value * alpha
    return _binary(e, "Mul", value, alpha)


@converts("aten::add")
def add(e: Emitter, self=None, other=None, alpha=1, a=None, b=None, **_):
    """Add (other scaled by alpha first); list + list concatenates."""
    if isinstance(a, list):
        return a + list(b)
    return _binary(e, "Add", self, _scaled(e, other, alpha))


@converts("aten::sub")
def sub(e: Emitter, self, other, alpha=1, **_):
    """Sub (other scaled by alpha first)."""
    return _binary(e, "Sub", self, _scaled(e, other, alpha))


@converts("aten::rsub")
def rsub(e: Emitter, self, other, alpha=1, **_):
    """Sub with the operands swapped: other - alpha * self."""
    return _binary(e, "Sub", other, _scaled(e, self, alpha))


@converts("aten::mul")
def mul(e: Emitter, self, other, **_):
    """Mul."""
    return _binary(e, "Mul", self, other)


def _float_result(e: Emitter, *values) -> np.dtype:
    dtype = e.result_dtype(*values)
    return dtype if is_float(dtype) else FLOAT32


@converts("aten::div", "aten::true_divide")
def div(e: Emitter, self, other, rounding_mode=None, **_):
    """Div; rounding_mode 'trunc' and 'floor' add Floor (and Sign/Abs for trunc)."""
    if rounding_mode is None:
        return _binary(e, "Div", self, other, _float_result(e, self, other))
    if rounding_mode == "floor":
        return floor_divide(e, self, other)
    if rounding_mode != "trunc":
        raise Unsupported(f"rounding_mode {rounding_mode!r}")
    dtype = e.result_dtype(self, other)
    if not is_float(dtype):  # ONNX integer Div truncates, as C does
        return _binary(e, "Div", self, other, dtype)
    quotient = _binary(e, "Div", self, other, dtype)
    return e.op("Mul", [e.op("Sign", [quotient]), e.op("Floor", [e.op("Abs", [quotient])])])


@converts("aten::floor_divide")
def floor_divide(e: Emitter, self, other, **_):
    """Div + Floor (computed in float32 for integers, then cast back)."""
    dtype = e.result_dtype(self, other)
    work = dtype if is_float(dtype) else FLOAT32
    result = e.op("Floor", [_binary(e, "Div", self, other, work)])
    return e.cast(result, dtype)


@converts("aten::remainder")
def remainder(e: Emitter, self, other, **_):
    """Python's modulo (sign of the divisor): Mod for integers, a - floor(a / b) * b for floats."""
    dtype = e.result_dtype(self, other)
    if not is_float(dtype):
        return _binary(e, "Mod", self, other, dtype)
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
    return _binary(e, "Pow", self, exponent)


@converts("aten::square")
def square(e: Emitter, self, **_):
    """Mul of the input by itself."""
    return e.op("Mul", [self, self])


@converts("aten::maximum", "aten::fmax")
def maximum(e: Emitter, self, other, **_):
    """Max."""
    return _binary(e, "Max", self, other)


@converts("aten::minimum", "aten::fmin")
def minimum(e: Emitter, self, other, **_):
    """Min."""
    return _binary(e, "Min", self, other)


def _comparison(op_type: str, negate: bool = False) -> Converter:
    def convert(e: Emitter, self, other, **_):
        result = _binary(e, op_type, self, other)
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


# ----------------------------------------------------------------------------- dtype


@converts("aten::to", "aten::_to_copy", "aten::type_as")
def to(e: Emitter, self, dtype=None, other=None, **_):
    """Cast (device and memory-format arguments are ignored)."""
    if other is not None:
        return e.cast(e.tensor(self), e.dtype(other))
    if dtype is None:
        return self
    return e.cast(e.tensor(self), numpy_dtype(dtype))


@converts("aten::size")
def size(e: Emitter, self, dim=None, **_):
    """A compile-time integer (shapes are static)."""
    shape = list(e.shape(self))
    return shape if dim is None else shape[normalize_dim(dim, len(shape))]


@converts("aten::dim")
def dim_(e: Emitter, self, **_):
    """A compile-time integer."""
    return e.rank(self)


@converts("aten::numel")
def numel(e: Emitter, self, **_):
    """A compile-time integer."""
    return int(np.prod(e.shape(self), dtype=np.int64))


@converts("prim::dtype")
def prim_dtype(e: Emitter, a):
    """A compile-time constant."""
    return scalar_type_number(e.dtype(a))


@converts("prim::device")
def prim_device(e: Emitter, a):
    """A compile-time constant (cpu)."""
    return torch.device("cpu")


@converts("prim::is_cuda", "prim::is_mps", "prim::is_xpu", "prim::is_meta", "prim::is_quantized",
          "prim::is_sparse", "prim::is_mkldnn")
def prim_is_device(e: Emitter, a):
    """A compile-time constant (False)."""
    return False


@converts("aten::len")
def len_(e: Emitter, a=None, t=None, self=None, **_):
    """A compile-time integer (the length of a list, or of a tensor's first dimension)."""
    value = next(v for v in (a, t, self) if v is not None)
    return len(value) if isinstance(value, list) else e.shape(value)[0]


@converts("aten::Int", "aten::Float", "aten::Bool", "aten::IntImplicit", "aten::FloatImplicit",
          "aten::ScalarImplicit", "aten::item", "aten::__bool__", "aten::is_nonzero")
def scalar_of_tensor(e: Emitter, a=None, self=None, **_):
    """Only when the tensor is a constant; a computed tensor read as a number makes its users data-dependent."""
    where = f" at {e.source_location}" if e.source_location else ""
    return Poisoned(f"the value of a tensor computed from the inputs is read as a Python number "
                    f"({e.source_op}{where})", data_dependent=True)


@converts("aten::__is__", "aten::__isnot__")
def is_(e: Emitter, self, obj, **_):
    """A compile-time boolean (identity of None)."""
    same = self is obj if self is None or obj is None else False
    return same if e.source_op == "aten::__is__" else not same


# ----------------------------------------------------------------------------- lists


@converts("aten::__getitem__")
def getitem(e: Emitter, **args):
    """Python indexing of a list (or dict) holding tensors."""
    container = args["list"] if "list" in args else args.get("self")
    index = args["idx"] if "idx" in args else args.get("key")
    if not isinstance(container, (tuple, list, dict)):
        raise Unsupported(f"indexing a {type(container).__name__}")
    return container[index]


@converts("aten::append")
def append(e: Emitter, self, el, **_):
    """Appends to the list in place (the importer's lists are Python lists)."""
    self.append(el)
    return self


@converts("aten::insert")
def insert(e: Emitter, self, idx, el, **_):
    """Inserts into the list in place."""
    self.insert(idx, el)


@converts("aten::extend")
def extend(e: Emitter, self, other, **_):
    """Extends the list in place."""
    self.extend(other)


@converts("aten::list")
def list_(e: Emitter, l=None, self=None, **_):
    """A copy of the list."""
    return list(l if l is not None else self)


@converts("aten::slice")
def slice_(e: Emitter, self=None, dim=0, start=None, end=None, step=1, l=None, **_):
    """Slice (no op when it keeps everything); on a list, Python slicing."""
    if l is not None:
        return l[start:end:step]
    shape = e.shape(self)
    axis = normalize_dim(dim, len(shape))
    start, stop, step = slice(start, end, step).indices(shape[axis])
    if step == 1 and start == 0 and stop >= shape[axis]:
        return self
    return e.op("Slice", [e.tensor(self), e.int64s([start]), e.int64s([max(stop, start)]), e.int64s([axis]),
                          e.int64s([step])])


# ----------------------------------------------------------------------------- shapes


def _resolve_shape(e: Emitter, self: Any, shape: Any) -> list[int]:
    dims = _ints(shape, name="shape")
    total = int(np.prod(e.shape(self), dtype=np.int64))
    if dims.count(-1) > 1:
        raise Unsupported(f"shape {dims} has more than one -1")
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        dims[dims.index(-1)] = total // known if known else 0
    if int(np.prod(dims, dtype=np.int64)) != total:
        raise Unsupported(f"shape {dims} does not fit a tensor of shape {list(e.shape(self))}")
    return dims


@converts("aten::view", "aten::reshape", "aten::_unsafe_view", "aten::_reshape_alias")
def view(e: Emitter, self, size=None, shape=None, **_):
    """Reshape to a static shape."""
    return e.reshape(e.tensor(self), _resolve_shape(e, self, size if size is not None else shape))


@converts("aten::view_as", "aten::reshape_as")
def view_as(e: Emitter, self, other, **_):
    """Reshape to the other tensor's shape."""
    return e.reshape(e.tensor(self), e.shape(other))


@converts("aten::flatten")
def flatten(e: Emitter, self, start_dim=0, end_dim=-1, **_):
    """Reshape."""
    shape = list(e.shape(self))
    if not shape:
        return e.reshape(e.tensor(self), [1])
    start, end = normalize_dim(start_dim, len(shape)), normalize_dim(end_dim, len(shape))
    merged = int(np.prod(shape[start:end + 1], dtype=np.int64))
    return e.reshape(e.tensor(self), shape[:start] + [merged] + shape[end + 1:])


@converts("aten::unflatten")
def unflatten(e: Emitter, self, dim, sizes, **_):
    """Reshape."""
    shape = list(e.shape(self))
    axis = normalize_dim(dim, len(shape))
    sizes = _ints(sizes, name="sizes")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1], dtype=np.int64))
        sizes[sizes.index(-1)] = shape[axis] // known
    return e.reshape(e.tensor(self), shape[:axis] + sizes + shape[axis + 1:])


@converts("aten::squeeze")
def squeeze(e: Emitter, self, dim=None, **_):
    """Reshape dropping the named size-1 dimensions (all of them without `dim`)."""
    shape = list(e.shape(self))
    if dim is None:
        axes = [i for i, s in enumerate(shape) if s == 1]
    else:
        axes = [normalize_dim(d, len(shape)) for d in _ints(dim, name="dim")]
    return e.reshape(e.tensor(self), [s for i, s in enumerate(shape) if not (i in axes and s == 1)])


@converts("aten::unsqueeze")
def unsqueeze(e: Emitter, self, dim, **_):
    """Reshape with a new size-1 dimension."""
    shape = list(e.shape(self))
    axis = normalize_dim(dim, len(shape) + 1)
    return e.reshape(e.tensor(self), shape[:axis] + [1] + shape[axis:])


@converts("aten::permute")
def permute(e: Emitter, self, dims, **_):
    """Transpose."""
    rank = e.rank(self)
    perm = [normalize_dim(d, rank) for d in _ints(dims, name="dims")]
    if perm == list(range(rank)):
        return self
    return e.op("Transpose", [e.tensor(self)], {"perm": perm})


@converts("aten::transpose", "aten::swapaxes", "aten::swapdims")
def transpose(e: Emitter, self, dim0=None, dim1=None, axis0=None, axis1=None, **_):
    """Transpose of two dimensions."""
    rank = e.rank(self)
    a = normalize_dim(dim0 if dim0 is not None else axis0, rank)
    b = normalize_dim(dim1 if dim1 is not None else axis1, rank)
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return permute(e, self, perm)


@converts("aten::t", "aten::numpy_T")
def t(e: Emitter, self, **_):
    """Transpose (of the last two dimensions; no op below rank 2)."""
    rank = e.rank(self)
    return self if rank < 2 else permute(e, self, list(range(rank))[::-1])


@converts("aten::movedim")
def movedim(e: Emitter, self, source, destination, **_):
    """Transpose."""
    rank = e.rank(self)
    sources = [normalize_dim(d, rank) for d in _ints(source, name="source")]
    targets = [normalize_dim(d, rank) for d in _ints(destination, name="destination")]
    rest = [d for d in range(rank) if d not in sources]
    perm = [-1] * rank
    for s, d in zip(sources, targets):
        perm[d] = s
    rest_iter = iter(rest)
    return permute(e, self, [p if p >= 0 else next(rest_iter) for p in perm])


@converts("aten::expand")
def expand(e: Emitter, self, size, implicit=False, **_):
    """Expand to a static shape (-1 keeps a dimension)."""
    shape = list(e.shape(self))
    dims = _ints(size, name="size")
    offset = len(dims) - len(shape)
    target = [shape[i - offset] if d == -1 else d for i, d in enumerate(dims)]
    if target == shape:
        return self
    return e.op("Expand", [e.tensor(self), e.int64s(target)])


@converts("aten::expand_as", "aten::broadcast_to")
def expand_as(e: Emitter, self, other=None, size=None, **_):
    """Expand."""
    return expand(e, self, list(e.shape(other)) if other is not None else size)


@converts("aten::repeat")
def repeat(e: Emitter, self, repeats, **_):
    """Tile (after a Reshape adding leading dimensions when repeats is longer)."""
    shape = list(e.shape(self))
    repeats = _ints(repeats, name="repeats")
    x = e.reshape(e.tensor(self), [1] * (len(repeats) - len(shape)) + shape)
    return e.op("Tile", [x, e.int64s(repeats)])


@converts("aten::cat", "aten::concat", "aten::concatenate")
def cat(e: Emitter, tensors, dim=0, **_):
    """Concat (inputs promoted to a common type)."""
    tensors = [t for t in tensors if not (e.shape(t) == (0,))] or tensors[:1]
    dtype = e.result_dtype(*tensors)
    if len(tensors) == 1:
        return e.tensor(tensors[0], dtype)
    axis = normalize_dim(dim, e.rank(tensors[0]))
    return e.op("Concat", [e.tensor(t, dtype) for t in tensors], {"axis": axis})


@converts("aten::stack")
def stack(e: Emitter, tensors, dim=0, **_):
    """Reshape of each input + Concat."""
    rank = e.rank(tensors[0])
    axis = normalize_dim(dim, rank + 1)
    dtype = e.result_dtype(*tensors)
    parts = []
    for tensor in tensors:
        shape = list(e.shape(tensor))
        parts.append(e.reshape(e.tensor(tensor, dtype), shape[:axis] + [1] + shape[axis:]))
    return parts[0] if len(parts) == 1 else e.op("Concat", parts, {"axis": axis})


def _split(e: Emitter, self: Any, sizes: list[int], axis: int) -> list[Any]:
    if len(sizes) == 1:
        return [self]
    return e.op("Split", [e.tensor(self), e.int64s(sizes)], {"axis": axis}, outputs=len(sizes))


@converts("aten::chunk", "aten::unsafe_chunk")
def chunk(e: Emitter, self, chunks, dim=0, **_):
    """Split into near-equal parts (as torch.chunk: the last part may be smaller)."""
    shape = e.shape(self)
    axis = normalize_dim(dim, len(shape))
    step = -(-shape[axis] // chunks)
    sizes = [min(step, shape[axis] - start) for start in range(0, shape[axis], step)] if step else [0]
    return _split(e, self, sizes, axis)


@converts("aten::split", "aten::split_with_sizes", "aten::unsafe_split", "aten::unsafe_split_with_sizes")
def split(e: Emitter, self, split_size=None, dim=0, split_sizes=None, **_):
    """Split (by a part size or a list of sizes)."""
    shape = e.shape(self)
    axis = normalize_dim(dim, len(shape))
    sizes = split_sizes if split_sizes is not None else split_size
    if isinstance(sizes, int):
        sizes = [min(sizes, shape[axis] - start) for start in range(0, shape[axis], sizes)]
    return _split(e, self, _ints(sizes, name="split sizes"), axis)


@converts("aten::unbind")
def unbind(e: Emitter, self, dim=0, **_):
    """Split into size-1 parts + Reshape of each."""
    shape = list(e.shape(self))
    axis = normalize_dim(dim, len(shape))
    parts = _split(e, self, [1] * shape[axis], axis)
    return [e.reshape(e.tensor(p), shape[:axis] + shape[axis + 1:]) for p in parts]


@converts("aten::select")
def select(e: Emitter, self, dim, index, **_):
    """Gather of one index (drops the dimension)."""
    shape = e.shape(self)
    axis = normalize_dim(dim, len(shape))
    if not isinstance(index, int):
        raise DataDependent("select with an index computed at run time")
    index = normalize_dim(index, shape[axis])
    return e.op("Gather", [e.tensor(self), e.constant(np.asarray(index, dtype=np.int64), "index")], {"axis": axis})


@converts("aten::narrow")
def narrow(e: Emitter, self, dim, start, length, **_):
    """Slice."""
    axis = normalize_dim(dim, e.rank(self))
    start = normalize_dim(start, e.shape(self)[axis] + 1) if start < 0 else start
    return slice_(e, self, axis, start, start + length, 1)


@converts("aten::index_select")
def index_select(e: Emitter, self, dim, index, **_):
    """Gather."""
    return e.op("Gather", [e.tensor(self), e.tensor(index)], {"axis": normalize_dim(dim, e.rank(self))})


@converts("aten::index")
def index(e: Emitter, self, indices, **_):
    """Gather (one integer index tensor; several or boolean masks are not supported)."""
    used = [(i, t) for i, t in enumerate(indices) if t is not None]
    if len(used) != 1:
        raise Unsupported("advanced indexing with several index tensors")
    axis, tensor = used[0]
    if e.dtype(tensor) == BOOL:
        raise DataDependent("indexing with a boolean mask (the result's size depends on the mask's values)")
    return e.op("Gather", [e.tensor(self), e.tensor(tensor)], {"axis": axis})


@converts("aten::gather")
def gather(e: Emitter, self, dim, index, **_):
    """GatherElements."""
    return e.op("GatherElements", [e.tensor(self), e.tensor(index)], {"axis": normalize_dim(dim, e.rank(self))})


@converts("aten::embedding")
def embedding(e: Emitter, weight, indices, **_):
    """Gather of rows of the weight."""
    return e.op("Gather", [e.tensor(weight, name_hint="embedding"), e.tensor(indices)], {"axis": 0})


@converts("aten::flip")
def flip(e: Emitter, self, dims, **_):
    """Slice with step -1."""
    rank = e.rank(self)
    axes = [normalize_dim(d, rank) for d in _ints(dims, name="dims")]
    n = len(axes)
    return e.op("Slice", [e.tensor(self), e.int64s([-1] * n), e.int64s([-_INT64_MAX] * n), e.int64s(axes),
                          e.int64s([-1] * n)])


@converts("aten::roll")
def roll(e: Emitter, self, shifts, dims=(), **_):
    """Slice + Concat per rolled dimension."""
    shifts, dims = _ints(shifts, name="shifts"), _ints(list(dims), name="dims")
    if not dims:
        shape = e.shape(self)
        flat = e.reshape(e.tensor(self), [int(np.prod(shape, dtype=np.int64))])
        return e.reshape(roll(e, flat, shifts, [0]), shape)
    x = e.tensor(self)
    for shift, dim in zip(shifts, dims):
        axis = normalize_dim(dim, e.rank(x))
        length = e.shape(x)[axis]
        shift %= length
        if shift:
            tail = slice_(e, x, axis, length - shift, length)
            head = slice_(e, x, axis, 0, length - shift)
            x = e.op("Concat", [tail, head], {"axis": axis})
    return x


def _pad(e: Emitter, self: Any, pad: list[int], mode: str, value: Any) -> TensorRef:
    rank = e.rank(self)
    if len(pad) % 2 or len(pad) // 2 > rank:
        raise Unsupported(f"pad {pad} for a tensor of rank {rank}")
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last dimension
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
    if onnx_mode is None:
        raise Unsupported(f"padding mode {mode!r}")
    inputs = [e.tensor(self), e.int64s(begins + ends)]
    if onnx_mode == "constant" and value not in (None, 0, 0.0):
        inputs.append(e.tensor(value, e.dtype(self)))
    return e.op("Pad", inputs, {"mode": onnx_mode})


@converts("aten::constant_pad_nd")
def constant_pad_nd(e: Emitter, self, pad, value=0, **_):
    """Pad (constant)."""
    return _pad(e, self, _ints(pad, name="pad"), "constant", value)


@converts("aten::pad")
def pad(e: Emitter, self, pad, mode="constant", value=None, **_):
    """Pad (constant, reflect, replicate)."""
    return _pad(e, self, _ints(pad, name="pad"), mode, value)


@converts("aten::reflection_pad1d", "aten::reflection_pad2d", "aten::reflection_pad3d")
def reflection_pad(e: Emitter, self, padding, **_):
    """Pad (reflect)."""
    return _pad(e, self, _ints(padding, name="padding"), "reflect", None)


@converts("aten::replication_pad1d", "aten::replication_pad2d", "aten::replication_pad3d")
def replication_pad(e: Emitter, self, padding, **_):
    """Pad (edge)."""
    return _pad(e, self, _ints(padding, name="padding"), "replicate", None)


@converts("aten::tril", "aten::triu")
def trilu(e: Emitter, self, diagonal=0, **_):
    """Trilu."""
    upper = int(e.source_op.startswith("aten::triu"))
    return e.op("Trilu", [e.tensor(self), e.constant(np.asarray(diagonal, dtype=np.int64), "k")], {"upper": upper})


# ----------------------------------------------------------------------------- constants of static shape


def _filled(e: Emitter, shape, value, dtype) -> torch.Tensor:
    return torch.full(tuple(shape), value, dtype=dtype)


@converts("aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::empty_like")
def full_like(e: Emitter, self, fill_value=None, dtype=None, **_):
    """A constant (the shape is static)."""
    value = {"aten::zeros_like": 0, "aten::ones_like": 1, "aten::empty_like": 0}.get(e.source_op, fill_value)
    np_dtype = numpy_dtype(dtype) if dtype is not None else e.dtype(self)
    return _filled(e, e.shape(self), value, torch_dtype(np_dtype))


@converts("aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::new_empty")
def new_full(e: Emitter, self, size, fill_value=None, dtype=None, **_):
    """A constant."""
    value = {"aten::new_zeros": 0, "aten::new_ones": 1, "aten::new_empty": 0}.get(e.source_op, fill_value)
    np_dtype = numpy_dtype(dtype) if dtype is not None else e.dtype(self)
    return _filled(e, _ints(size, name="size"), value, torch_dtype(np_dtype))


# ----------------------------------------------------------------------------- reductions


def _axes(e: Emitter, self: Any, dim: Any) -> list[int]:
    rank = e.rank(self)
    if dim is None or dim == []:
        return list(range(rank))
    return sorted(normalize_dim(d, rank) for d in _ints(dim, name="dim"))


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
            return _binary(e, elementwise, self, other)
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
    return _binary(e, "MatMul", self, other if other is not None else mat2)


@converts("aten::addmm")
def addmm(e: Emitter, self, mat1, mat2, beta=1, alpha=1, **_):
    """Gemm (alpha, beta)."""
    return e.op("Gemm", [e.tensor(mat1), e.tensor(mat2), e.tensor(self)], {"alpha": float(alpha), "beta": float(beta)})


@converts("aten::baddbmm")
def baddbmm(e: Emitter, self, batch1, batch2, beta=1, alpha=1, **_):
    """MatMul scaled by alpha + self scaled by beta."""
    product = _scaled(e, _binary(e, "MatMul", batch1, batch2), alpha)
    return _binary(e, "Add", _scaled(e, self, beta), product)


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
    attrs: dict[str, Any] = {"strides": _ints(stride, spatial, "stride"),
                             "dilations": _ints(dilation, spatial, "dilation"), "group": int(groups)}
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
        pads = _ints(padding, spatial, "padding") * 2
    attrs["pads"] = pads
    attrs["kernel_shape"] = kernel
    if transposed:
        out_pad = _ints(output_padding, spatial, "output_padding")
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
    kernel = _ints(kernel_size, spatial, "kernel_size")
    strides = _ints(stride, spatial, "stride") if stride not in ((), [], None) else kernel
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": _ints(padding, spatial, "padding") * 2,
             "ceil_mode": int(ceil_mode)}
    dilations = _ints(dilation, spatial, "dilation")
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
    kernel = _ints(kernel_size, spatial, "kernel_size")
    strides = _ints(stride, spatial, "stride") if stride not in ((), [], None) else kernel
    pads = _ints(padding, spatial, "padding") * 2
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
    out = [s if o is None else o for o, s in zip(_ints(output_size, spatial, "output_size"), shape[2:])]
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
    out = _ints(output_size, spatial, "output_size")
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
    dims = _ints(normalized_shape, name="normalized_shape")
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


def _output_size(e: Emitter, shape, output_size, scales) -> tuple[list[int], list[float] | None]:
    spatial = len(shape) - 2
    if output_size is not None:
        return _ints(output_size, spatial, "output_size"), None
    factors = [float(s) for s in (scales if isinstance(scales, (list, tuple)) else [scales] * spatial)]
    return [int(math.floor(s * f)) for s, f in zip(shape[2:], factors)], factors


def _resize(e: Emitter, input, output_size, scales, mode: str, coordinates: str, **extra) -> TensorRef:
    shape = list(e.shape(input))
    size, factors = _output_size(e, shape, output_size, scales)
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates, **extra}
    if factors is not None:  # torch then maps coordinates by 1/scale, as ONNX does with `scales`
        scales_input = e.constant(np.asarray([1.0, 1.0] + factors, dtype=np.float32), "scales")
        return e.op("Resize", [e.tensor(input), None, scales_input], attrs)
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


# ----------------------------------------------------------------------------- docs


def supported_ops_markdown() -> str:
    """docs/torch_ops.md: every aten/prim op the importer converts, with what it becomes."""
    lines = [
        "# Supported TorchScript ops",
        "",
        "Generated from `rblnc/importers/torchscript_ops.py` by",
        "`python -m rblnc.importers.torchscript_ops > docs/torch_ops.md`; a test fails when it is stale.",
        "",
        "The importer freezes the module (`torch.jit.freeze`), inlines calls and walks the graph.",
        "Besides the ops below:",
        "",
        "- any deterministic op whose inputs are all known at compile time (constants, shapes,",
        "  list arithmetic, `arange`, `meshgrid`, `full`, ...) is run by torch during import and",
        "  becomes a constant, so shape bookkeeping leaves no ops behind;",
        "- an in-place form (`relu_`, `add_`, ...) is converted like its out-of-place op, unless it",
        "  writes into a view of another tensor;",
        "- `prim::If` with a condition known at compile time keeps only the branch taken, and",
        "  `prim::Loop` with a known trip count is unrolled; control flow on tensor values is",
        "  reported as data-dependent.",
        "",
        "| op | becomes |",
        "|---|---|",
    ]
    for kind in sorted(CONVERTERS):
        doc = (CONVERTERS[kind].__doc__ or "").strip().splitlines()
        lines.append(f"| `{kind}` | {doc[0] if doc else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(supported_ops_markdown(), end="")
