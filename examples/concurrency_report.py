"""What the two tutorial examples measure after running the tutorial's code: sync against async
throughput (functional, then paced to modelled times), modelled NPU utilisation, how far rblnc's
outputs are from the framework's, and a trace of the paced async run.

Functional runs go as fast as the emulator computes. Paced runs make every step last its
modelled time x S (see docs/runtime.md), the estimates the compiler wrote into the artifact
(rblnc/cost_model.py: NPU commands, host partitions, host-link transfers). The emulator computes
far slower than the modelled chip, so S (slow motion) is chosen so that the emulator's compute
fits inside each step.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rblnc.compiler import DEFAULT_PRECISION, SUPPORTED_PRECISIONS
from rblnc.format.artifact import Device
from rblnc.target import DEFAULT_TARGET
from rblnc.runtime.engine import Resource, StepRecord, modelled_ns_per_request, throughput_bounds
from rblnc.runtime.trace import write_chrome_trace

# S is the smallest slow-motion factor at which the emulator, computing each step in COMPUTE_MARGIN
# x its median time in the functional run, would overrun the modelled steps of each
# resource by at most OVERRUN_BUDGET of their paced time. A per-step rule (every step fits) would
# let the few steps with the smallest modelled times (a lone Concat: a few microseconds, against
# the emulator's fixed cost of a step) set S, and a paced request would last minutes; with this one
# such a step may overrun by a millisecond while the resource keeps to the model. Overruns that do
# happen are counted, and their share of the run printed.
COMPUTE_MARGIN = 1.5
COMPUTE_PERCENTILE = 50
OVERRUN_BUDGET = 0.05


def add_common_arguments(parser: argparse.ArgumentParser, *, size: int, data_root: str) -> None:
    parser.add_argument("--samples", type=int, default=100,
                        help="samples to run (the tutorial's 100); all are run sync and async, functional")
    parser.add_argument("--paced-samples", type=int, default=20,
                        help="of which the paced runs take the first N (0: no paced runs); a paced request "
                             "lasts S x its modelled time, seconds each at full size")
    parser.add_argument("--size", type=int, default=size, help=f"input height and width (the tutorial's {size})")
    parser.add_argument("--data-root", type=Path, default=Path(data_root),
                        help="dataset folder (the tutorial's '.'); generated there when absent")
    parser.add_argument("--pace-scale", type=float, default=None, metavar="S",
                        help="pace at S x the modelled times instead of the S calibrated to the emulator (a small "
                             "S is quick, but the steps the emulator overruns then follow the emulator's time)")
    parser.add_argument("--trace", type=Path, default=None,
                        help="write the paced async run's timeline here (Chrome trace / Perfetto JSON)")
    parser.add_argument("--dtype", choices=SUPPORTED_PRECISIONS, default=None,
                        help=f"compile at this precision (default: the compiler's, {DEFAULT_PRECISION}, as the "
                             "tutorial compiles)")
    parser.add_argument("--target", default=None,
                        help=f"compile for this target (a name in rblnc/targets/ or a .toml; default: the "
                             f"compiler's, {DEFAULT_TARGET}); e.g. edge-tiny, whose slow host link and host make "
                             "more of a request overlap")
    parser.add_argument("--emulator-threads", type=int, default=1,
                        help="torch threads of the NPU emulator (1: the runtime's lanes compute at once on "
                             "a small machine, and a 2-thread torch team stalls when a core is taken)")


def compile_options(args: argparse.Namespace) -> dict:
    """The options the tutorial's compile call gets: none unless --dtype or --target was given."""
    return {name: value for name, value in (("dtype", args.dtype), ("target", args.target)) if value is not None}


def compile_fp32(compile_function: Callable[..., object], args: argparse.Namespace):
    """compile_function(**options) at fp32 for the numerical check, for --target if the model fits
    it there (fp32 doubles the device buffers); else for the default target, and says so."""
    from rblnc.errors import DeviceMemoryError

    options = {**compile_options(args), "dtype": "fp32"}
    try:
        return compile_function(**options)
    except DeviceMemoryError as error:
        if "target" not in options:
            raise
        show(f"fp32 check on {DEFAULT_TARGET}, not {args.target}: {error}")
        del options["target"]
        return compile_function(**options)


def set_emulator_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


# --------------------------------------------------------------------------- running


