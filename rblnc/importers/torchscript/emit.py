"""What TorchScript converters build with: tensor references, dtype rules and an IR node emitter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ... import dtypes
from ...ir.graph import Graph, Node, TensorInfo
from ...ir.shape_inference import ShapeInferenceError, infer_node


@dataclass(frozen=True)
class TensorRef:
    """A tensor computed at run time: the name of an IR tensor."""

    name: str


@dataclass(frozen=True)
class Poisoned:
    """A value the importer could not produce; a node that reads it cannot be converted.

    `reason` is empty when the cause was already reported (an unsupported op upstream), so
    the consumers stay silent; otherwise it says why the value is unusable (a tensor's
    value read as a Python number, an output the importer does not compute)."""

    reason: str = ""
    data_dependent: bool = False


class Unsupported(Exception):
    """Raised by a converter: this use of the op cannot be imported (the message says why)."""


class DataDependent(Unsupported):
    """Raised by a converter: a size or a branch depends on the values of the inputs."""


# TorchScript carries dtypes as c10::ScalarType numbers.
_SCALAR_TYPES: dict[int, np.dtype] = {
    0: np.dtype(np.uint8), 1: np.dtype(np.int8), 2: np.dtype(np.int16), 3: np.dtype(np.int32),
    4: np.dtype(np.int64), 5: np.dtype(np.float16), 6: np.dtype(np.float32), 7: np.dtype(np.float64),
    11: np.dtype(np.bool_),
}
if "bf16" in dtypes.PRECISIONS:
    _SCALAR_TYPES[15] = dtypes.PRECISIONS["bf16"]
_SCALAR_TYPE_NUMBERS = {v: k for k, v in _SCALAR_TYPES.items()}

_TORCH_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.uint8: np.dtype(np.uint8), torch.int8: np.dtype(np.int8), torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32), torch.int64: np.dtype(np.int64), torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64), torch.bool: np.dtype(np.bool_),
}
if "bf16" in dtypes.PRECISIONS:
    _TORCH_DTYPES[torch.bfloat16] = dtypes.PRECISIONS["bf16"]
_NUMPY_TO_TORCH = {v: k for k, v in _TORCH_DTYPES.items()}

FLOAT32 = np.dtype(np.float32)
INT64 = np.dtype(np.int64)
BOOL = np.dtype(np.bool_)


def numpy_dtype(value: Any) -> np.dtype:
    """The numpy dtype of a TorchScript dtype value (a ScalarType number or a torch.dtype)."""
    if isinstance(value, torch.dtype):
        if value in _TORCH_DTYPES:
            return _TORCH_DTYPES[value]
    elif isinstance(value, int) and value in _SCALAR_TYPES:
        return _SCALAR_TYPES[value]
    raise Unsupported(f"element type {value!r} is not supported")


def scalar_type_number(dtype: np.dtype) -> int:
    return _SCALAR_TYPE_NUMBERS[np.dtype(dtype)]


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return _NUMPY_TO_TORCH[np.dtype(dtype)]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A private numpy copy of a constant tensor (the user's module may change later)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16 and torch.bfloat16 in _TORCH_DTYPES:
        return tensor.float().numpy().astype(_TORCH_DTYPES[torch.bfloat16])
    if tensor.dtype not in _TORCH_DTYPES:
        raise Unsupported(f"constant of element type {tensor.dtype} is not supported")
    return np.array(tensor.resolve_conj().resolve_neg().numpy(), copy=True)


def contains(value: Any, kind: type) -> bool:
    if isinstance(value, kind):
        return True
    if isinstance(value, (list, tuple)):
        return any(contains(v, kind) for v in value)
    return False


class Emitter:
    """Adds IR nodes for one source op at a time, naming them after the op's module and
    recording where they came from; every node's outputs get their types at once, so the
    next converter can read shapes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.source_op = ""
        self.source_location = ""
        self._prefix = ""
        self._constants: dict[int, tuple[torch.Tensor, str]] = {}
        self._constant_names: dict[int, tuple[torch.Tensor, str]] = {}
        self._scalars: dict[tuple, str] = {}

    def name_constant(self, tensor: torch.Tensor, name: str) -> None:
        """The name `tensor` gets in the IR if a node reads it (the source model's name)."""
        self._constant_names[id(tensor)] = (tensor, name)

    def constant_name(self, tensor: torch.Tensor) -> str:
        return self._constant_names.get(id(tensor), (None, "const"))[1]

    def begin(self, source_op: str, prefix: str, source_location: str) -> None:
        self.source_op, self._prefix, self.source_location = source_op, prefix, source_location

    # -- nodes --------------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[TensorRef | None], attrs: dict[str, Any] | None = None,
           *, outputs: int = 1) -> TensorRef | list[TensorRef]:
        """Emit one node; returns its output (or outputs when `outputs` > 1)."""
        name = self.graph.unique_name(self._prefix)
        out_names = [name] if outputs == 1 else [self.graph.unique_name(f"{name}:{i}") for i in range(outputs)]
        node = Node(name, op_type, [i.name if i is not None else "" for i in inputs], out_names,
                    dict(attrs or {}), source_ops=[self.source_op], source_location=self.source_location)
        self.graph.add_node(node)
        try:
            infos = infer_node(self.graph, node)
        except ShapeInferenceError as exc:
            raise Unsupported(f"the {op_type} it becomes is invalid ({exc})") from None
        for out, info in zip(out_names, infos):
            self.graph.tensors[out] = info
        refs = [TensorRef(o) for o in out_names]
        return refs[0] if outputs == 1 else refs

    # -- tensors ------------------------------------------------------------------------

    def info(self, ref: TensorRef) -> TensorInfo:
        return self.graph.tensors[ref.name]

    def dtype(self, value: Any) -> np.dtype:
        if isinstance(value, TensorRef):
            return self.info(value).dtype
        if isinstance(value, torch.Tensor):
            return numpy_dtype(value.dtype)
        raise TypeError(f"not a tensor: {value!r}")

    def shape(self, value: Any) -> tuple[int, ...]:
        """The static shape of a tensor; Unsupported when it is only known at run time."""
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
        info = self.info(value)
        if not info.is_static:
            raise DataDependent(f"the shape of {value.name!r} ({info}) depends on input values")
        return tuple(info.shape)

    def rank(self, value: Any) -> int:
        return len(self.shape(value))

    def constant(self, array: np.ndarray, hint: str = "const") -> TensorRef:
        array = np.asarray(array)
        if array.size <= 16 and array.dtype != object:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key not in self._scalars:
                self._scalars[key] = self.graph.add_constant(self.graph.unique_name(hint), array)
            return TensorRef(self._scalars[key])
        return TensorRef(self.graph.add_constant(self.graph.unique_name(hint), array))

    def int64s(self, values: Iterable[int]) -> TensorRef:
        return self.constant(np.asarray(list(values), dtype=np.int64), "ints")

    def tensor(self, value: Any, dtype: np.dtype | None = None, name_hint: str = "") -> TensorRef:
        """An IR tensor for a tensor reference, a constant tensor or a Python number,
        cast to `dtype` when given."""
        if isinstance(value, TensorRef):
            return self.cast(value, dtype) if dtype is not None else value
        if isinstance(value, torch.Tensor):
            key = id(value)
            if key not in self._constants:
                hint = self._constant_names.get(key, (None, name_hint or "const"))[1]
                name = self.graph.add_constant(self.graph.unique_name(hint), to_numpy(value))
                self._constants[key] = (value, name)  # keeps the tensor alive so ids stay unique
            ref = TensorRef(self._constants[key][1])
            if dtype is not None and self.dtype(ref) != dtype:
                return self.constant(self.graph.constants[ref.name].astype(dtype), name_hint or "const")
            return ref
        if isinstance(value, (bool, int, float)):
            if dtype is None:
                dtype = BOOL if isinstance(value, bool) else INT64 if isinstance(value, int) else FLOAT32
            return self.constant(np.asarray(value, dtype=dtype), "scalar")
        if value is None:
            raise Unsupported("a tensor argument is None")
        raise Unsupported(f"expected a tensor, got {type(value).__name__}")

    def cast(self, ref: TensorRef, dtype: np.dtype | None) -> TensorRef:
        if dtype is None or self.dtype(ref) == dtype:
            return ref
        if ref.name in self.graph.constants:
            return self.constant(self.graph.constants[ref.name].astype(dtype), ref.name)
        return self.op("Cast", [ref], {"to": dtypes.to_onnx(dtype)})

    def reshape(self, ref: TensorRef, shape: Sequence[int]) -> TensorRef:
        if tuple(shape) == self.shape(ref):
            return ref
        return self.op("Reshape", [ref, self.int64s(shape)])

    # -- dtype promotion ----------------------------------------------------------------

    def result_dtype(self, *values: Any) -> np.dtype:
        """torch's type promotion over tensors and Python numbers (0-dim tensors count as numbers)."""
        operands = [self._promotion_operand(v) for v in values if v is not None]
        result = operands[0]
        for other in operands[1:]:
            dtype = torch.result_type(result, other)
            dimensioned = any(isinstance(o, torch.Tensor) and o.dim() > 0 for o in (result, other))
            result = torch.empty((0,) if dimensioned else (), dtype=dtype)
        if not isinstance(result, torch.Tensor):
            return numpy_dtype(torch.tensor(result).dtype)
        return numpy_dtype(result.dtype)

    def _promotion_operand(self, value: Any):
        if isinstance(value, TensorRef):
            info = self.info(value)
            shape = (0,) if info.shape is None or len(info.shape) else ()
            return torch.empty(shape, dtype=torch_dtype(info.dtype))
        if isinstance(value, torch.Tensor):
            return torch.empty((0,) if value.dim() else (), dtype=value.dtype)
        if isinstance(value, (bool, int, float)):
            return value
        raise Unsupported(f"expected a tensor or a number, got {type(value).__name__}")


def normalize_dim(dim: int, rank: int) -> int:
    if not -max(rank, 1) <= dim < max(rank, 1):
        raise Unsupported(f"dimension {dim} is out of range for a tensor of rank {rank}")
    return dim + rank if dim < 0 else dim
