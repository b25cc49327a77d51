"""Async vs sync runtime: the runtime's own cost per request, functional throughput, and paced
throughput against the analytic bound.

Overhead: on two tiny models (Relu on 1x64; Relu -> TopK on the host -> Sigmoid) the time per
request of onnxruntime's own `run`, `Runtime.run`, AsyncRuntime with 2,000 `async_run` under
`asyncio.gather`, and `run().wait()` one at a time (best of 3), beside what asyncio itself costs
to gather 2,000 coroutines that await an already-completed future.

Functional throughput (as fast as the emulator computes): async against sync on a conv net with
a Softmax forced to the host in the middle, and on every zoo model at its small input size, in
alternating rounds: each mode's total requests over its total time, the spread of the rounds'
async/sync and their median.

Paced: for each model 100 requests paced — the AsyncRuntime's throughput against the analytic bound
(1 / the busiest resource's time per request) and the sync Runtime's against 1 / the sum of the
steps — then 100 requests functional (as fast as the emulator computes), async against sync.

Modelled times: the artifact's own est_time_ns, as the compiler's timing model filled them. The emulator computes on this CPU far slower than the modelled chip, so the paced
runs are in slow motion: every modelled time x S, with S calibrated so that the emulator's own
compute fits inside each step (three times over) and no step that computes is shorter than
30 ms (the time a thread may wait for a core on this shared machine). Host work is stretched by the same S, so the
proportions between host and device are the model's.

The emulator and the host partitions compute on one thread each (torch.set_num_threads(1),
onnxruntime intra-op 1): on a shared 2-core machine a 2-thread torch team stalls for whole
scheduler slices whenever the other core is taken, which made the emulator 5-30x slower and its
step times vary 50x between runs; that noise belongs to the emulator, not to the modelled chip.

    python benchmarks/bench_async.py [--requests 100] [--functional-requests 100] [--models resnet50,conv_gelu]
        [--overhead-requests 2000] [--zoo all|none|NAME,...] [--zoo-requests 40] [--conv-requests 200] [--rounds 5] [--busy 0]
        [--sections overhead,functional,paced]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

import rblnc
import rblnc.zoo
from rblnc.runtime.engine import modelled_ns_per_request, throughput_bounds

CALIBRATION_MARGIN = 3.0
# Every computing step lasts at least this long paced: with ~8 runnable processes on 2 cores a
# thread waits that long for a core now and then, and a shorter step would overrun on it.
MIN_PACED_STEP_S = 0.03
HOST_LANES = 2
ONE_THREAD = {"host_threads": 1}
FUNCTIONAL_ROUNDS = 5


def conv_gelu_model(size: int = 64, channels: int = 64, depth: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A conv net with a GELU in the middle: the NPU lacks Erf and Div, so the model runs
    NPU (stem + `depth` convs) -> host (Div, Erf) -> NPU (rest of GELU, `depth` convs, head)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape, scale):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def conv(x, cin, cout, stride, tag):
        w = weight(f"w_{tag}", (cout, cin, 3, 3), (2 / (cin * 9)) ** 0.5)
        nodes.append(helper.make_node("Conv", [x, w], [f"c_{tag}"], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"c_{tag}"], [f"r_{tag}"]))
        return f"r_{tag}"

    x = conv("x", 3, channels, 2, "stem")
    for i in range(depth):
        x = conv(x, channels, channels, 1, f"a{i}")
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              [("sqrt2", math.sqrt(2)), ("one", 1.0), ("half", 0.5)]]
    nodes += [helper.make_node("Div", [x, "sqrt2"], ["g_div"]), helper.make_node("Erf", ["g_div"], ["g_erf"]),
              helper.make_node("Add", ["g_erf", "one"], ["g_add"]), helper.make_node("Mul", [x, "g_add"], ["g_mul"]),
              helper.make_node("Mul", ["g_mul", "half"], ["gelu"])]
    x = "gelu"
    for i in range(depth):
        x = conv(x, channels, channels, 1, f"b{i}")
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", weight("w_fc", (10, channels), 0.1)], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "conv_gelu", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(name: str, folder: Path):
    """(compiled model, samples, description)"""
    if name == "resnet50":
        path = rblnc.zoo.export_onnx("resnet50", folder / "resnet50.onnx", small=True)
        entry = rblnc.zoo.get("resnet50")
        shape = entry.shapes(small=True)[0]
        description = f"ResNet-50 ({'x'.join(map(str, shape))}, NPU only)"
    elif name == "conv_gelu":
        path = folder / "conv_gelu.onnx"
        onnx.save(conv_gelu_model(), path)
        shape = (1, 3, 64, 64)
        description = "conv net, GELU on the host in the middle"
    else:
        raise SystemExit(f"unknown model {name!r}")
    # The NPU runs GELU too; the conv net keeps it on the host so that there is host work to overlap.
    compiled = rblnc.compile_from_onnx(path, dtype="fp32", host_ops=["Gelu"] if name == "conv_gelu" else [])
    rng = np.random.default_rng(0)
    samples = [rng.uniform(0, 1, shape).astype(np.float32) for _ in range(8)]
    return compiled, samples, description


def calibrate(compiled, samples) -> float:
    """The slow-motion factor S: the emulator's compute
    (measured paced, so after the idle gaps pacing leaves; 75th percentile) fits CALIBRATION_MARGIN times
    in each step's S x modelled time."""
    functional = rblnc.Runtime(compiled, trace=True, **ONE_THREAD)
    for x in samples[:2]:
        functional.run(x)  # warm-up
    functional._timeline.clear()
    for x in samples[:5]:
        functional.run(x)
    measured: dict[str, list[float]] = {}
    for r in functional.timeline():
        measured.setdefault(r.step, []).append(r.compute_s * 1e9)
    steps = rblnc.Runtime(compiled).steps
    est = {s.name: s.est_ns for s in steps}
    computing = {s.name for s in steps if s.run is not None}  # DMA steps move no values here
    first_guess = CALIBRATION_MARGIN * 1.5 * max(max(v) / est[k] for k, v in measured.items())
    paced = rblnc.Runtime(compiled, pace=first_guess, trace=True, **ONE_THREAD)
    for x in samples:
        paced.run(x)
    under_pacing: dict[str, list[float]] = {}
    for r in paced.timeline()[len(est):]:  # skip the first request
        under_pacing.setdefault(r.step, []).append(r.compute_s * 1e9)
    # The 75th percentile: a step the shared machine stalls now and then overruns (counted and
    # printed) rather than slowing every step of the benchmark down.
    ratio = max(float(np.percentile(v, 75)) / est[k] for k, v in under_pacing.items() if est[k] > 0)
    shortest = min(est[k] for k in computing if est[k] > 0)
    scale = max(CALIBRATION_MARGIN * ratio, MIN_PACED_STEP_S * 1e9 / shortest)
    magnitude = 10 ** math.floor(math.log10(scale))
    return math.ceil(scale / magnitude * 10) / 10 * magnitude


