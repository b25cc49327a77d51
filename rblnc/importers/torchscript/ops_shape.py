"""Converters of shape, indexing and list ops, and of the values known at compile time (sizes, dtypes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .emit import (
    BOOL, DataDependent, Emitter, Poisoned, TensorRef, Unsupported, normalize_dim, numpy_dtype, scalar_type_number,
    torch_dtype,
)
from .registry import converts, int_list, is_tensor

_INT64_MAX = 2**63 - 1


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


@converts("aten::pop")
def pop(e: Emitter, self, idx=-1, **_):
    """Removes and returns an item of the list in place."""
    if not isinstance(self, list):
        raise Unsupported(f"pop from a {type(self).__name__}")
    return self.pop(idx)


@converts("aten::reverse")
def reverse(e: Emitter, self, **_):
    """Reverses the list in place."""
    self.reverse()


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
    dims = int_list(shape, name="shape")
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
    sizes = int_list(sizes, name="sizes")
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
        axes = [normalize_dim(d, len(shape)) for d in int_list(dim, name="dim")]
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
    perm = [normalize_dim(d, rank) for d in int_list(dims, name="dims")]
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
    sources = [normalize_dim(d, rank) for d in int_list(source, name="source")]
    targets = [normalize_dim(d, rank) for d in int_list(destination, name="destination")]
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
    dims = int_list(size, name="size")
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
    repeats = int_list(repeats, name="repeats")
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
    return _split(e, self, int_list(sizes, name="split sizes"), axis)


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
    """Gather for one integer index tensor; GatherND for several on adjacent dimensions
    (`x[rows, cols]`; boolean masks and index tensors apart, as in `x[i, :, j]`, are refused)."""
    used = [(i, t) for i, t in enumerate(indices) if t is not None]
    if any(e.dtype(t) == BOOL for _, t in used):
        raise DataDependent("indexing with a boolean mask (the result's size depends on the mask's values)")
    if len(used) == 1:
        axis, tensor = used[0]
        return e.op("Gather", [e.tensor(self), e.tensor(tensor)], {"axis": axis})
    axes = [axis for axis, _ in used]
    if axes != list(range(axes[0], axes[0] + len(axes))):
        raise Unsupported("advanced indexing with index tensors on dimensions that are not adjacent")
    return _gather_adjacent(e, self, axes, [t for _, t in used])


def _gather_adjacent(e: Emitter, self, axes: list[int], tensors: list) -> TensorRef:
    """x[..., i0, i1, ...] with index tensors on the adjacent `axes`: their broadcast shape
    replaces those dimensions (torch's rule), as GatherND on x with the indexed axes first."""
    shape = e.shape(self)
    first, count = axes[0], len(axes)
    broadcast = tuple(np.broadcast_shapes(*(e.shape(t) for t in tensors)))
    columns = []
    for t in tensors:
        ref = e.tensor(t, numpy_dtype(torch.int64))
        if e.shape(ref) != broadcast:
            ref = e.op("Expand", [ref, e.int64s(broadcast)])
        columns.append(e.op("Unsqueeze", [ref, e.int64s([len(broadcast)])]))
    stacked = e.op("Concat", columns, {"axis": -1})
    source = e.tensor(self)
    front = axes + [d for d in range(len(shape)) if d not in axes]
    if front != list(range(len(shape))):
        source = e.op("Transpose", [source], {"perm": front})
    gathered = e.op("GatherND", [source, stacked])  # broadcast + (dims before first) + (dims after)
    if first == 0:
        return gathered
    nb = len(broadcast)
    perm = list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, nb + len(shape) - count))
    return e.op("Transpose", [gathered], {"perm": perm})


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
    axes = [normalize_dim(d, rank) for d in int_list(dims, name="dims")]
    n = len(axes)
    return e.op("Slice", [e.tensor(self), e.int64s([-1] * n), e.int64s([-_INT64_MAX] * n), e.int64s(axes),
                          e.int64s([-1] * n)])


@converts("aten::roll")
def roll(e: Emitter, self, shifts, dims=(), **_):
    """Slice + Concat per rolled dimension."""
    shifts, dims = int_list(shifts, name="shifts"), int_list(list(dims), name="dims")
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
    return _pad(e, self, int_list(pad, name="pad"), "constant", value)


