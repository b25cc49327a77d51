"""int8 on a UNet-like model (skip Concats, a nearest upsampling, an AveragePool): the NPU commands,
the Quantize/DequantizeLinear conversions among them, the modelled device time, and rblnc's
agreement with onnxruntime's QDQ reference (graph optimisations off: DequantizeLinear, the fp32
op, QuantizeLinear), for onnxruntime's `quantize_static` files (int8 and uint8 activations) and
rblnc's own quantisation (checked against its QDQ export), in one run.

    python benchmarks/bench_int8_unet.py [--rounds 5]

Run it on two commits to compare them (docs/precision.md has before/after int8 Concat, AveragePool
and nearest Resize). Last, the emulator's time per inference on the 64-channel 128x128 model's
`quantize_static` int8 file against onnxruntime running that file (its default, optimised session),
one intra-op thread each, in alternating blocks: `ratio` is the median over rounds of rblnc / onnxruntime
(comparable across commits and machines' loads, the absolute times are not).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import rblnc


class Unet(torch.nn.Module):
    """Two levels, a nearest upsampling, two skip Concats (two conv results; a conv result and the
    upsampled level), a 3x3 AveragePool without the padding counted."""

    def __init__(self, c=32):
        super().__init__()
        self.e1 = torch.nn.Conv2d(3, c, 3, padding=1)
        self.e1b = torch.nn.Conv2d(c, c, 3, padding=1)
        self.e2 = torch.nn.Conv2d(c, 2 * c, 3, padding=1)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.d1 = torch.nn.Conv2d(3 * c, c, 3, padding=1)
        self.mix = torch.nn.Conv2d(2 * c, c, 3, padding=1)
        self.pool = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.out = torch.nn.Conv2d(c, 4, 1)

    def forward(self, x):
        a = torch.relu(self.e1(x))
        a2 = torch.relu(self.e1b(a))
        b = torch.relu(self.e2(torch.nn.functional.max_pool2d(a2, 2)))
        c = torch.relu(self.d1(torch.cat([a2, self.up(b)], 1)))
        m = torch.relu(self.mix(torch.cat([a, c], 1)))
        return self.out(self.pool(m))


def _samples(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


class _Reader(CalibrationDataReader):
    def __init__(self, samples):
        self._it = iter([{"x": s} for s in samples])

    def get_next(self):
        return next(self._it, None)


def _quantize_static(module, shape, directory: Path, activation_type) -> Path:
    float_path, qdq_path = directory / "float.onnx", directory / f"qdq_{activation_type.name}.onnx"
    torch.onnx.export(module, torch.randn(*shape), str(float_path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    quantize_static(str(float_path), str(qdq_path), _Reader(_samples(shape, 16)), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=activation_type)
    return qdq_path


def _output_scale(path: Path) -> float:
    import onnx

    model = onnx.load(str(path))
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    scale = next(i for i in model.graph.initializer if i.name == last.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def _row(name, compiled, path=None, shape=None) -> list[str]:
    ops = [c.op_type for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]
    row = [name, str(len(ops)), str(sum(o in ("QuantizeLinear", "DequantizeLinear") for o in ops)),
           str(sum(o in ("Concat", "AveragePool") for o in ops)),
           f"{sum(p.est_time_ns for p in compiled.artifact.partitions) / 1e3:.1f} us"]
    if path is None:
        return row + ["", "", ""]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    lsb, runtime = _output_scale(path), compiled.create_runtime()
    steps = np.concatenate([np.abs(np.asarray(runtime.run(x)) - session.run(None, {"x": x})[0]).ravel() / lsb
                            for x in _samples(shape, 8, seed=123)])
    return row + [f"{np.mean(steps < 1e-3):.2%}", f"{np.mean(steps <= 1.001):.3%}", f"{steps.max():.0f} LSB"]


def _time(fn, repeat: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _timing(folder: Path, module, shape, rounds: int) -> None:
    path = _quantize_static(module, shape, folder, QuantType.QInt8)
    runtime = rblnc.compile_from_onnx(path).create_runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = _samples(shape, 1, seed=5)[0]
    runtime.run(x), session.run(None, {"x": x})  # warm up
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_time(lambda: runtime.run(x)))
        theirs.append(_time(lambda: session.run(None, {"x": x})))
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"\nemulator on the quantize_static file, 64 ch, 128x128: rblnc {statistics.median(ours) * 1e3:.1f} ms, "
          f"onnxruntime {statistics.median(theirs) * 1e3:.1f} ms, ratio {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f} over {rounds} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    small, big = (2, 3, 32, 32), (1, 3, 128, 128)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        module = Unet(16).eval()
        for activation_type in (QuantType.QInt8, QuantType.QUInt8):
            path = _quantize_static(module, small, folder, activation_type)
            rows.append(_row(f"quantize_static {activation_type.name}, 16 ch, 32x32",
                             rblnc.compile_from_onnx(path), path, small))
        own = rblnc.compile_from_torch(module, [("x", list(small), "float32")], dtype="int8", int8_ops="all",
                                       calibration=_samples(small, 16))
        rows.append(_row("rblnc int8_ops=all, 16 ch, 32x32 (vs its QDQ export)", own,
                         own.export_qdq(folder / "own.onnx"), small))
    torch.manual_seed(0)
    wide = Unet(64).eval()
    rows.append(_row("rblnc int8_ops=auto, 64 ch, 128x128",
                     rblnc.compile_from_torch(wide, [("x", list(big), "float32")], dtype="int8",
                                              calibration=_samples(big, 2))))
    rows.append(_row("bf16, 64 ch, 128x128", rblnc.compile_from_torch(wide, [("x", list(big), "float32")])))
    header = ["model", "NPU commands", "Q/DQ", "float Concat/AveragePool", "modelled", "equal to ref",
              "within 1 LSB", "worst"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    with tempfile.TemporaryDirectory() as folder:
        _timing(Path(folder), wide, big, args.rounds)


if __name__ == "__main__":
    main()