def throughput_sync(runtime, samples, n: int) -> float:
    """One request after another, every output kept, as asyncio.gather keeps them (a loop that
    dropped each output would let the allocator give the next request the same pages, where
    gather's requests fault fresh ones in: ~130 faults per request for a 512 KB output)."""
    start = time.perf_counter()
    outputs = [runtime.run(samples[i % len(samples)]) for i in range(n)]
    seconds = time.perf_counter() - start
    assert len(outputs) == n
    return n / seconds


def throughput_async(runtime, samples, n: int) -> float:
    """The seed's pattern: submit every request with async_run, collect with asyncio.gather.
    Timed inside the coroutine, which returns only a count: on Python 3.11 asyncio.run formats
    the main task's result when it restores the SIGINT handler (~0.1 s for these outputs)."""
    async def main():
        start = time.perf_counter()
        outputs = await asyncio.gather(*(runtime.async_run(samples[i % len(samples)]) for i in range(n)))
        return len(outputs), time.perf_counter() - start

    count, seconds = asyncio.run(main())
    assert count == n
    return n / seconds


def bench_model(name: str, folder: Path, requests: int, functional_requests: int) -> dict:
    compiled, samples, description = build(name, folder)
    sync_check = rblnc.Runtime(compiled)
    scale = calibrate(compiled, samples)
    steps = rblnc.Runtime(compiled).steps
    host_lanes = HOST_LANES
    bound, serial = throughput_bounds(steps, host_lanes=host_lanes)
    bound, serial = bound / scale, serial / scale
    per_resource = modelled_ns_per_request(steps)
    row = {"model": description, "scale": scale, "bound": bound, "serial": serial,
           "per_resource_ms": {r.value: ns * scale / 1e6 for r, ns in per_resource.items()},
           "partitions": len(compiled.artifact.partitions), "steps": len(steps)}

    paced_sync = rblnc.Runtime(compiled, pace=scale, **ONE_THREAD)
    paced_sync.run(samples[0])
    row["sync"] = throughput_sync(paced_sync, samples, requests)
    row["sync_overruns"] = paced_sync.overruns
    with rblnc.AsyncRuntime(compiled, pace=scale, host_workers=host_lanes, **ONE_THREAD) as runtime:
        runtime.run(samples[0]).wait()
        row["parallel"] = runtime.parallel
        row["async"] = throughput_async(runtime, samples, requests)
        row["async_overruns"] = runtime.overruns
        # The paced async results are the functional ones: pacing only adds time.
        np.testing.assert_array_equal(asyncio.run(runtime.async_run(samples[1])), sync_check.run(samples[1]))

    row.update(functional_rates(compiled, samples, functional_requests))
    return row