@converts("aten::pad")
def pad(e: Emitter, self, pad, mode="constant", value=None, **_):
    """Pad (constant, reflect, replicate)."""
    return _pad(e, self, int_list(pad, name="pad"), mode, value)


@converts("aten::reflection_pad1d", "aten::reflection_pad2d", "aten::reflection_pad3d")
def reflection_pad(e: Emitter, self, padding, **_):
    """Pad (reflect)."""
    return _pad(e, self, int_list(padding, name="padding"), "reflect", None)


@converts("aten::replication_pad1d", "aten::replication_pad2d", "aten::replication_pad3d")
def replication_pad(e: Emitter, self, padding, **_):
    """Pad (edge)."""
    return _pad(e, self, int_list(padding, name="padding"), "replicate", None)


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
    return _filled(e, int_list(size, name="size"), value, torch_dtype(np_dtype))


# ----------------------------------------------------------------------------- writes (x[...] = v)


def broadcast_to(e: Emitter, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """`value` (a tensor or a number) broadcast to `shape` and cast to `dtype`, as torch does
    when it writes it into a tensor of that shape and type."""
    if not is_tensor(value):
        return torch.full(shape, value, dtype=torch_dtype(dtype))
    if isinstance(value, torch.Tensor):
        return value.to(torch_dtype(dtype)).expand(shape).clone()
    ref = e.tensor(value, dtype)
    return ref if e.shape(ref) == tuple(shape) else e.op("Expand", [ref, e.int64s(shape)])


def write_at(e: Emitter, base: Any, positions: torch.Tensor, values: Any, accumulate: bool = False) -> Any:
    """`base` with its elements at the flat `positions` (int64, any shape) set to `values`
    (or increased by them), broadcast to the positions' shape. All constant: a constant.
    A box of the base in order (x[a:b, c:d] = v): Slices and Concats, which the NPU runs.
    Otherwise constant values: Where over a constant mask; run-time values: ScatterND into
    the flattened base."""
    shape, dtype = e.shape(base), e.dtype(base)
    flat = positions.reshape(-1)
    values = broadcast_to(e, values, tuple(positions.shape), dtype)
    if isinstance(base, torch.Tensor) and isinstance(values, torch.Tensor):
        result = base.clone().reshape(-1)
        result.index_put_((flat,), values.reshape(-1), accumulate=accumulate)
        return result.reshape(shape)
    box = None if accumulate else _box(positions, shape)
    if box is not None:
        return _write_box(e, e.tensor(base), box, e.reshape(e.tensor(values), [hi - lo for lo, hi in box]))
    if isinstance(values, torch.Tensor) and not accumulate and len(set(flat.tolist())) == flat.numel():
        mask = torch.zeros(int(np.prod(shape, dtype=np.int64)), dtype=torch.bool)
        mask[flat] = True
        filled = torch.zeros(mask.shape, dtype=torch_dtype(dtype))
        filled[flat] = values.reshape(-1)
        return e.op("Where", [e.tensor(mask.reshape(shape)), e.tensor(filled.reshape(shape)), e.tensor(base)])
    attrs = {"reduction": "add"} if accumulate else {}
    scattered = e.op("ScatterND", [e.reshape(e.tensor(base), [-1]), e.tensor(flat.reshape(-1, 1)),
                                   e.reshape(e.tensor(values), [flat.numel()])], attrs)
    return e.reshape(scattered, shape)


def _box(positions: torch.Tensor, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """[(start, stop) per axis] when `positions` are exactly a box of a tensor of `shape`,
    in its row-major order (what slices with step 1, selects and reshapes of them make)."""
    if positions.numel() == 0:
        return None
    coordinates = np.unravel_index(positions.reshape(-1).numpy(), shape)
    box = [(int(c.min()), int(c.max()) + 1) for c in coordinates]
    expected = flat_positions(shape)[tuple(slice(lo, hi) for lo, hi in box)].reshape(-1)
    return box if torch.equal(expected, positions.reshape(-1)) else None


def _write_box(e: Emitter, base: TensorRef, box: list[tuple[int, int]], values: TensorRef) -> TensorRef:
    """`base` with the box replaced by `values`: along the first axis the box does not span,
    Concat(the part before, the box written into the middle slab, the part after)."""
    shape = e.shape(base)
    axis = next((a for a, (lo, hi) in enumerate(box) if (lo, hi) != (0, shape[a])), None)
    if axis is None:
        return values
    lo, hi = box[axis]

    def part(start: int, stop: int) -> TensorRef:
        return e.op("Slice", [base, e.int64s([start]), e.int64s([stop]), e.int64s([axis])])

    inner_box = list(box)
    inner_box[axis] = (0, hi - lo)
    middle = _write_box(e, part(lo, hi), inner_box, values)
    pieces = ([part(0, lo)] if lo > 0 else []) + [middle] + ([part(hi, shape[axis])] if hi < shape[axis] else [])
    return pieces[0] if len(pieces) == 1 else e.op("Concat", pieces, {"axis": axis})


def flat_positions(shape: tuple[int, ...]) -> torch.Tensor:
    """Each element's flat index, in a tensor of `shape`: applying a view op to it tells which
    elements of the base the view covers."""
    return torch.arange(int(np.prod(shape, dtype=np.int64)), dtype=torch.int64).reshape(shape)


@converts("aten::fill", "aten::zero")
def fill(e: Emitter, self, value=0, **_):
    """A constant, or Expand of the value (what `x[...] = v` writes)."""
    return broadcast_to(e, value, e.shape(self), e.dtype(self))


@converts("aten::copy")
def copy(e: Emitter, self, src, **_):
    """Expand + Cast of the source to the destination's shape and type (`x[...] = y`)."""
    return broadcast_to(e, src, e.shape(self), e.dtype(self))


@converts("aten::index_put")
def index_put(e: Emitter, self, indices, values, accumulate=False, **_):
    """Where (a boolean mask, constant values) or ScatterND (constant integer indices)."""
    shape = e.shape(self)
    masks = [t for t in indices if t is not None and e.dtype(t) == BOOL]
    if len(masks) == 1 and len(indices) == 1 and not accumulate and e.shape(masks[0]) == shape:
        if is_tensor(values) and e.shape(values) not in ((), (1,)):
            raise DataDependent("writing a tensor through a boolean mask (how many values it takes depends on the mask)")
        return e.op("Where", [e.tensor(masks[0], BOOL), e.tensor(values, e.dtype(self)), e.tensor(self)])
    if any(isinstance(t, TensorRef) for t in indices):
        raise Unsupported("index_put_ with indices computed at run time")
    if masks:
        raise Unsupported("index_put_ with a boolean mask that is not the tensor's whole shape")
    positions = flat_positions(shape)[tuple(slice(None) if t is None else t for t in indices)]
    return write_at(e, self, positions, values, accumulate=bool(accumulate))


@converts("aten::repeat_interleave")
def repeat_interleave(e: Emitter, self=None, repeats=None, dim=None, output_size=None, **_):
    """Unsqueeze, Expand, Reshape (one repeat count); Gather (a constant count per element)."""
    if self is None:  # repeat_interleave(repeats): indices, all constants unless repeats is computed
        raise DataDependent("repeat_interleave(repeats) has as many elements as the sum of repeats")
    x = e.tensor(self)
    if dim is None:
        x = e.reshape(x, [int(np.prod(e.shape(x), dtype=np.int64))])
        dim = 0
    shape = list(e.shape(x))
    axis = normalize_dim(dim, len(shape))
    if isinstance(repeats, TensorRef):
        raise DataDependent("repeat_interleave with repeats computed at run time (the output size depends on them)")
    counts = repeats.reshape(-1).tolist() if isinstance(repeats, torch.Tensor) else [int(repeats)]
    if len(counts) == 1:
        count = int(counts[0])
        expanded = e.op("Unsqueeze", [x, e.int64s([axis + 1])])
        target = shape[:axis + 1] + [count] + shape[axis + 1:]
        expanded = e.op("Expand", [expanded, e.int64s(target)])
        return e.reshape(expanded, shape[:axis] + [shape[axis] * count] + shape[axis + 1:])
    if len(counts) != shape[axis]:
        raise Unsupported(f"repeats has {len(counts)} counts for a dimension of {shape[axis]}")
    indices = np.repeat(np.arange(shape[axis], dtype=np.int64), counts)
    return e.op("Gather", [x, e.constant(indices, "repeat_indices")], {"axis": axis})
