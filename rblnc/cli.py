"""The `rblnc` command line: compile, inspect, run."""

from __future__ import annotations

import ast
import json
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import dtypes
from ._version import __version__
from .errors import RBLNError
from .importers import parse_input_option
from .quantize.output_budget import DEFAULT_MIN_OUTPUT_SQNR_DB
from .quantize.sensitivity import DEFAULT_MIN_SQNR_DB


class _Group(click.Group):
    """Turns the library's own errors into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RBLNError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rblnc")
def main() -> None:
    """Compile models for the NPU, inspect .rbln artifacts, run them."""


_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")


def _detect_framework(path: Path) -> str:
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() in _TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    if _is_tensorflow_model(path):
        return "tensorflow"
    raise click.UsageError(
        f"{path}: cannot tell the model's framework from its name (expected .onnx, "
        f"{'/'.join(_TORCHSCRIPT_SUFFIXES)} for a saved TorchScript module, a TF SavedModel directory, "
        ".keras/.h5 or a frozen GraphDef .pb)"
    )


# Keras model files, frozen GraphDefs, and SavedModel directories (tf.saved_model.save, model.export).
_TENSORFLOW_SUFFIXES = (".keras", ".h5", ".hdf5", ".pb")


def _is_tensorflow_model(path: Path) -> bool:
    if path.is_dir():
        return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()
    return path.suffix.lower() in _TENSORFLOW_SUFFIXES


def _compile_model(framework: str, path: Path, input_info, options: dict, constant_args: dict):
    from . import api

    if constant_args and framework == "tensorflow":
        raise click.UsageError("--const binds inputs of ONNX and TorchScript models only")
    if constant_args:
        options = dict(options, constant_args=constant_args)
    if framework == "tensorflow":
        if path.name == "saved_model.pb":  # the SavedModel's own file names its directory
            path = path.parent
        if path.is_file() and path.suffix.lower() == ".pb":
            return api.compile_from_tf_graph_def(path, input_info=input_info, **options)
        return api.compile_from_tf_saved_model(path, input_info, **options)
    compile_function = {"onnx": api.compile_from_onnx, "torchscript": api.compile_from_torchscript}[framework]
    return compile_function(path, input_info=input_info, **options)


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .rbln file.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:1x3x224x224[:float32]",
              help="Shape and dtype of an input (repeat for several); required where the model's are dynamic.")
@click.option("--const", "constants", multiple=True, metavar="NAME=VALUE",
              help="Bind a forward argument (TorchScript) or an input (ONNX) to a value at compile time, "
                   "e.g. sr=16000; control flow on it folds (repeat for several).")
@click.option("--dtype", default="bf16", show_default=True,
              help="Precision of NPU compute: bf16, fp16, fp32, or int8 (quantised ops in int8, the rest "
                   "in bf16; needs --calibrate unless the model is QDQ) (docs/precision.md).")
@click.option("--calibrate", "calibration", type=click.Path(exists=True, path_type=Path),
              default=None, metavar="DATA",
              help="--dtype int8: calibration samples, an .npz of stacked inputs (one array per input name, "
                   "first axis = samples), a folder of .npy/.npz shards, or a folder of images "
                   "(with --calibration-preprocess).")
@click.option("--calibration-preprocess", type=click.Choice(["imagenet", "unit", "none"]), default=None,
              help="--calibrate FOLDER of images: resize to the input's H x W, then imagenet (scale to "
                   "[0, 1], ImageNet mean/std), unit (scale to [0, 1]) or none (0..255).")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default="minmax",
              show_default=True, help="How --calibrate chooses each activation's range.")
@click.option("--int8-ops", type=click.Choice(["auto", "all"]), default="auto", show_default=True,
              help="--calibrate: auto keeps in bf16 the ops int8 would break (SQNR below --min-sqnr-db) and "
                   "those whose modelled int8 saving does not pay for their Quantize/Dequantize conversions; "
                   "all quantises every op int8 can run.")
@click.option("--keep-float", "keep_float", multiple=True, metavar="NAME_OR_OPTYPE",
              help="--calibrate: keep this op (its name in the model or in `rblnc inspect`) or every op of "
                   "this type (e.g. Gemm) in bf16 whatever --int8-ops says (repeat for several).")
@click.option("--min-sqnr-db", type=float, default=None,
              help="--calibrate: an op whose output's SQNR in int8 against the float model (on the calibration "
                   f"data) is below this stays in bf16 [default: {DEFAULT_MIN_SQNR_DB:g} with --int8-ops auto, "
                   "none with --int8-ops all; given, it applies to both].")
@click.option("--min-output-sqnr-db", type=float, default=None,
              help="--calibrate: while a model output's SQNR in int8 against the float model (on the calibration "
                   "data) is below this, the most sensitive int8 ops go back to bf16 [default: "
                   f"{DEFAULT_MIN_OUTPUT_SQNR_DB:g} with --int8-ops auto, none with --int8-ops all].")
@click.option("--export-qdq", "export_qdq", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="OUT.onnx",
              help="--calibrate: also write rblnc's int8 quantisation as a QDQ ONNX file (onnxruntime's QDQ "
                   "format: its scales and zero points, the ops kept in float left float).")
@click.option("-O", "--opt-level", type=click.IntRange(0, 3), default=2, show_default=True)
@click.option("--target", default=None, help="Target preset name or a .toml/.json spec file.")
@click.option("--verify-each", is_flag=True, help="Verify the IR after every pass.")
@click.option("--dump-ir-after", multiple=True, metavar="PASS", help="Print the IR after PASS changes it.")
@click.option("--disable-pass", "disable_passes", multiple=True, metavar="PASS", help="Skip PASS.")
@click.option("--pass-stats", is_flag=True, help="Print what each pass changed and its time.")
@click.option("--host-ops", "host_ops", multiple=True, metavar="OP[,OP...]",
              help="Op types to run on the host CPU, e.g. Softmax,TopK (docs/partitioning.md).")
@click.option("--npu-ops", "npu_ops", multiple=True, metavar="OP[,OP...]",
              help="Op types to keep on the NPU (an error names any the NPU cannot run, with the reason).")
@click.option("--no-host-fallback", is_flag=True,
              help="Fail, listing every op the NPU cannot run, instead of running ops on the host.")
@click.option("--no-refine", is_flag=True,
              help="Keep every supported op on the NPU (no cost-driven moves to the host).")
def compile(model: Path, output: Path, inputs, constants, dtype, calibration, calibration_preprocess,
            calibration_method, int8_ops, keep_float, min_sqnr_db, min_output_sqnr_db, export_qdq, opt_level, target,
            verify_each, dump_ir_after, disable_passes, pass_stats, host_ops, npu_ops, no_host_fallback,
            no_refine) -> None:
    """Compile MODEL (.onnx, TorchScript .pt/.pth/.ts, a TF SavedModel directory, .keras/.h5, a
    frozen .pb) into a .rbln file."""
    from .format.writer import check_output_path

    framework = _detect_framework(model)
    check_output_path(output)
    input_info = [parse_input_option(text) for text in inputs] or None
    constant_args = dict(_parse_constant(text) for text in constants)
    start = time.perf_counter()
    options = dict(
        dtype=dtype, opt_level=opt_level, target=target, verify_each=verify_each,
        dump_ir_after=dump_ir_after, disable_passes=disable_passes,
        host_ops=host_ops, npu_ops=npu_ops, host_fallback=not no_host_fallback, refine_partitions=not no_refine,
        invocation="rblnc " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        progress=lambda message: click.echo(f"  {message}", err=True),
    )
    if calibration is not None:
        options.update(calibration=calibration, calibration_method=calibration_method,
                       calibration_preprocess=calibration_preprocess, int8_ops=int8_ops, show_progress=True,
                       keep_float=list(keep_float), min_sqnr_db=min_sqnr_db, min_output_sqnr_db=min_output_sqnr_db)
    elif keep_float or min_sqnr_db is not None or min_output_sqnr_db is not None or export_qdq is not None:
        given = ("--keep-float" if keep_float else "--min-sqnr-db" if min_sqnr_db is not None
                 else "--min-output-sqnr-db" if min_output_sqnr_db is not None else "--export-qdq")
        raise click.UsageError(f"{given} needs --dtype int8 --calibrate DATA")
    click.echo(f"compiling {model} ({framework})", err=True)
    compiled = _compile_model(framework, model, input_info, options, constant_args)
    compiled.save(output)
    if export_qdq is not None:
        click.echo(f"  wrote QDQ ONNX {compiled.export_qdq(export_qdq)}", err=True)
    seconds = time.perf_counter() - start
    if pass_stats and compiled.report and compiled.report.passes:
        click.echo(compiled.report.passes.table())
    report = _report(compiled.artifact, str(output))
    npu = sum(1 for p in report["partitions"] if p["device"] == "npu")
    click.echo(
        f"wrote {output} ({output.stat().st_size / 2**20:.2f} MiB) in {seconds:.2f}s: "
        f"{len(report['partitions'])} partition(s), {npu} on the NPU; "
        f"nodes {report['nodes_before_passes']} -> {report['nodes_after_passes']}"
    )


def _parse_constant(text: str) -> tuple[str, object]:
    """NAME=VALUE; VALUE a Python literal (16000, 0.5, True, [1, 2]) or else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"{text!r}: expected NAME=VALUE, e.g. sr=16000", param_hint="--const")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value
    return name.strip(), parsed


