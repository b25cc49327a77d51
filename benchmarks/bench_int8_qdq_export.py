"""rblnc's own int8 quantisation exported as QDQ ONNX (`export_qdq`), checked against onnxruntime on
zoo models, in one run.

    python benchmarks/bench_int8_qdq_export.py [--models resnet50,mobilenet_v2] [--small] [--ops all]

Each zoo model (random weights, rblnc.zoo, BatchNormalization kept: rblnc folds it) is compiled with
`dtype="int8"` on 4 random calibration inputs (minmax) and exported. `checker`: onnx.checker passes
(full check). `within 1 LSB`: share of output elements where rblnc's int8 output is within one
output-scale step of onnxruntime's QDQ reference on the exported file (graph optimisations off:
DequantizeLinear, the fp32 op, QuantizeLinear), on 4 other random inputs; `fp32 rest`: the same
for rblnc's compile of the exported file with `dtype="fp32"`, so the ops left float run in fp32
as onnxruntime runs them instead of bf16; `ort opt`: the same for
onnxruntime's default (optimised, fused int8 kernels) session, which on CPUs without VNNI sums
uint8 x int8 pairs in int16 and saturates. `round trip`: rblnc's compile of the exported file has
the same quantised tensors (scales, zero points, int8 weights, int32 biases) and the same outputs.
A model whose output rblnc leaves in float (no output scale) reports the relative L2 instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import rblnc.emulator  # noqa: F401  before torch: its OpenMP wait policy holds here

import onnx  # noqa: E402

import rblnc  # noqa: E402
from rblnc import zoo  # noqa: E402
from rblnc.format.artifact import TensorKind  # noqa: E402


def _quantised(compiled) -> list:
    found = []
    for partition in compiled.artifact.partitions:
        for tensor in partition.npu_program.tensors if partition.npu_program else []:
            q = tensor.quantization
            if q is not None:
                data = np.asarray(tensor.data).tobytes() if tensor.kind == TensorKind.CONSTANT else tensor.name
                found.append((q.scale.tobytes(), q.zero_point.tobytes(), q.axis, data))
    return sorted(found, key=repr)


def _output_scale(model: onnx.ModelProto) -> float | None:
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    if last.op_type != "DequantizeLinear":
        return None
    scale = next(i for i in model.graph.initializer if i.name == last.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def bench(name: str, folder: Path, small: bool, ops: str) -> dict:
    float_path = folder / f"{name}.onnx"
    zoo.export_onnx(name, float_path, small=small)
    spec = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal(spec.shape).astype(np.float32) for _ in range(4)]
    start = time.perf_counter()
    compiled = rblnc.compile_from_onnx(float_path, dtype="int8", calibration=calibration, int8_ops=ops)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    path = compiled.export_qdq(folder / f"{name}_rblnc_qdq.onnx")
    export_s = time.perf_counter() - start
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    reference_options = ort.SessionOptions()
    reference_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(path), reference_options, providers=["CPUExecutionProvider"])
    optimised = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reimported = rblnc.compile_from_onnx(path)
    runtime, runtime_back = compiled.create_runtime(), reimported.create_runtime()
    runtime_fp32 = rblnc.compile_from_onnx(path, dtype="fp32").create_runtime()
    lsb = _output_scale(model)
    ours, theirs, fused, back, fp32 = [], [], [], [], []
    for x in (rng.standard_normal(spec.shape).astype(np.float32) for _ in range(4)):
        ours.append(np.asarray(runtime.run(x)).ravel())
        theirs.append(reference.run(None, {spec.name: x})[0].ravel())
        fused.append(optimised.run(None, {spec.name: x})[0].ravel())
        back.append(np.asarray(runtime_back.run(x)).ravel())
        fp32.append(np.asarray(runtime_fp32.run(x)).ravel())
    ours, theirs, fused, back, fp32 = map(np.concatenate, (ours, theirs, fused, back, fp32))

    def agreement(values):
        if lsb is None:
            return f"rel. L2 {np.linalg.norm(values - theirs) / np.linalg.norm(theirs):.1e}"
        return f"{np.mean(np.abs(values - theirs) <= lsb * 1.001):.2%}"

    int8_ops = sum(layer.int8 for layer in compiled.report.quantized.layers)
    return {"model": name, "int8 ops": f"{int8_ops} of {len(compiled.report.quantized.layers)}",
            "QDQ pairs": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "checker": "ok", "within 1 LSB": agreement(ours), "fp32 rest": agreement(fp32), "ort opt": agreement(fused),
            "round trip": "same" if _quantised(reimported) == _quantised(compiled)
            and np.array_equal(back, ours) else "DIFFERS",
            "compile s": f"{compile_s:.1f}", "export s": f"{export_s:.2f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2,unet")
    parser.add_argument("--small", action="store_true", help="the zoo's small input sizes (a quick check)")
    parser.add_argument("--ops", default="all", choices=["auto", "all"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            rows.append(bench(name, Path(folder), args.small, args.ops))
            print(f"  {rows[-1]}", file=sys.stderr)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