def run_sync(runtime, inputs: Sequence[np.ndarray], consume: Callable[[int, object], None] | None = None
             ) -> tuple[list, float]:
    """One request at a time; (outputs, seconds). With `consume`, each output is handed to
    consume(index, output) as it arrives and not kept (DeepLabV3+'s are 20 MB each)."""
    outputs = []
    start = time.perf_counter()
    for index, x in enumerate(inputs):
        y = runtime.run(x)
        if consume is None:
            outputs.append(y)
        else:
            consume(index, y)
    return outputs, time.perf_counter() - start


def run_async(runtime, inputs: Sequence[np.ndarray], consume: Callable[[int, object], None] | None = None
              ) -> tuple[list, float]:
    """The tutorial's pattern — every request submitted with async_run, collected with
    asyncio.gather — timed inside the coroutine (on Python 3.11 asyncio.run formats the main
    task's result on the way out, which costs time with many arrays); (outputs, seconds).
    `consume` as for run_sync."""
    async def one(index: int, x: np.ndarray):
        y = await runtime.async_run(x)
        if consume is None:
            return y
        consume(index, y)

    async def main():
        start = time.perf_counter()
        outputs = await asyncio.gather(*(one(i, x) for i, x in enumerate(inputs)))
        return (outputs if consume is None else []), time.perf_counter() - start

    return asyncio.run(main())


@dataclass
class FunctionalResult:
    requests: int
    sync_seconds: float
    async_seconds: float
    measured: dict[str, list[float]]  # seconds each step computed in the sync run, by step name
    outputs_match: bool               # sync and async gave exactly the outputs expected


def functional_comparison(compiled_model, inputs: Sequence[np.ndarray], expected: Sequence) -> FunctionalResult:
    """Sync, then async, on every input, each runtime warmed up by one request first (torch and
    onnxruntime set up on first use); each output is compared with `expected` (the tutorial's)."""
    mismatches = []

    def check(index: int, output) -> None:
        if not _same(output, expected[index]):
            mismatches.append(index)

    sync_runtime = compiled_model.create_runtime(trace=True)
    sync_runtime.run(inputs[0])
    warm_up = len(sync_runtime.timeline())
    _, sync_seconds = run_sync(sync_runtime, inputs, check)
    measured = step_seconds(sync_runtime.timeline()[warm_up:])
    with compiled_model.create_async_runtime() as runtime:
        runtime.run(inputs[0]).wait()
        _, async_seconds = run_async(runtime, inputs, check)
    return FunctionalResult(len(inputs), sync_seconds, async_seconds, measured, not mismatches)


def step_seconds(records: Sequence[StepRecord]) -> dict[str, list[float]]:
    """Per step name, the seconds it computed in each request."""
    measured: dict[str, list[float]] = {}
    for r in records:
        measured.setdefault(r.step, []).append(r.compute_s)
    return measured


# --------------------------------------------------------------------------- estimates and pacing


def pace_scale_for(steps, measured: dict[str, list[float]]) -> float:
    """The slow-motion factor S (see OVERRUN_BUDGET), rounded up to two significant digits."""
    per_resource: dict[Resource, list[tuple[float, float]]] = {}
    for s in steps:
        compute = COMPUTE_MARGIN * float(np.percentile(measured[s.name], COMPUTE_PERCENTILE)) \
            if s.run is not None and s.name in measured else 0.0
        per_resource.setdefault(s.resource, []).append((compute, s.est_ns * 1e-9))

    def keeps_to_the_model(scale: float) -> bool:
        for pairs in per_resource.values():
            modelled = scale * sum(e for _, e in pairs)
            overrun = sum(max(0.0, c - scale * e) for c, e in pairs)
            if overrun > OVERRUN_BUDGET * modelled or (modelled == 0 and overrun > 0):
                return False
        return True

    if not any(e > 0 for pairs in per_resource.values() for _, e in pairs):
        raise ValueError("no step carries a modelled time to pace by")
    low, high = 1.0, 2.0
    while not keeps_to_the_model(high):
        low, high = high, high * 2
        if high > 1e9:
            raise ValueError("no slow-motion factor fits the emulator into the modelled times")
    if keeps_to_the_model(low):
        high = low
    while high / low > 1.01:
        middle = (low * high) ** 0.5
        low, high = (low, middle) if keeps_to_the_model(middle) else (middle, high)
    magnitude = 10 ** math.floor(math.log10(high))
    return math.ceil(high / magnitude * 10) / 10 * magnitude


