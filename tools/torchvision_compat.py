"""Import torchvision's model definitions beside a torch its compiled extension was not built for.

torchvision 0.28's C++ ops do not load with the pinned torch 2.13; its Python side still
registers fake kernels for `torchvision::nms` and `torchvision::qnms` at import, which fails
unless those op schemas exist. Defining the two schemas first lets `torchvision.models` import;
the models the sweep builds never call the ops (detection heads would, and are not swept).
"""

from __future__ import annotations

import torch

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def import_torchvision():
    """torchvision, imported with the op schemas its import needs defined (once)."""
    for name, schema in _SCHEMAS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _defined(name):
            torch.library.define(f"torchvision::{name}", schema)
    import torchvision

    return torchvision


def _defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False