def functional_rates(compiled, samples, requests: int, **options) -> dict:
    """Functional async and sync throughput, and async with every request's steps handed lane to
    lane (`pipelined`: the engine's schedule before whole chains, issue 16), in the same rounds.
    The machine is shared, so the modes alternate in rounds (their order rotated each round) and
    each mode's throughput is its total requests over its total time."""
    options = {**ONE_THREAD, **options}
    functional_sync = rblnc.Runtime(compiled, **options)
    functional_sync.run(samples[0])
    modes = ("sync", "async", "pipelined")
    seconds = dict.fromkeys(modes, 0.0)
    round_ratios: dict[str, list[float]] = {"async": [], "pipelined": []}
    per_round = max(1, requests // FUNCTIONAL_ROUNDS)
    with rblnc.AsyncRuntime(compiled, host_workers=HOST_LANES, **options) as runtime, \
            rblnc.AsyncRuntime(compiled, host_workers=HOST_LANES, **options) as pipelined:
        pipelined._engine.whole_chain = pipelined._engine._adaptive = False  # the schedule before
        runtime.run(samples[0]).wait()
        pipelined.run(samples[0]).wait()
        for index in range(FUNCTIONAL_ROUNDS):
            rates = {}
            for mode in modes[index % 3:] + modes[:index % 3]:
                if mode == "sync":
                    rates[mode] = throughput_sync(functional_sync, samples, per_round)
                else:
                    rates[mode] = throughput_async(runtime if mode == "async" else pipelined, samples, per_round)
                seconds[mode] += per_round / rates[mode]
            for mode in round_ratios:
                round_ratios[mode].append(rates[mode] / rates["sync"])
        whole_chain = runtime._engine.whole_chain
    total = per_round * FUNCTIONAL_ROUNDS
    return {"f_sync": total / seconds["sync"], "f_async": total / seconds["async"],
            "f_pipelined": total / seconds["pipelined"], "whole_chain": whole_chain,
            "f_round_ratios": (min(round_ratios["async"]), max(round_ratios["async"])),
            "f_round_median": float(np.median(round_ratios["async"])),
            "f_pipelined_round_ratios": (min(round_ratios["pipelined"]), max(round_ratios["pipelined"]))}


# -- the runtime's own cost per request ----------------------------------------------------------

def _model(nodes, inputs, outputs, initializers=(), name="tiny") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in outputs],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def relu_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 64])], [("y", [1, 64])], name="relu")


def relu_topk_sigmoid_model() -> onnx.ModelProto:
    """Relu -> TopK (kept on the host) -> Sigmoid: NPU -> host -> NPU, each step a few microseconds."""
    k = numpy_helper.from_array(np.array([8], np.int64), "k")
    return _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("TopK", ["r", "k"], ["v", "i"]),
                   helper.make_node("Sigmoid", ["v"], ["y"])], [("x", [1, 64])], [("y", [1, 8])], [k], name="topk")


def conv_softmax_conv_model(channels: int = 32, size: int = 64, seed: int = 0) -> onnx.ModelProto:
    """conv 3x3 -> Softmax (forced to the host) -> conv 3x3: NPU -> host -> NPU, milliseconds each."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.06).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.06).astype(np.float32), "w2")
    return _model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
                   helper.make_node("Softmax", ["a"], ["s"], axis=1),
                   helper.make_node("Conv", ["s", "w2"], ["y"], pads=[1, 1, 1, 1])],
                  [("x", [1, channels, size, size])], [("y", [1, channels, size, size])], [w1, w2], name="conv_softmax")


def per_request_us(run_many, requests: int, repeats: int = 3) -> float:
    """Best of `repeats`: microseconds per request of run_many(requests)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run_many(requests)
        best = min(best, (time.perf_counter() - start) / requests)
    return best * 1e6