def overrun_share(records: Sequence[StepRecord], seconds: float) -> float:
    """The time steps ran past their paced length (the emulator slower than S x the model), over the run's wall time."""
    return sum(max(0.0, r.compute_s - r.modelled_ns * 1e-9) for r in records if r.modelled_ns > 0) / seconds


class _Rates:
    """Requests per second of a sync and an async run (fields: requests, sync_seconds, async_seconds)."""

    @property
    def sync_rate(self) -> float:
        return self.requests / self.sync_seconds

    @property
    def async_rate(self) -> float:
        return self.requests / self.async_seconds


@dataclass
class PacedResult(_Rates):
    scale: float
    calibrated: bool
    requests: int
    sync_seconds: float
    async_seconds: float
    bound: float             # req/s the busiest resource allows, at this S
    serial: float            # req/s one request at a time allows, at this S
    per_resource_ms: dict[str, float]
    npu_ns: float            # modelled NPU time per request (unscaled)
    host_lanes: int
    parallel: int
    sync_overruns: int
    async_overruns: int
    sync_overrun_share: float
    async_overrun_share: float
    busy: dict[str, float] = field(default_factory=dict)  # per lane of the async run: busy fraction
    outputs_match: bool = True

    def utilisation(self, seconds: float) -> float:
        """Modelled NPU utilisation: the NPU's modelled busy time over the wall time (as `rblnc run`)."""
        return self.requests * self.npu_ns * 1e-9 * self.scale / seconds


def lane_busy(records: Sequence[StepRecord]) -> dict[str, float]:
    """Per lane, the fraction of the run's span it was busy (steps end-start on the paced timeline)."""
    if not records:
        return {}
    span = max(r.end for r in records) - min(r.start for r in records)
    busy: dict[str, float] = {}
    for r in records:
        busy[r.lane] = busy.get(r.lane, 0.0) + (r.end - r.start)
    order = {Resource.HOST: 0, Resource.H2D: 1, Resource.NPU: 2, Resource.D2H: 3}
    lanes = sorted({(order[r.resource], r.lane) for r in records})
    return {lane: busy[lane] / span for _, lane in lanes}


def paced_comparison(compiled_model, inputs: Sequence[np.ndarray], expected: Sequence, measured: dict,
                     trace_path: Path | None, title: str, scale: float | None = None) -> PacedResult:
    """Sync then async on `inputs`, every step lasting S x its modelled time (S: `scale`, else calibrated)."""
    steps = compiled_model.create_runtime().steps
    calibrated = scale is None
    if calibrated:
        scale = pace_scale_for(steps, measured)

    mismatches = []

    def check(index: int, output) -> None:
        if not _same(output, expected[index]):
            mismatches.append(index)

    # Each runtime is warmed up by one request (not counted): a fresh runtime's first steps set up
    # torch and onnxruntime on its threads and ran 100x longer than later ones.
    sync_runtime = compiled_model.create_runtime(pace=scale, trace=True)
    sync_runtime.run(inputs[0])
    warm_up = len(sync_runtime.timeline())
    sync_overruns = sync_runtime.overruns
    _, sync_seconds = run_sync(sync_runtime, inputs, check)
    sync_records = sync_runtime.timeline()[warm_up:]
    with compiled_model.create_async_runtime(pace=scale, trace=True) as runtime:
        runtime.run(inputs[0]).wait()
        warm_up = len(runtime.timeline())
        async_overruns = runtime.overruns
        _, async_seconds = run_async(runtime, inputs, check)
        records = runtime.timeline()[warm_up:]
        host_lanes, parallel, async_overruns = runtime.host_workers, runtime.parallel, runtime.overruns - async_overruns
    bound, serial = throughput_bounds(steps, host_lanes=host_lanes)
    per_resource = modelled_ns_per_request(steps)
    if trace_path is not None:
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        write_chrome_trace(records, trace_path, title=title)
    return PacedResult(scale, calibrated, len(inputs), sync_seconds, async_seconds, bound / scale,
                       serial / scale, {r.value: ns / 1e6 for r, ns in per_resource.items()},
                       per_resource[Resource.NPU],
                       host_lanes, parallel, sync_runtime.overruns - sync_overruns, async_overruns,
                       overrun_share(sync_records, sync_seconds), overrun_share(records, async_seconds),
                       lane_busy(records), not mismatches)


