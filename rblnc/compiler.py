"""The compiler driver: IR -> passes -> partition -> lower, with checks between stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ._version import __version__
from .dtypes import MIXED_PRECISIONS, PRECISIONS, float_precision
from .errors import CompileError
from .format.artifact import Artifact, CompileOptions, LayerPrecision
from .ir import Graph, verify_graph
from .lower import lower_graph
from .partition import Legalisation, PartitionOptions, legalize_graph, partition_graph
from .passes import PassContext, PassManager, PassReport, pipeline
from .quantize import QuantizeReport, quantize_graph
from .target import TargetSpec, load_target

# Precisions the emulator reproduces (docs/precision.md).
SUPPORTED_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_PRECISION = "bf16"
OPT_LEVELS = (0, 1, 2, 3)
DEFAULT_OPT_LEVEL = 2


@dataclass
class CompileOptionsIn:
    """Every option a compile_from_* accepts besides the model and input_info."""

    # bf16 by default, as the seed vendor's compiler: the NPU's fast precision (docs/precision.md).
    dtype: str = DEFAULT_PRECISION
    opt_level: int = DEFAULT_OPT_LEVEL
    target: str | TargetSpec | None = None
    verify_each: bool = False
    dump_ir_after: Iterable[str] = ()
    disable_passes: Iterable[str] = ()
    invocation: str = ""
    progress: Callable[[str], None] | None = None
    # Placement (docs/partitioning.md): op types forced to the host / to the NPU ("Softmax,TopK"
    # or a list), whether anything may run on the host at all, and the cost-driven refinement.
    host_ops: Iterable[str] | str = ()
    npu_ops: Iterable[str] | str = ()
    host_fallback: bool = True
    refine_partitions: bool = True
    # dtype="int8" (docs/precision.md): samples to calibrate activation ranges on (an iterable of
    # input dicts or arrays, or the path of an .npz or of a folder of shards or images), and how a
    # range is chosen from them ("minmax", "percentile", "entropy", "mse").
    calibration: Any = None
    calibration_method: str = "minmax"
    # calibration= a folder of images: how an image becomes an input ("imagenet", "unit", "none").
    calibration_preprocess: str | None = None
    # "auto": ops whose modelled int8 saving does not pay for their conversions stay bf16; "all".
    int8_ops: str = "auto"
    # Ops kept in float whatever int8_ops says: node names (rblnc's or the source model's) or
    # op types. And the accuracy budget: an op whose output's SQNR against the float model
    # (calibration data) is below it stays in float (rblnc/quantize/sensitivity.py); None:
    # DEFAULT_MIN_SQNR_DB with int8_ops="auto", no budget with "all".
    keep_float: Iterable[str] | str = ()
    min_sqnr_db: float | None = None
    # The whole model's budget: while a model output's SQNR against the float model is below it,
    # the most sensitive int8 ops go back to float (rblnc/quantize/output_budget.py); None:
    # DEFAULT_MIN_OUTPUT_SQNR_DB with int8_ops="auto", no budget with "all".
    min_output_sqnr_db: float | None = None
    # A progress bar on stderr while calibrating; None: when stderr is a terminal.
    show_progress: bool | None = None


@dataclass
class CompileReport:
    passes: PassReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    # Ops rewritten to fit the target's limits before the support check (docs/partitioning.md).
    legalised: list[Legalisation] = field(default_factory=list)
    # What the quantize stage did (rblnc/quantize/).
    quantized: QuantizeReport | None = None


def check_options(options: CompileOptionsIn) -> None:
    if options.dtype not in PRECISIONS and options.dtype not in MIXED_PRECISIONS:
        raise CompileError(f"dtype {options.dtype!r} is unknown; choose one of {', '.join(SUPPORTED_PRECISIONS)}")
    if options.dtype not in SUPPORTED_PRECISIONS:
        raise CompileError(
            f"dtype {options.dtype!r} is not supported yet; supported: {', '.join(SUPPORTED_PRECISIONS)}"
        )
    if options.opt_level not in OPT_LEVELS:
        raise CompileError(f"opt_level must be one of {OPT_LEVELS}, got {options.opt_level!r}")
    placement = PartitionOptions.build(options.host_ops, options.npu_ops)
    both = sorted(placement.host_ops & placement.npu_ops)
    if both:
        raise CompileError(f"op type(s) {', '.join(both)} are in both host_ops and npu_ops")
    if placement.host_ops and not options.host_fallback:
        raise CompileError(f"host_ops ({', '.join(sorted(placement.host_ops))}) asks for host partitions "
                           "but host fallback is disabled (--no-host-fallback)")


def compile_graph(graph: Graph, options: CompileOptionsIn, source_framework: str) -> tuple[Artifact, CompileReport]:
    check_options(options)
    target = load_target(options.target)
    report = CompileReport()
    say = options.progress or (lambda message: None)

    def stage(name: str, start: float) -> None:
        report.seconds[name] = time.perf_counter() - start

    verify_graph(graph)
    nodes_before = len(graph)
    start = time.perf_counter()
    say(f"optimising {nodes_before} nodes (-O{options.opt_level})")
    try:
        passes = pipeline(options.opt_level, set(options.disable_passes))
        manager = PassManager(passes, verify_each=options.verify_each, dump_after=options.dump_ir_after)
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    report.passes = manager.run(graph, PassContext(dtype=float_precision(options.dtype)))
    verify_graph(graph)
    stage("passes", start)

    start = time.perf_counter()
    report.quantized = quantize_graph(graph, options.dtype, options.calibration, options.calibration_method,
                                      progress=options.progress, show_progress=options.show_progress,
                                      target=target, ops=options.int8_ops, keep_float=options.keep_float,
                                      min_sqnr_db=options.min_sqnr_db,
                                      min_output_sqnr_db=options.min_output_sqnr_db,
                                      preprocess=options.calibration_preprocess)
    if report.quantized.rewritten:
        say(f"quantised {report.quantized.rewritten} op(s) to int8")
    if report.quantized.layers:
        kept = sum(not layer.int8 for layer in report.quantized.layers)
        say(f"int8 sensitivity of {len(report.quantized.layers)} op(s), {kept} kept in float; lowest SQNR: "
            + "; ".join(f"{layer.name} ({layer.op_type}) {layer.sqnr_db:.1f} dB "
                        + ("int8" if layer.int8 else f"float: {layer.reason}")
                        for layer in report.quantized.lowest_sqnr()))
    if report.quantized.output_sqnr_db:
        say("int8 model output SQNR against the float model on the calibration data: " + "; ".join(
            f"{name} {value:.1f} dB" for name, value in report.quantized.output_sqnr_db.items()))
    if report.quantized.rewritten or report.quantized.layers:  # the graph changed
        verify_graph(graph)
    stage("quantize", start)

    start = time.perf_counter()
    placement = PartitionOptions.build(options.host_ops, options.npu_ops, host_fallback=options.host_fallback,
                                       refine=options.refine_partitions, dtype=options.dtype)
    report.legalised = legalize_graph(graph, target, keep=placement.host_ops)
    if report.legalised:
        say(f"legalised {len(report.legalised)} op(s) for {target.name}")
        verify_graph(graph)
    stage("legalize", start)

    start = time.perf_counter()
    say("partitioning")
    plan = partition_graph(graph, target, placement)
    stage("partition", start)

    start = time.perf_counter()
    say(f"lowering {len(plan)} partition(s)")
    artifact = lower_graph(
        graph, plan, target,
        CompileOptions(dtype=options.dtype, opt_level=options.opt_level,
                       invocation=options.invocation, source_framework=source_framework),
        producer=f"rblnc {__version__}",
    )
    artifact.nodes_before_passes = nodes_before
    artifact.nodes_after_passes = len(graph)
    artifact.layer_precision = [
        LayerPrecision(layer.name, layer.op_type, "int8" if layer.int8 else float_precision(options.dtype),
                       float(np.float32(layer.sqnr_db)), layer.reason)  # as the file stores it
        for layer in report.quantized.layers]
    artifact.output_sqnr = {name: float(np.float32(value)) for name, value in report.quantized.output_sqnr_db.items()}
    stage("lower", start)
    return artifact, report
