"""Element types: one table between numpy, ONNX, the .rbln schema and user-facing names."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .errors import RBLNError

try:  # ml_dtypes ships with onnx and tensorflow; numpy has no bfloat16 of its own
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover - ml_dtypes is a dependency of onnx
    _bfloat16 = None

# The schema's DType enum uses ONNX's TensorProto numbers, so the ONNX code is the key.
_ONNX_TO_NUMPY: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.STRING: np.dtype(object),
    TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.UINT64: np.dtype(np.uint64),
}
if _bfloat16 is not None:
    _ONNX_TO_NUMPY[TensorProto.BFLOAT16] = np.dtype(_bfloat16)
# Narrow and complex types (float8, int4, ...): values the host runs (casts, quantisation);
# numpy holds them through ml_dtypes, as onnx does.
for _name in ("COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
              "FLOAT8E5M2FNUZ", "UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2", "INT2"):
    _code = getattr(TensorProto, _name, None)
    try:
        if _code is not None:
            _ONNX_TO_NUMPY.setdefault(_code, np.dtype(helper.tensor_dtype_to_np_dtype(_code)))
    except (KeyError, TypeError, ValueError):  # pragma: no cover - an older onnx or ml_dtypes
        pass
_NUMPY_TO_ONNX = {v: k for k, v in _ONNX_TO_NUMPY.items()}

# Precisions of NPU compute, by the names users pass as `dtype=`.
PRECISIONS = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}
if _bfloat16 is not None:
    PRECISIONS["bf16"] = np.dtype(_bfloat16)


# Compile precisions that are not a float type: "int8" runs quantised ops in int8 and the rest in
# the float precision named here (docs/precision.md).
MIXED_PRECISIONS = {"int8": "bf16"}


def float_precision(precision: str) -> str:
    """The float precision of a compile precision: itself, or bf16 for what int8 leaves in float."""
    return MIXED_PRECISIONS.get(precision, precision)


class DTypeError(RBLNError, TypeError):
    """An element type rblnc does not know."""


def is_float(dtype: object) -> bool:
    """A floating type, bfloat16 included (ml_dtypes gives it numpy kind 'V')."""
    return np.dtype(dtype).kind == "f" or np.dtype(dtype).name == "bfloat16"


def to_numpy(dtype: object) -> np.dtype:
    """A numpy dtype from a numpy dtype or type, a name ("float32", "bf16"), or a torch/TF dtype."""
    if isinstance(dtype, np.dtype):
        return dtype
    if hasattr(dtype, "as_numpy_dtype"):  # tf.DType
        dtype = dtype.as_numpy_dtype
    text = str(dtype).removeprefix("torch.")  # torch.float32 -> float32, without importing torch
    if text in ("bfloat16", "bf16") and _bfloat16 is not None:
        return np.dtype(_bfloat16)
    try:
        return np.dtype(text if text != str(dtype) else dtype)
    except TypeError as exc:
        raise DTypeError(f"unknown element type {dtype!r}") from exc


def from_onnx(code: int) -> np.dtype:
    try:
        return _ONNX_TO_NUMPY[code]
    except KeyError:
        raise DTypeError(
            f"ONNX element type {helper.tensor_dtype_to_string(code)} is not supported"
        ) from None


def to_onnx(dtype: object) -> int:
    np_dtype = to_numpy(dtype)
    try:
        return _NUMPY_TO_ONNX[np_dtype]
    except KeyError:
        raise DTypeError(f"element type {np_dtype} has no ONNX equivalent") from None


def name(dtype: object) -> str:
    """The short user-facing name: float32, int64, bfloat16, ..."""
    return to_numpy(dtype).name
