"""The quantize stage, between the passes and partitioning: calibrate -> choose scales -> rewrite.

`quantize_graph` (stage.py) rewrites the QDQ patterns a model already has into int8 ops (qdq.py);
with `dtype="int8"` and calibration data it first quantises the float model itself: calibrate.py
measures activation ranges, insert.py picks scales and writes the same QDQ form (docs/precision.md)."""

from .qdq import rewrite_qdq
from .stage import QuantizeReport, quantize_graph

__all__ = ["rewrite_qdq", "quantize_graph", "QuantizeReport"]
