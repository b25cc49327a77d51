"""The `rblnc` command line: compile, inspect, run."""

from __future__ import annotations

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


def _detect_framework(path: Path) -> str:
    if path.suffix.lower() == ".onnx":
        return "onnx"
    raise click.UsageError(f"{path}: cannot tell the model's framework from its name (expected .onnx)")


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .rbln file.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:1x3x224x224[:float32]",
              help="Shape and dtype of an input (repeat for several); required where the model's are dynamic.")
@click.option("--dtype", default="bf16", show_default=True,
              help="Precision of NPU compute: bf16, fp16 or fp32 (docs/precision.md).")
@click.option("-O", "--opt-level", type=click.IntRange(0, 3), default=2, show_default=True)
@click.option("--target", default=None, help="Target preset name or a .toml/.json spec file.")
@click.option("--verify-each", is_flag=True, help="Verify the IR after every pass.")
@click.option("--dump-ir-after", multiple=True, metavar="PASS", help="Print the IR after PASS changes it.")
@click.option("--disable-pass", "disable_passes", multiple=True, metavar="PASS", help="Skip PASS.")
@click.option("--pass-stats", is_flag=True, help="Print what each pass changed and its time.")
def compile(model: Path, output: Path, inputs, dtype, opt_level, target, verify_each, dump_ir_after,
            disable_passes, pass_stats) -> None:
    """Compile MODEL (.onnx) into a .rbln file."""
    from .api import compile_from_onnx

    framework = _detect_framework(model)
    input_info = [parse_input_option(text) for text in inputs] or None
    start = time.perf_counter()
    options = dict(
        dtype=dtype, opt_level=opt_level, target=target, verify_each=verify_each,
        dump_ir_after=dump_ir_after, disable_passes=disable_passes,
        invocation="rblnc " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        progress=lambda message: click.echo(f"  {message}", err=True),
    )
    click.echo(f"compiling {model} ({framework})", err=True)
    compiled = compile_from_onnx(model, input_info, **options)
    compiled.save(output)
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


def _report(artifact, source: str) -> dict:
    from .report import build_report

    return build_report(artifact, source)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(artifact: Path, as_json: bool) -> None:
    """Show what runs where, memory and DMA of ARTIFACT (.rbln)."""
    from .format.reader import load_artifact
    from .report import render_text

    report = _report(load_artifact(artifact), str(artifact))
    click.echo(json.dumps(report, indent=2) if as_json else render_text(report))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the outputs to this .npz, keyed by output name.")
def run(artifact: Path, inputs: Path, output: Path | None) -> None:
    """Run ARTIFACT (.rbln) on the arrays in INPUTS (.npz, keyed by input name)."""
    from .runtime import Runtime

    runtime = Runtime(artifact)
    args, kwargs = _load_inputs(inputs, runtime.input_names)
    start = time.perf_counter()
    results = runtime.run(*args, **kwargs)
    seconds = time.perf_counter() - start
    results = results if isinstance(results, list) else [results]
    for name, value in zip(runtime.output_names, results):
        stats = (f"min {value.min():.4g} max {value.max():.4g} mean {value.mean():.4g}"
                 if value.size and value.dtype.kind in "fiu" else "")
        click.echo(f"{name}: {dtypes.name(value.dtype)}[{'x'.join(map(str, value.shape))}] {stats}")
    click.echo(f"1 inference in {seconds * 1e3:.1f} ms (wall, emulated)")
    click.echo(_modelled_line(runtime.artifact))
    if output is not None:
        np.savez(output, **dict(zip(runtime.output_names, results)))
        click.echo(f"wrote {output}")


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