def gather_completed_futures(requests: int) -> None:
    """asyncio's own cost: gather coroutines that each await a future that is already done."""
    async def one(loop):
        future = loop.create_future()
        future.set_result(None)
        return await future

    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(one(loop) for _ in range(requests)))

    asyncio.run(main())


def overhead_row(description: str, model: onnx.ModelProto, host_ops: list[str], requests: int) -> dict:
    import onnxruntime as ort

    compiled = rblnc.compile_from_onnx(model, dtype="fp32", host_ops=host_ops)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runtime = rblnc.Runtime(compiled)
    np.testing.assert_allclose(runtime.run(x), session.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)

    def onnxruntime_run(n):
        for _ in range(n):
            session.run(None, {"x": x})

    def sync_run(n):
        for _ in range(n):
            runtime.run(x)

    with rblnc.AsyncRuntime(compiled) as async_runtime:
        def gathered(n):
            async def main():
                await asyncio.gather(*(async_runtime.async_run(x) for _ in range(n)))
            asyncio.run(main())

        def one_at_a_time(n):
            for _ in range(n):
                async_runtime.run(x).wait()

        gathered(100)  # warm-up
        row = {"model": description, "partitions": len(compiled.artifact.partitions),
               "ort": per_request_us(onnxruntime_run, requests), "sync": per_request_us(sync_run, requests),
               "gather": per_request_us(gathered, requests), "wait": per_request_us(one_at_a_time, requests)}
    row["asyncio"] = per_request_us(gather_completed_futures, requests)
    return row


def print_overhead(rows: list[dict], requests: int) -> None:
    print(f"\nThe runtime's own cost, microseconds per request (functional, best of 3; {requests:,} requests;"
          " gather: AsyncRuntime, async_run under asyncio.gather; wait: run().wait() one at a time)")
    print(f"{'model':<40} {'onnxruntime':>12} {'Runtime.run':>12} {'gather':>8} {'wait':>8} {'gather/run':>11}"
          f" {'asyncio gather':>15}")
    for r in rows:
        print(f"{r['model']:<40} {r['ort']:>12.1f} {r['sync']:>12.1f} {r['gather']:>8.1f} {r['wait']:>8.1f}"
              f" {r['gather'] / r['sync']:>10.2f}x {r['asyncio']:>10.1f} ({r['asyncio'] / r['sync']:.2f}x)")


# -- functional throughput: the conv net with a host Softmax and the zoo --------------------------

def functional_rows(zoo: list[str], zoo_requests: int, conv_requests: int, folder: Path) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    print("bench_async: conv -> host Softmax -> conv ...", file=sys.stderr, flush=True)
    compiled = rblnc.compile_from_onnx(conv_softmax_conv_model(), dtype="fp32", host_ops=["Softmax"])
    samples = [rng.standard_normal((1, 32, 64, 64)).astype(np.float32) for _ in range(4)]
    rows.append({"model": "conv3x3 -> Softmax (host) -> conv3x3, 32x64x64", "requests": conv_requests,
                 "partitions": len(compiled.artifact.partitions),
                 **functional_rates(compiled, samples, conv_requests)})
    for name in zoo:
        print(f"bench_async: zoo {name} ...", file=sys.stderr, flush=True)
        entry = rblnc.zoo.get(name)
        path = rblnc.zoo.export_onnx(name, folder / f"{name}.onnx", small=True)
        compiled = rblnc.compile_from_onnx(path, dtype="fp32")
        samples = [entry.example_inputs(small=True, seed=seed)[0] for seed in range(4)]
        shape = "x".join(map(str, entry.shapes(small=True)[0]))
        rows.append({"model": f"zoo {name} ({shape})", "requests": zoo_requests,
                     "partitions": len(compiled.artifact.partitions),
                     **functional_rates(compiled, samples, zoo_requests)})
    return rows