@dataclass
class PipelineResult(_Rates):
    """The paced sync and async runs of a whole pipeline: the user's preprocess and postprocess
    as host steps of each request's chain, the model's steps between them."""

    scale: float
    requests: int
    sync_seconds: float
    async_seconds: float
    bound: float             # req/s the busiest resource allows (host: partitions + stages, over its lanes)
    serial: float            # req/s one request at a time allows
    per_resource_ms: dict[str, float]
    stage_ms: dict[str, float]  # each stage's paced length per request (its own time x S), median
    host_lanes: int
    outputs_match: bool


STAGES = ("preprocess", "postprocess")


def paced_pipeline_comparison(compiled_model, raws: Sequence, preprocess: Callable, postprocess: Callable,
                              scale: float, trace_path: Path | None = None, title: str = "pipeline"
                              ) -> PipelineResult:
    """Sync then async on `raws` (what preprocess takes), paced at S = `scale`; each result is
    compared with the functional sync pipeline's. A stage has no modelled time: paced, it lasts
    its own time x S, so the bound counts the stages' paced lengths as measured (median)."""
    stages = {"preprocess": preprocess, "postprocess": postprocess}
    functional = compiled_model.create_runtime(**stages)
    expected = [functional.run(raw) for raw in raws]
    mismatches = []

    def check(index: int, output) -> None:
        if not output == expected[index]:
            mismatches.append(index)

    sync_runtime = compiled_model.create_runtime(pace=scale, trace=True, **stages)
    sync_runtime.run(raws[0])
    warm_up = len(sync_runtime.timeline())
    _, sync_seconds = run_sync(sync_runtime, raws, check)
    sync_records = sync_runtime.timeline()[warm_up:]
    with compiled_model.create_async_runtime(pace=scale, trace=True, **stages) as runtime:
        runtime.run(raws[0]).wait()
        warm_up = len(runtime.timeline())
        _, async_seconds = run_async(runtime, raws, check)
        records = runtime.timeline()[warm_up:]
        host_lanes, steps = runtime.host_workers, runtime.steps
    stage_s = {name: float(np.median([r.end - r.start for r in [*sync_records, *records] if r.step == name]))
               for name in STAGES}
    per_resource = {r: ns * 1e-9 * scale for r, ns in modelled_ns_per_request(steps).items()}
    per_resource[Resource.HOST] += sum(stage_s.values())
    busiest = max(seconds / (host_lanes if r is Resource.HOST else 1) for r, seconds in per_resource.items())
    if trace_path is not None:
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        write_chrome_trace(records, trace_path, title=title)
    return PipelineResult(scale, len(raws), sync_seconds, async_seconds, 1 / busiest, 1 / sum(per_resource.values()),
                          {r.value: s * 1e3 for r, s in per_resource.items()},
                          {name: s * 1e3 for name, s in stage_s.items()}, host_lanes, not mismatches)


def describe_pipeline(result: PipelineResult, what: str) -> list[str]:
    r = result
    per_resource = ", ".join(f"{name} {ms:.3g} ms" + (f" ({r.host_lanes} lanes)" if name == "host" else "")
                             for name, ms in r.per_resource_ms.items() if ms > 0)
    stages = ", ".join(f"{name} {ms:.3g} ms" for name, ms in r.stage_ms.items())
    return [
        f"pipeline ({what}), paced at S = {r.scale:g}, {r.requests} samples: the stages run on the host lanes as "
        f"steps of each request ({stages} paced, their own time x S)",
        f"  per request: {per_resource}",
        f"  sync  {r.sync_rate:.3g} req/s (one at a time allows {r.serial:.3g}: {r.sync_rate / r.serial:.0%})",
        f"  async {r.async_rate:.3g} req/s (the busiest resource allows {r.bound:.3g}: {r.async_rate / r.bound:.0%})",
        f"  async/sync {r.async_rate / r.sync_rate:.2f}x (the bound: {r.bound / r.serial:.2f}x)",
    ]


def _same(a, b) -> bool:
    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- comparing with the framework


