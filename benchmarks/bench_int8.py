"""int8: the emulator's time per inference on a QDQ model beside onnxruntime's on the same file,
and the modelled int8 / bf16 device time, in one run.

    python benchmarks/bench_int8.py [--models resnet50,mobilenet_v2] [--rounds 5] [--small]

Each zoo model (random weights, rblnc.zoo) is exported to ONNX, pre-processed (`quant_pre_process`:
BatchNormalization folded, as onnxruntime's docs ask) and quantised by onnxruntime's
`quantize_static` (QDQ, per-channel weights, MinMax over 8 random inputs); rblnc compiles that QDQ
file (int8 ops with its scales) and the float file (bf16). Both runtimes run in this process with
one intra-op thread, timed in alternating blocks; `ratio` is the median over rounds of emulator /
onnxruntime (lower is better for rblnc). `within 1 LSB` is the share of output elements where
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


def bench(name: str, folder: Path, rounds: int, small: bool) -> dict:
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
    runtime = int8.create_runtime()
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
    run_ours = runtime.run
    run_theirs = lambda v: session.run(None, {spec.name: v})  # noqa: E731
    run_ours(x), run_theirs(x)
    ratios, ours_s, theirs_s = [], [], []
    for _ in range(rounds):
        a, b = _time(run_ours, x, 3), _time(run_theirs, x, 3)
        ours_s.append(a), theirs_s.append(b), ratios.append(a / b)
    precision = precision_summary(int8.artifact)
    npu = lambda compiled: sum(p.est_time_ns for p in compiled.artifact.partitions if p.npu_program)  # noqa: E731
    commands = sum(v["commands"] for v in precision.values())
    return {"model": name, "ours_ms": statistics.median(ours_s) * 1e3, "ort_ms": statistics.median(theirs_s) * 1e3,
            "ratio": statistics.median(ratios), "within": within, "ort_within": ort_within, "within_fp32": within_fp32,
            "modelled": npu(int8) / npu(bf16), "int8_ops": f"{int(precision.get('int8', {}).get('commands', 0))}/{commands}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="the zoo's small input sizes (a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            try:
                rows.append(bench(name, Path(folder), args.rounds, args.small))
            except Exception as exc:  # a model that does not compile is reported, not fatal
                print(f"{name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    print(f"\n{'model':<16} {'emulator int8':>14} {'onnxruntime QDQ':>16} {'ratio':>7} {'within 1 LSB':>13} {'fp32 rest':>10} {'ort ref':>8} "
          f"{'int8/bf16 modelled':>19} {'int8 ops':>9}")
    for r in rows:
        print(f"{r['model']:<16} {r['ours_ms']:>11.2f} ms {r['ort_ms']:>13.2f} ms {r['ratio']:>7.2f} "
              f"{r['within']:>12.2%} {r['within_fp32']:>10.2%} {r['ort_within']:>8.2%} {r['modelled']:>19.2f} {r['int8_ops']:>9}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
