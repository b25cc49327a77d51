"""Importers: each source framework's model becomes one IR graph."""

from .input_info import InputSpec, parse_input_info, parse_input_option
from .onnx_importer import import_onnx

__all__ = ["InputSpec", "parse_input_info", "parse_input_option", "import_onnx"]
