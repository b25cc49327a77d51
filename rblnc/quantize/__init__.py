"""The quantize stage, between the passes and partitioning: calibrate -> choose scales -> rewrite.

`quantize_graph` (stage.py) rewrites the QDQ patterns a model already has into int8 ops (qdq.py);
with `dtype="int8"` and calibration data it first quantises the float model itself: calibrate.py
measures activation ranges, insert.py picks scales and writes the same QDQ form (docs/precision.md),
which qdq_export.py can write out as a QDQ ONNX file."""

from .qdq import rewrite_qdq
from .qdq_export import export_qdq
from .stage import QuantizeReport, quantize_graph

__all__ = ["rewrite_qdq", "export_qdq", "quantize_graph", "QuantizeReport"]
