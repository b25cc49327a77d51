"""`input_info` — the (name, shape, dtype) list every compile_from_* takes — parsed and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .. import dtypes
from ..errors import ModelImportError


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def parse_input_info(input_info: Iterable[Any] | None) -> list[InputSpec]:
    """Accepts [("x", [1, 3, 224, 224], np.float32), ...] as the vendor SDK does."""
    if input_info is None:
        return []
    if isinstance(input_info, (str, bytes)) or not hasattr(input_info, "__iter__"):
        raise ModelImportError(
            f"input_info must be a list of (name, shape, dtype), got {type(input_info).__name__}"
        )
    specs = []
    for i, entry in enumerate(input_info):
        if isinstance(entry, InputSpec):
            specs.append(entry)
            continue
        if isinstance(entry, str):
            specs.append(parse_input_option(entry))
            continue
        try:
            name, shape, dtype = entry
        except (TypeError, ValueError):
            raise ModelImportError(
                f"input_info[{i}] must be (name, shape, dtype), got {entry!r}"
            ) from None
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ModelImportError(
                f"input_info[{i}] ({name!r}): shape must be a list of integers, got {shape!r}"
            ) from None
        if any(d < 0 for d in dims):
            raise ModelImportError(f"input_info[{i}] ({name!r}): negative dimension in {dims}")
        try:
            np_dtype = dtypes.to_numpy(dtype)
        except TypeError as exc:
            raise ModelImportError(f"input_info[{i}] ({name!r}): {exc}") from None
        specs.append(InputSpec(str(name), dims, np_dtype))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelImportError(f"input_info names an input twice: {', '.join(duplicates)}")
    return specs


_OPTION = re.compile(r"^(?P<name>[^:]+):(?P<shape>\d+(?:x\d+)*|scalar)(?::(?P<dtype>\w+))?$")


def parse_input_option(text: str) -> InputSpec:
    """The command line form NAME:1x3x224x224[:float32]."""
    match = _OPTION.match(text.strip())
    if not match:
        raise ModelImportError(
            f"--input {text!r}: expected NAME:DIMxDIM...[:DTYPE], e.g. x:1x3x224x224:float32"
        )
    shape_text = match["shape"]
    shape = () if shape_text == "scalar" else tuple(int(d) for d in shape_text.split("x"))
    try:
        dtype = dtypes.to_numpy(match["dtype"] or "float32")
    except TypeError as exc:
        raise ModelImportError(f"--input {text!r}: {exc}") from None
    return InputSpec(match["name"], shape, dtype)
