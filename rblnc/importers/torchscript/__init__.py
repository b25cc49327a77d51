"""TorchScript importer: traced or scripted modules (or saved .pt files) become IR graphs."""

# The op modules register their converters on import.
from . import ops_elementwise, ops_nn, ops_shape  # noqa: F401
from .importer import import_torchscript, trace_module
from .registry import CONVERTERS, supported_ops_markdown

__all__ = ["CONVERTERS", "import_torchscript", "supported_ops_markdown", "trace_module"]
