"""rblnc: compile models for an NPU, inspect and run the .rbln artifacts."""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    ArtifactError, CompileError, DynamicShapeError, ExecutionError, InputDtypeError, InputError,
    InputNameError, InputShapeError, ModelImportError, RBLNError, RuntimeClosedError,
    UnsupportedOpError,
)
from .errors import ArtifactWriteError, DataDependentError

# Public names from modules that import torch or onnxruntime are loaded on first use, so
# `rblnc inspect` and `import rblnc` stay quick.
_LAZY = {
    "RBLNCompiledModel": "rblnc.api",
    "compile_from_onnx": "rblnc.api",
    "compile_from_tf_function": "rblnc.api",
    "compile_from_tf_graph_def": "rblnc.api",
    "compile_from_tf_saved_model": "rblnc.api",
    "compile_from_torchscript": "rblnc.api",
    "compile_from_torch": "rblnc.api",
    "Runtime": "rblnc.runtime",
    "AsyncRuntime": "rblnc.runtime",
}

__all__ = [
    "__version__", *_LAZY,
    "ArtifactError", "CompileError", "DynamicShapeError", "ExecutionError", "InputDtypeError",
    "InputError", "InputNameError", "InputShapeError", "ModelImportError", "RBLNError",
    "RuntimeClosedError", "UnsupportedOpError",
]
__all__ += ["DataDependentError", "ArtifactWriteError"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rblnc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