def _report(artifact, source: str) -> dict:
    from .report import build_report

    return build_report(artifact, source)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--dot", "dot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the partitioned graph as Graphviz DOT to this file (NPU and host in two colours).")
def inspect(artifact: Path, as_json: bool, dot_path: Path | None) -> None:
    """Show what runs where, memory and DMA of ARTIFACT (.rbln)."""
    from .format.reader import load_artifact
    from .report import render_text

    loaded = load_artifact(artifact)
    report = _report(loaded, str(artifact))
    click.echo(json.dumps(report, indent=2) if as_json else render_text(report))
    if dot_path is not None:
        from .report_dot import write_dot

        write_dot(loaded, dot_path)
        click.echo(f"wrote {dot_path} (render with: dot -Tsvg {dot_path} -o graph.svg)", err=True)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("inputs", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write the outputs to this .npz, keyed by output name (stacked when there are several requests); "
                   "with --ray, the folder for the output shards.")
@click.option("--async", "use_async", is_flag=True, help="Run the requests on the AsyncRuntime, overlapped.")
@click.option("--pace", is_flag=True, help="Make every step last its modelled time (the artifact's est_time_ns).")
@click.option("--pace-scale", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Pace at S times the modelled times (slow motion, for an emulator slower than the chip); implies --pace.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Requests the device side may hold at once (--async; default: enough for every device step).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Run the whole input set N times.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a Chrome-trace / Perfetto JSON timeline of every step.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the timeline as a Gantt chart (PNG; needs matplotlib).")
@click.option("--check-finite", is_flag=True,
              help="Warn on stderr about inputs and outputs holding NaN or infinity (the run goes on).")
@click.option("--host-threads", type=click.IntRange(min=1), default=None,
              help="Threads of each onnxruntime session that runs a host partition (default: onnxruntime's).")
@click.option("--profile", "profile", is_flag=True,
              help="Time every emulated command; print time per op type and the slowest commands beside "
                   "their modelled time.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray Data: INPUTS is a .npz or a folder of .npy/.npz shards or images, one row per request; "
                   "-o is the folder for the output shards.")
@click.option("--address", default=None, metavar="ADDR", help="--ray: join the Ray cluster at ADDR (default: a local Ray).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="--ray: actors, each with its own runtime and device.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="--ray: rows per batch handed to an actor.")
def run(artifact: Path, inputs: Path, output: Path | None, use_async: bool, pace: bool, pace_scale: float | None,
        parallel: int | None, repeat: int, trace_path: Path | None, plot_path: Path | None,
        check_finite: bool, host_threads: int | None, profile: bool, use_ray: bool, address: str | None, workers: int,
        batch_size: int) -> None:
    """Run ARTIFACT (.rbln) on the arrays in INPUTS (.npz, keyed by input name).

    An array with one extra leading dimension holds that many requests. With --ray, every row of
    INPUTS is a request and the outputs go to -o OUTPUT_DIR as shards, in input order."""
    import warnings

    from .runtime import AsyncRuntime, Runtime

    pace_value: bool | float = pace_scale if pace_scale is not None else pace
    if use_ray:
        return _run_on_ray(artifact, inputs, output, address=address, workers=workers, batch_size=batch_size,
                           pace=pace_value, parallel=parallel,
                           local_only={"--async": use_async, "--repeat": repeat != 1, "--trace": trace_path,
                                       "--plot": plot_path, "--check-finite": check_finite,
                                       "--host-threads": host_threads, "--profile": profile})
    ray_only = [name for name, given in (("--address", address), ("--workers", workers != 1),
                                         ("--batch-size", batch_size != 64)) if given]
    if ray_only:
        raise click.UsageError(f"{', '.join(ray_only)} appl{'ies' if len(ray_only) == 1 else 'y'} to --ray runs")
    if inputs.is_dir():
        raise click.UsageError(f"{inputs} is a folder; a folder of shards or images is read with --ray")
    if output is not None and output.is_dir():
        raise click.UsageError(f"-o {output} is a folder; without --ray the outputs go to one .npz file")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError("--plot needs matplotlib: pip install 'rblnc[plot]'") from None
    if parallel is not None and not use_async:
        raise click.UsageError("--parallel applies to --async runs")
    tracing = trace_path is not None or plot_path is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if use_async:
            runtime = AsyncRuntime(artifact, pace=pace_value, parallel=parallel, trace=tracing and 10**7,
                                   host_threads=host_threads, profile=profile)
        else:
            runtime = Runtime(artifact, pace=pace_value, trace=tracing and 10**7, host_threads=host_threads,
                              profile=profile)
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    try:
        args, kwargs = _load_inputs(inputs, runtime.input_names)
        requests = _split_requests(runtime.artifact.inputs, args, kwargs, inputs)
        results, latencies, seconds = _run_requests(runtime, requests * repeat, use_async)
    finally:
        if use_async:
            runtime.close(cancel=True)
    first = results[:len(requests)]
    if check_finite:
        _warn_non_finite(runtime, requests, first)
    outputs = [r if isinstance(r, list) else [r] for r in first]
    per_output = list(zip(*outputs))
    for name, values in zip(runtime.output_names, per_output):
        value = values[0] if len(values) == 1 else np.stack(values)
        stats = (f"min {value.min():.4g} max {value.max():.4g} mean {value.mean():.4g}"
                 if value.size and value.dtype.kind in "fiu" else "")
        click.echo(f"{name}: {dtypes.name(value.dtype)}[{'x'.join(map(str, value.shape))}] {stats}")
    _print_summary(runtime, len(results), latencies, seconds, use_async)
    if profile:
        click.echo("")
        click.echo(runtime.profile().table())
    if output is not None:
        arrays = {name: values[0] if len(values) == 1 else np.stack(values)
                  for name, values in zip(runtime.output_names, per_output)}
        np.savez(output, **arrays)
        click.echo(f"wrote {output}")
    if tracing:
        from .runtime.trace import plot_timeline, write_chrome_trace

        title = f"{artifact.name} ({'async' if use_async else 'sync'}{', paced' if pace_value else ''})"
        if trace_path is not None:
            write_chrome_trace(runtime.timeline(), trace_path, title=title)
            click.echo(f"wrote {trace_path} (open in ui.perfetto.dev or chrome://tracing)")
        if plot_path is not None:
            plot_timeline(runtime.timeline(), plot_path, title=title)
            click.echo(f"wrote {plot_path}")


def _run_on_ray(artifact: Path, inputs: Path, output: Path | None, *, address: str | None, workers: int,
                batch_size: int, pace: bool | float, parallel: int | None, local_only: dict) -> None:
    """`rblnc run --ray`: rblnc.ray.batch_run does the work; this checks the options and reports."""
    misplaced = [name for name, given in local_only.items() if given]
    if misplaced:
        raise click.UsageError(f"{', '.join(misplaced)} cannot be combined with --ray")
    if output is None:
        raise click.UsageError("--ray needs -o OUTPUT_DIR, the folder for the output shards")
    if output.exists() and not output.is_dir():
        raise click.UsageError(f"-o {output} is a file; --ray writes its output shards into a folder")
    try:
        from .ray.batch_run import print_summary, run_on_ray
    except ImportError as exc:
        raise click.UsageError(f"--ray needs Ray Data: pip install 'rblnc[ray]' ({exc})") from None
    summary = run_on_ray(artifact, inputs, output, address=address, workers=workers, batch_size=batch_size,
                         pace=pace, parallel=parallel, progress=True)
    print_summary(summary, click.echo)


def _split_requests(specs, args: list, kwargs: dict, path: Path) -> list[tuple[list, dict]]:
    """One request, or N when arrays carry one extra leading dimension of size N (the others are
    shared by every request)."""
    from .errors import InputShapeError

    names = [s.name for s in specs]
    given = dict(zip(names, args)) | kwargs
    counts = {}
    for spec in specs:
        value = given.get(spec.name)
        if value is not None and spec.shape is not None and value.ndim == len(spec.shape) + 1 \
                and tuple(value.shape[1:]) == tuple(spec.shape):
            counts[spec.name] = value.shape[0]
    if not counts:
        return [(args, kwargs)]
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{name!r}: {count}" for name, count in counts.items())
        raise InputShapeError(f"{path}: arrays with an extra leading dimension must agree on the number of "
                              f"requests ({found})")
    count = next(iter(counts.values()))
    positional = len(args)
    requests = []
    for i in range(count):
        values = {n: (v[i] if n in counts else v) for n, v in given.items()}
        requests.append(([values[n] for n in names[:positional]], {n: values[n] for n in names[positional:] if n in values}))
    return requests


def _warn_non_finite(runtime, requests: list, results: list) -> None:
    from .runtime.io import bind_inputs, non_finite_report

    for index, ((args, kwargs), result) in enumerate(zip(requests, results)):
        feeds = bind_inputs(runtime.artifact.inputs, args, kwargs)
        found = non_finite_report("input", runtime.artifact.inputs, [feeds[v.name] for v in runtime.artifact.inputs])
        found += non_finite_report("output", runtime.artifact.outputs, result if isinstance(result, list) else [result])
        if found:
            where = f"request {index}: " if len(requests) > 1 else ""
            click.echo(f"warning: non-finite values: {where}" + "; ".join(found), err=True)


def _run_requests(runtime, requests: list, use_async: bool) -> tuple[list, list[float], float]:
    """Runs every request; returns the results in order, the latencies (s) and the wall time (s)."""
    import threading

    from tqdm import tqdm

    bar = tqdm(total=len(requests), unit="req", file=sys.stderr, delay=1.0, leave=False,
               disable=True if len(requests) < 2 else None)
    lock = threading.Lock()
    start = time.perf_counter()
    if use_async:
        def advance(_task) -> None:
            with lock:
                bar.update()

        tasks = []
        for args, kwargs in requests:
            task = runtime.run(*args, **kwargs)
            task.add_done_callback(advance)
            tasks.append(task)
        results = [task.wait() for task in tasks]
        latencies = [task.latency for task in tasks]
    else:
        results, latencies = [], []
        for args, kwargs in requests:
            began = time.perf_counter()
            results.append(runtime.run(*args, **kwargs))
            latencies.append(time.perf_counter() - began)
            bar.update()
    seconds = time.perf_counter() - start
    bar.close()
    return results, latencies, seconds


def _print_summary(runtime, count: int, latencies: list[float], seconds: float, use_async: bool) -> None:
    from .runtime.engine import Resource, modelled_ns_per_request

    if count == 1:
        click.echo(f"1 inference in {seconds * 1e3:.1f} ms (wall)")
    click.echo(_modelled_line(runtime.artifact))
    mode = "async" if use_async else "sync"
    if runtime.pace_scale:
        mode += ", paced" + (f" x{runtime.pace_scale:g}" if runtime.pace_scale != 1 else "")
    if use_async:
        mode += f", parallel {runtime.parallel}"
    p50, p90, p99 = np.percentile(np.array(latencies) * 1e3, [50, 90, 99])
    npu_ns = modelled_ns_per_request(runtime.steps)[Resource.NPU]
    if npu_ns > 0:
        utilisation = f"{count * npu_ns * 1e-9 * (runtime.pace_scale or 1) / seconds:.1%}"
    else:
        utilisation = "n/a (the artifact carries no timing estimates)"
    click.echo(f"requests: {count} ({mode})")
    click.echo(f"throughput: {count / seconds:.2f} req/s ({seconds:.3f} s wall)")
    click.echo(f"latency: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms")
    click.echo(f"modelled NPU utilisation: {utilisation}")
    if runtime.pace_scale and runtime.overruns:
        click.echo(f"note: on {runtime.overruns} step(s) the emulator took longer than the modelled time, so the "
                   "timeline is the emulator's there; a larger --pace-scale keeps to the model", err=True)


def _modelled_line(artifact) -> str:
    from .report import format_time, modelled_time

    timing = modelled_time(artifact)
    if not timing["total"]:
        return "modelled device time: not estimated in this artifact"
    stages = ", ".join(f"{stage} {format_time(timing[stage])}" for stage in ("h2d", "npu", "host", "d2h"))
    return f"modelled time on {artifact.target.name}: {format_time(timing['total'])} per inference ({stages})"


def _load_inputs(path: Path, names: list[str]):
    from .errors import InputNameError

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise click.BadParameter(f"{path}: not a readable .npz file ({exc})") from None
    if set(arrays) <= set(names):
        return [], arrays
    if all(k.startswith("arr_") for k in arrays):  # np.savez(path, x, y): by position
        return [arrays[f"arr_{i}"] for i in range(len(arrays))], {}
    unknown = sorted(set(arrays) - set(names))
    raise InputNameError(f"{path}: arrays {', '.join(map(repr, unknown))} match no input; "
                         f"the model's inputs are {', '.join(map(repr, names))}")


if __name__ == "__main__":  # pragma: no cover
    main()
