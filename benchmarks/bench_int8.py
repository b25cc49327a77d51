"""int8: the emulator's time per inference on a QDQ model, per emulator engine, beside
onnxruntime's on the same file, and the modelled int8 / bf16 device time, in one run.

    python benchmarks/bench_int8.py [--models resnet50,mobilenet_v2] [--rounds 5] [--small] [--onednn]

Each zoo model (random weights, rblnc.zoo) is exported to ONNX, pre-processed (`quant_pre_process`:
BatchNormalization folded, as onnxruntime's docs ask) and quantised by onnxruntime's
`quantize_static` (QDQ, per-channel weights, MinMax over 8 random inputs); rblnc compiles that QDQ
file (int8 ops with its scales) and the float file (bf16). Both runtimes run in this process with
one intra-op thread, timed in alternating blocks. The emulator runs the int8 program on each
engine (rblnc/emulator/npu.py): `torch` (torch's quantized kernels on the exact engine:
QNNPACK on a CPU without VNNI) and `onnxruntime` (the program as one session of ONNX integer
ops, rblnc/emulator/onnx_int8.py); `auto` is what the runtime picks. `ort/torch` is the median
over rounds of the onnxruntime engine's time over the torch engine's; `ratio` the median of the
auto engine's time over onnxruntime running the QDQ file (lower is better for rblnc); `equal`
whether the two engines' outputs are bit-equal. `--onednn` adds the torch engine forced onto
oneDNN's int8 kernels (inexact on a CPU without VNNI: a speed reference only). `within 1 LSB` is the share of output elements where
rblnc's output is within one output-scale step of onnxruntime's on the QDQ file; `ort ref` is the
same share for onnxruntime without graph optimisations (its QDQ reference semantics) against
onnxruntime optimised (fused QLinear kernels): a deep model with random weights amplifies
one-step rounding differences, so that is the agreement any two correct int8 runtimes reach.
`fp32 rest` is rblnc's agreement when the ops the QDQ file leaves in float (EfficientNet's SiLU,
ViT's softmax and normalisations) run in fp32 (`dtype="fp32"`) as onnxruntime runs them, instead
of the default bf16. `int8 / bf16 modelled` is the target's modelled NPU
time of the int8 program over the bf16 program's, `int8 ops` the commands that compute in int8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import rblnc.emulator  # noqa: F401  before torch: its OpenMP wait policy holds here

import onnx  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static  # noqa: E402
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

import rblnc  # noqa: E402
from rblnc import zoo  # noqa: E402
from rblnc.emulator import int8_kernels  # noqa: E402
from rblnc.emulator.npu import ENGINE_VARIABLE  # noqa: E402
from rblnc.format.artifact import Device  # noqa: E402
from rblnc.report import precision_summary  # noqa: E402


class _Samples(CalibrationDataReader):
    def __init__(self, name, samples):
        self._it = iter({name: s} for s in samples)

    def get_next(self):
        return next(self._it, None)


def _time(fn, x, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        fn(x)
    return (time.perf_counter() - start) / repeat


def _runtime(compiled, engine: str):
    previous = os.environ.get(ENGINE_VARIABLE)
    os.environ[ENGINE_VARIABLE] = engine
    try:
        return compiled.create_runtime()
    finally:
        if previous is None:
            del os.environ[ENGINE_VARIABLE]
        else:
            os.environ[ENGINE_VARIABLE] = previous


def _onednn_runtime(compiled):
    """The torch engine with its int8 weights packed for oneDNN, as on a CPU with VNNI."""
    exact = int8_kernels._exact_engine
    int8_kernels._exact_engine = lambda: "onednn"
    try:
        return _runtime(compiled, "torch")
    finally:
        int8_kernels._exact_engine = exact


def _outputs(runtime, x) -> list[np.ndarray]:
    out = runtime.run(x)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


def bench(name: str, folder: Path, rounds: int, small: bool, onednn: bool) -> dict:
    float_path, qdq_path = folder / f"{name}.onnx", folder / f"{name}_qdq.onnx"
    zoo.export_onnx(name, float_path, small=small)
    session_float = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    spec = session_float.get_inputs()[0]
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal(spec.shape).astype(np.float32) for _ in range(8)]
    prepared_path = folder / f"{name}_prepared.onnx"
    quant_pre_process(str(float_path), str(prepared_path))
    quantize_static(str(prepared_path), str(qdq_path), _Samples(spec.name, samples),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    int8 = rblnc.compile_from_onnx(qdq_path)
    bf16 = rblnc.compile_from_onnx(float_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(qdq_path), options, providers=["CPUExecutionProvider"])
    runtimes = {engine: _runtime(int8, engine) for engine in ("torch", "onnxruntime")}
    auto = _runtime(int8, "auto")
    engine_of = next(r.engine for p, r in auto._executor.stages if p.device == Device.NPU)
    runtime = runtimes[engine_of]
    x = rng.standard_normal(spec.shape).astype(np.float32)
    ours, theirs = np.asarray(runtime.run(x)), session.run(None, {spec.name: x})[0]
    model = onnx.load(str(qdq_path))
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    lsb = float(onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == last.input[1])))
    within = float(np.mean(np.abs(ours - theirs) <= lsb * 1.001))
    reference_options = ort.SessionOptions()
    reference_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(qdq_path), reference_options, providers=["CPUExecutionProvider"])
    fp32_islands = np.asarray(rblnc.compile_from_onnx(qdq_path, dtype="fp32").create_runtime().run(x))
    within_fp32 = float(np.mean(np.abs(fp32_islands - theirs) <= lsb * 1.001))
    ort_within = float(np.mean(np.abs(reference.run(None, {spec.name: x})[0] - theirs) <= lsb * 1.001))
    equal = all(np.array_equal(a, b) for a, b in zip(_outputs(runtimes["torch"], x), _outputs(runtimes["onnxruntime"], x)))
    runners = {engine: r.run for engine, r in runtimes.items()}
    if onednn:
        runners["onednn"] = _onednn_runtime(int8).run
    runners["qdq"] = lambda v: session.run(None, {spec.name: v})
    for run in runners.values():
        run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    ratios, engine_ratios = [], []
    for _ in range(rounds):
        measured = {k: _time(run, x, 3) for k, run in runners.items()}
        for k, v in measured.items():
            times[k].append(v)
        ratios.append(measured[engine_of] / measured["qdq"])
        engine_ratios.append(measured["onnxruntime"] / measured["torch"])
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    precision = precision_summary(int8.artifact)
    npu = lambda compiled: sum(p.est_time_ns for p in compiled.artifact.partitions if p.npu_program)  # noqa: E731
    commands = sum(v["commands"] for v in precision.values())
    return {"model": name, "torch_ms": ms["torch"], "engine_ms": ms["onnxruntime"], "onednn_ms": ms.get("onednn"),
            "ort_ms": ms["qdq"], "engine_ratio": statistics.median(engine_ratios),
            "spread": (min(engine_ratios), max(engine_ratios)), "auto": engine_of, "equal": equal,
            "ratio": statistics.median(ratios), "within": within, "ort_within": ort_within, "within_fp32": within_fp32,
            "modelled": npu(int8) / npu(bf16), "int8_ops": f"{int(precision.get('int8', {}).get('commands', 0))}/{commands}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="the zoo's small input sizes (a quick check)")
    parser.add_argument("--onednn", action="store_true",
                        help="also time the torch engine on oneDNN's int8 kernels (inexact without VNNI)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            try:
                rows.append(bench(name, Path(folder), args.rounds, args.small, args.onednn))
            except Exception as exc:  # a model that does not compile is reported, not fatal
                print(f"{name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    print(f"\n{'model':<16} {'torch engine':>13} {'ort engine':>11} {'ort/torch':>17} {'equal':>6} "
          f"{'oneDNN':>10} {'ort QDQ':>10} {'auto':>12} {'ratio':>6} {'within 1 LSB':>13} {'fp32 rest':>10} "
          f"{'ort ref':>8} {'int8/bf16 modelled':>19} {'int8 ops':>9}")
    for r in rows:
        onednn = f"{r['onednn_ms']:>7.1f} ms" if r["onednn_ms"] is not None else f"{'-':>10}"
        spread = f"({r['spread'][0]:.2f}-{r['spread'][1]:.2f})"
        print(f"{r['model']:<16} {r['torch_ms']:>10.1f} ms {r['engine_ms']:>8.1f} ms {r['engine_ratio']:>5.2f} {spread:>11} "
              f"{str(r['equal']):>6} {onednn} {r['ort_ms']:>7.1f} ms {r['auto']:>12} {r['ratio']:>6.2f} "
              f"{r['within']:>12.2%} {r['within_fp32']:>10.2%} {r['ort_within']:>8.2%} {r['modelled']:>19.2f} {r['int8_ops']:>9}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
