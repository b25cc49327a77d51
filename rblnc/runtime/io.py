"""Binding user inputs to the model's (names, shapes, dtypes) and shaping outputs for the user."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .. import dtypes
from ..errors import InputDtypeError, InputNameError, InputShapeError, OutputArrayError
from ..format.artifact import ValueInfo

TENSOR_TYPES = ("np", "pt")


def as_numpy(value: Any) -> np.ndarray:
    """numpy arrays as they are; torch and TensorFlow tensors and array-likes converted."""
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__
    if module.startswith("torch"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and ("tensorflow" in module or "keras" in module):
        return value.numpy()
    return np.asarray(value)


def bind_inputs(specs: Sequence[ValueInfo], args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Positional inputs in the model's order, named ones by name; each checked and made
    contiguous. Raises the input errors, naming the input, what was expected and given."""
    if not kwargs and len(args) == len(specs):
        # Every request comes this way: arrays that are already what the model takes pass as they are.
        bound = {}
        for spec, value in zip(specs, args):
            if (type(value) is not np.ndarray or value.dtype != spec.dtype or value.shape != spec.shape
                    or not value.flags.c_contiguous):
                break
            bound[spec.name] = value
        else:
            return bound
    names = [s.name for s in specs]
    if len(args) > len(specs):
        raise InputNameError(f"the model takes {len(specs)} input(s) ({', '.join(names)}), {len(args)} were given")
    given: dict[str, Any] = dict(zip(names, args))
    for name, value in kwargs.items():
        if name not in names:
            raise InputNameError(f"unknown input {name!r}; the model's inputs are {', '.join(map(repr, names))}")
        if name in given:
            raise InputNameError(f"input {name!r} is given both by position and by name")
        given[name] = value
    missing = [n for n in names if n not in given]
    if missing:
        raise InputNameError(f"missing input(s) {', '.join(map(repr, missing))}; the model's inputs are "
                             f"{', '.join(map(repr, names))}")
    return {spec.name: check_input(spec, given[spec.name]) for spec in specs}


def check_input(spec: ValueInfo, value: Any) -> np.ndarray:
    if isinstance(value, dict):
        raise InputDtypeError(f"input {spec.name!r}: got a dict; pass named inputs as keywords, run(**inputs)")
    if isinstance(value, np.ma.MaskedArray) and np.ma.count_masked(value):
        raise InputDtypeError(
            f"input {spec.name!r}: a masked array with {np.ma.count_masked(value)} masked value(s), which "
            "the model would read as whatever lies under the mask; fill them first, e.g. x.filled(0)"
        )
    array = as_numpy(value)
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, casting="safe"):
            raise InputDtypeError(
                f"input {spec.name!r}: expected {dtypes.name(spec.dtype)}, got {dtypes.name(array.dtype)} "
                f"(convert it, e.g. x.astype(np.{dtypes.name(spec.dtype)}))"
            )
        array = array.astype(spec.dtype)
    if tuple(array.shape) != tuple(spec.shape):
        raise InputShapeError(
            f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(array.shape)}"
        )
    return np.require(array, requirements="C")  # ascontiguousarray would make a scalar 1-D


def non_finite_report(kind: str, specs: Sequence[ValueInfo], arrays: Sequence[np.ndarray]) -> list[str]:
    """One line per floating array holding NaN or infinity, e.g.
    "input 'x': 3 NaN, 1 +inf of 192 values (first at index (0, 1, 2, 3))"."""
    lines = []
    for spec, array in zip(specs, arrays):
        array = np.asarray(array)
        if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
            continue
        values = array if array.dtype.kind == "f" else array.astype(np.float32)
        finite = np.isfinite(values)
        if finite.all():
            continue
        counts = [(int(np.isnan(values).sum()), "NaN"), (int(np.isposinf(values).sum()), "+inf"),
                  (int(np.isneginf(values).sum()), "-inf")]
        first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), values.shape))
        lines.append(f"{kind} {spec.name!r}: " + ", ".join(f"{n} {what}" for n, what in counts if n)
                     + f" of {values.size} values (first at index {first})")
    return lines


def deliver_outputs(arrays: Sequence[np.ndarray], specs: Sequence[ValueInfo], out: Any, tensor_type: str):
    """One output -> an array; several -> a list in output order; `out=` filled in place."""
    if out is not None:
        targets = [out] if not isinstance(out, (list, tuple)) else list(out)
        if len(targets) != len(arrays):
            raise InputNameError(f"out= has {len(targets)} array(s), the model has {len(arrays)} output(s)")
        results = []
        for spec, target, array in zip(specs, targets, arrays):
            target_np = as_numpy(target)  # a torch tensor shares memory with this view
            if tuple(target_np.shape) != tuple(array.shape) or target_np.dtype != array.dtype:
                raise InputShapeError(
                    f"out= for output {spec.name!r}: expected {dtypes.name(array.dtype)}{list(array.shape)}, "
                    f"got {dtypes.name(target_np.dtype)}{list(target_np.shape)}"
                )
            if not target_np.flags.writeable:
                raise OutputArrayError(f"out= for output {spec.name!r} is read-only")
            np.copyto(target_np, array)
            results.append(target)
    else:
        results = list(arrays)
        if tensor_type == "pt":
            import torch

            results = [torch.from_numpy(np.array(a, copy=True) if not a.flags.writeable else a) for a in results]
    return results[0] if len(results) == 1 else results