@dataclass
class Difference:
    """The largest |rblnc - framework| of one part of the outputs, over the samples compared."""

    name: str
    tolerance: float  # absolute
    largest: float = 0.0
    scale: float = 0.0  # the largest |framework output| seen, for context

    def add(self, actual: np.ndarray, expected: np.ndarray) -> None:
        self.largest = max(self.largest, float(np.max(np.abs(actual.astype(np.float64) - expected))))
        self.scale = max(self.scale, float(np.max(np.abs(expected))))

    @property
    def ok(self) -> bool:
        return self.largest <= self.tolerance


def compare_with_framework(outputs: Sequence, inputs: Sequence, framework: Callable[[np.ndarray], np.ndarray],
                           parts: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]]) -> list[Difference]:
    """Runs the framework's own model on every input and keeps, per named part (a slice of the
    output and its absolute tolerance), the largest difference from rblnc's output."""
    differences = {name: Difference(name, tolerance) for name, (_, tolerance) in parts.items()}
    for actual, x in zip(outputs, inputs):
        expected = framework(x)
        for name, (select, _) in parts.items():
            differences[name].add(select(np.asarray(actual)), select(np.asarray(expected)))
    return list(differences.values())


# --------------------------------------------------------------------------- printing


def show(lines: str | list[str]) -> None:
    """Prints as soon as a figure is known (a full-size run takes minutes)."""
    print("\n".join([lines] if isinstance(lines, str) else lines), flush=True)


def describe_compile(compiled_model, seconds: float, function: str) -> str:
    artifact = compiled_model.artifact
    npu = sum(1 for p in artifact.partitions if p.device == Device.NPU)
    host = len(artifact.partitions) - npu
    return (f"compile: {seconds:.1f} s ({function}, {artifact.target.name}, {artifact.options.dtype}, "
            f"-O{artifact.options.opt_level}): "
            f"{len(artifact.partitions)} partitions, {npu} on the NPU, {host} on the host")


def describe_differences(differences: list[Difference], framework: str, samples: int, dtype: str,
                         checked: bool) -> list[str]:
    lines = []
    for d in differences:
        verdict = ("OK" if d.ok else "MISMATCH") if checked else "reported, not checked at this precision"
        lines.append(f"largest |rblnc - {framework}| ({d.name}, {dtype}, {samples} samples): {d.largest:.3g} "
                     f"(outputs up to {d.scale:.3g}; tolerance {d.tolerance:g}): {verdict}")
    return lines


def describe_functional(result: FunctionalResult) -> list[str]:
    sync_rate, async_rate = result.requests / result.sync_seconds, result.requests / result.async_seconds
    return [f"functional, {result.requests} samples (as fast as the emulator computes): sync {sync_rate:.3g} req/s, "
            f"async {async_rate:.3g} req/s: async/sync {async_rate / sync_rate:.2f}x"]


def describe_paced(result: PacedResult) -> list[str]:
    r = result
    per_resource = ", ".join(f"{name} {ms:.3g} ms" + (f" ({r.host_lanes} lanes)" if name == "host" else "")
                             for name, ms in r.per_resource_ms.items() if ms > 0)
    busy = ", ".join(f"{lane} {fraction:.0%}" for lane, fraction in r.busy.items())
    return [
        f"paced, {r.requests} samples: every step lasts S = {r.scale:g} x its modelled time "
        + ("(slow motion, calibrated so the emulator keeps up)" if r.calibrated else "(--pace-scale)"),
        f"  modelled per request: {per_resource}; parallel {r.parallel}",
        f"  sync  {r.sync_rate:.3g} req/s (one at a time allows {r.serial:.3g}: {r.sync_rate / r.serial:.0%}), "
        f"modelled NPU utilisation {r.utilisation(r.sync_seconds):.1%}",
        f"  async {r.async_rate:.3g} req/s (the busiest resource allows {r.bound:.3g}: {r.async_rate / r.bound:.0%}), "
        f"modelled NPU utilisation {r.utilisation(r.async_seconds):.1%}",
        f"  async/sync {r.async_rate / r.sync_rate:.2f}x (the model's bound: {r.bound / r.serial:.2f}x)",
        f"  overruns (steps the emulator computed longer than S x modelled): sync {r.sync_overruns} "
        f"({r.sync_overrun_share:.1%} of the run), async {r.async_overruns} ({r.async_overrun_share:.1%})",
        f"  busy in the async run: {busy}",
    ]