def print_functional(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print("async: the runtime as it is (schedule: whole chains or pipelined, as it chose); pipelined: async with"
          " every step handed lane to lane, the schedule before")
    print("median: of the rounds' async/sync (a burst of other work on the machine during one round moves it less)")
    print(f"{'model':<46} {'parts':>5} {'requests':>8} {'sync req/s':>11} {'async req/s':>12} {'async/sync':>11}"
          f" {'per round':>12} {'median':>7} {'schedule':>9} {'pipelined/sync':>15} {'per round':>12}")
    for r in rows:
        low, high = r["f_round_ratios"]
        plow, phigh = r["f_pipelined_round_ratios"]
        print(f"{r['model']:<46} {r.get('partitions', ''):>5} {r.get('requests', ''):>8} {r['f_sync']:>11.2f}"
              f" {r['f_async']:>12.2f} {r['f_async'] / r['f_sync']:>10.2f}x {low:>5.2f}-{high:.2f}x"
              f" {r['f_round_median']:>6.2f}x"
              f" {'whole' if r['whole_chain'] else 'pipeline':>9} {r['f_pipelined'] / r['f_sync']:>14.2f}x"
              f" {plow:>5.2f}-{phigh:.2f}x")


def main() -> None:
    global FUNCTIONAL_ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--functional-requests", type=int, default=100)
    parser.add_argument("--models", default="resnet50,conv_gelu")
    parser.add_argument("--overhead-requests", type=int, default=2000)
    parser.add_argument("--zoo", default="all", help="zoo models for the functional table: all, none or NAME,...")
    parser.add_argument("--zoo-requests", type=int, default=40)
    parser.add_argument("--conv-requests", type=int, default=200)
    parser.add_argument("--sections", default="overhead,functional,paced")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds of the functional measurements (requests are split among them)")
    parser.add_argument("--busy", type=int, default=0,
                        help="functional section: this many busy-looping processes (own sessions) compete for the cores")
    args = parser.parse_args()
    FUNCTIONAL_ROUNDS = args.rounds
    sections = set(args.sections.split(","))
    torch.set_num_threads(1)  # see the module docstring
    if "overhead" in sections:
        print("bench_async: overhead ...", file=sys.stderr, flush=True)
        overhead = [overhead_row("Relu, 1x64", relu_model(), [], args.overhead_requests),
                    overhead_row("Relu -> TopK (host) -> Sigmoid, 1x64", relu_topk_sigmoid_model(), ["TopK"],
                                 args.overhead_requests)]
        print_overhead(overhead, args.overhead_requests)
    if "functional" in sections:
        zoo = [] if args.zoo == "none" else sorted(rblnc.zoo.TORCH_ZOO) if args.zoo == "all" else args.zoo.split(",")
        # Competitors as another user's work would be: their own sessions (the kernel's autogroup
        # shares CPU between sessions, not threads).
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
                for _ in range(args.busy)]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows = functional_rows(zoo, args.zoo_requests, args.conv_requests, Path(tmp))
        finally:
            for process in busy:
                process.kill()
                process.wait()
        print_functional(rows, f"Functional throughput (unpaced, {FUNCTIONAL_ROUNDS} alternating rounds; one thread each"
                               " for the emulator and each host lane; zoo models at their small input size"
                               f"{f'; {args.busy} busy-looping process(es) beside' if args.busy else ''})")
    if "paced" not in sections:
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"bench_async: {name} ...", file=sys.stderr, flush=True)
            rows.append(bench_model(name, Path(tmp), args.requests, args.functional_requests))

    print(f"\nPaced ({args.requests} requests; modelled times x S, S calibrated so the emulator keeps up)")
    header = (f"{'model':<42} {'S':>6} {'bound':>8} {'async':>8} {'async/':>7} {'1/sum':>8} {'sync':>8} {'sync/':>7}"
              f" {'async/':>7}")
    print(header)
    print(f"{'':<42} {'':>6} {'req/s':>8} {'req/s':>8} {'bound':>7} {'req/s':>8} {'req/s':>8} {'1/sum':>7} {'sync':>7}")
    for r in rows:
        print(f"{r['model']:<42} {r['scale']:>6.3g} {r['bound']:>8.2f} {r['async']:>8.2f} {r['async'] / r['bound']:>7.1%}"
              f" {r['serial']:>8.2f} {r['sync']:>8.2f} {r['sync'] / r['serial']:>7.1%} {r['async'] / r['sync']:>6.2f}x")
    print("\nPer request, paced (ms): " + "; ".join(
        f"{r['model'].split(' (')[0].split(',')[0]}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["per_resource_ms"].items())
        + f" (host shared by {HOST_LANES} lanes; parallel {r['parallel']}; {r['partitions']} partitions, {r['steps']} steps;"
          f" overruns async {r['async_overruns']}, sync {r['sync_overruns']})" for r in rows))

    print_functional(rows, f"Functional, the same models ({args.functional_requests} requests each in {FUNCTIONAL_ROUNDS}"
                           " alternating rounds, as fast as the emulator computes, one thread each for the emulator"
                           " and each host lane; 2-core machine, shared)")


if __name__ == "__main__":
    main()
