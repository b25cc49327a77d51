"""The quantize stage as the compiler runs it: calibrate and insert QDQ (dtype="int8"), then rewrite."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import CompileError
from ..ir.graph import Graph
from ..target import TargetSpec
from .qdq import rewrite_qdq
from .qdq_export import snapshot
from .sensitivity import LayerSensitivity


@dataclass
class QuantizeReport:
    rewritten: int = 0                   # ops that became int8 ops
    calibrated_samples: int = 0          # 0: the model's own QDQ scales were used
    # Activation ranges chosen by calibration, by tensor: (low, high).
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Each op considered for int8 by rblnc's own quantisation: its SQNR against the float model
    # and whether it computes in int8 (else why not), in graph order (sensitivity.py).
    layers: list[LayerSensitivity] = field(default_factory=list)
    # Each model output's SQNR (dB) against the float model once quantised (int8 where rblnc
    # computes int8, fp32 elsewhere) on the first calibration samples; empty when no op is int8.
    output_sqnr_db: dict[str, float] = field(default_factory=dict)
    # rblnc's own quantisation in its QDQ form, before the rewrite into int8 ops (qdq_export.py
    # writes it as a QDQ ONNX file); None when the model was not quantised by rblnc.
    qdq_graph: Graph | None = field(default=None, repr=False)

    def lowest_sqnr(self, count: int = 5) -> list[LayerSensitivity]:
        return sorted(self.layers, key=lambda layer: layer.sqnr_db)[:count]


def has_qdq(graph: Graph) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and not n.domain for n in graph.nodes)


def quantize_graph(graph: Graph, dtype: str, calibration: Any = None, method: str = "minmax", *,
                   progress: Callable[[str], None] | None = None, show_progress: bool | None = None,
                   target: TargetSpec | None = None, ops: str = "auto", keep_float: Iterable[str] = (),
                   min_sqnr_db: float | None = None, min_output_sqnr_db: float | None = None,
                   preprocess: str | None = None) -> QuantizeReport:
    """QDQ patterns the model already has become int8 ops with their scales as given; with
    dtype="int8" and `calibration` (samples, or the path of an .npz or a folder of shards or of
    images made into inputs by `preprocess`), rblnc first quantises the float model itself, keeping
    in float the ops named by `keep_float` and those below the accuracy budget `min_sqnr_db`
    (None: sensitivity.DEFAULT_MIN_SQNR_DB with ops="auto", no budget with ops="all"), and then the
    most sensitive int8 ops while a model output's SQNR is below `min_output_sqnr_db`
    (None: output_budget.DEFAULT_MIN_OUTPUT_SQNR_DB with ops="auto", none with "all")."""
    report = QuantizeReport()
    keep_float = [keep_float] if isinstance(keep_float, str) else list(keep_float or ())
    if keep_float and calibration is None:
        raise CompileError("keep_float applies to rblnc's own quantisation: it needs dtype='int8' and "
                           "calibration data (calibration=..., or --calibrate DATA.npz)")
    if calibration is not None:
        if dtype != "int8":
            raise CompileError(f"calibration data is only used with dtype='int8' (got dtype={dtype!r})")
        from .insert import quantize_float_graph  # numpy + onnxruntime work only int8 compiles need

        if isinstance(calibration, (str, os.PathLike)):
            from .calibration_data import open_calibration

            calibration = open_calibration(calibration, graph, preprocess)

        report.calibrated_samples, report.ranges, report.layers, report.output_sqnr_db = quantize_float_graph(
            graph, calibration, method, progress=progress, show_progress=show_progress, target=target, ops=ops,
            keep_float=keep_float, min_sqnr_db=min_sqnr_db, min_output_sqnr_db=min_output_sqnr_db)
        report.qdq_graph = snapshot(graph)
    elif dtype == "int8" and not has_qdq(graph):
        raise CompileError("dtype='int8' needs calibration data (calibration=..., or --calibrate DATA.npz) "
                           "unless the model is already quantised (QDQ)")
    report.rewritten = rewrite_qdq(graph, {layer.name for layer in report.layers if not layer.int8})
    return report
