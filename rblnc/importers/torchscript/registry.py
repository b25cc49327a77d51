"""The converter registry: `@converts("aten::op")` registers `fn(e: Emitter, **args)`.

`args` are the op's inputs by their schema names, each a `TensorRef` (computed at run
time), a `torch.Tensor` (a constant) or a Python value; a converter returns the op's value
(a tuple when the op has several outputs). Ops whose inputs are all constants never get
here: the importer runs them with torch at compile time. The first line of a converter's
docstring says what the op becomes; docs/torch_ops.md is generated from them
(`python -m rblnc.importers.torchscript > docs/torch_ops.md`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .emit import DataDependent, TensorRef, Unsupported

Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}


def converts(*kinds: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for kind in kinds:
            if kind in CONVERTERS:
                raise ValueError(f"{kind} has two converters")
            CONVERTERS[kind] = fn
        return fn

    return register


def is_tensor(value: Any) -> bool:
    return isinstance(value, (TensorRef, torch.Tensor))


def int_list(value: Any, rank: int | None = None, name: str = "argument") -> list[int]:
    """An int list argument; a single int is repeated `rank` times (kernel_size=3 -> [3, 3])."""
    if isinstance(value, int):
        return [value] * (rank or 1)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        if rank is not None and len(value) == 1:
            return list(value) * rank
        return list(value)
    if isinstance(value, (list, tuple)) and any(is_tensor(v) for v in value):
        raise DataDependent(f"{name} is computed from tensor values at run time")
    raise Unsupported(f"{name} must be a list of integers, got {value!r}")


def supported_ops_markdown() -> str:
    """docs/torch_ops.md: every aten/prim op the importer converts, with what it becomes."""
    lines = [
        "# Supported TorchScript ops",
        "",
        "Generated from the converters in `rblnc/importers/torchscript/` by",
        "`python -m rblnc.importers.torchscript > docs/torch_ops.md`; a test fails when it is stale.",
        "",
        "The importer freezes the module (`torch.jit.freeze`), inlines calls and walks the graph.",
        "Besides the ops below:",
        "",
        "- any deterministic op whose inputs are all known at compile time (constants, shapes,",
        "  list arithmetic, `arange`, `meshgrid`, `full`, ...) is run by torch during import and",
        "  becomes a constant, so shape bookkeeping leaves no ops behind;",
        "- an in-place form (`relu_`, `add_`, `fill_`, `copy_`, `index_put_`, ...) is converted like",
        "  its out-of-place op, and a write through a view (`m[a:b, c:d] = k`, `y[0].add_(1)`, a piece",
        "  of `chunk`) also updates the tensor viewed and its other views, as in torch; a write at",
        "  positions computed at run time is refused (`UnsupportedOpError`), never dropped;",
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
