"""What the per-layer int8 sensitivity measure (rblnc/quantize/sensitivity.py) costs beside the
calibration it follows, and the SQNR it finds, on zoo models in one run.

    python benchmarks/bench_int8_sensitivity.py [--models resnet50,mobilenet_v2] [--samples 8] [--small]

Each zoo model (random weights, rblnc.zoo) is exported to ONNX and compiled with dtype="int8",
int8_ops="all" and `--samples` uniform random calibration inputs. `calibrate` and `sensitivity` are
the seconds of the two steps of the quantize stage (wrapped timers), `ratio` sensitivity /
calibrate (the sensitivity step reads at most sensitivity.SAMPLES samples). SQNR columns: min and
median over the ops int8 could run, in dB; `below budget` counts those under the default
min_sqnr_db, which int8_ops="auto" keeps in bf16. Timings on a shared machine are noisy; the ratio
within one run is what means something.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import rblnc
import rblnc.quantize.insert as insert
from rblnc import zoo
from rblnc.quantize.sensitivity import DEFAULT_MIN_SQNR_DB, SAMPLES


def _timed(seconds: dict[str, float], name: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,mobilenet_v2,unet")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--small", action="store_true", help="the zoo's small input sizes")
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    insert.calibrate = _timed(seconds, "calibrate", insert.calibrate)
    insert.measure_sqnr = _timed(seconds, "sensitivity", insert.measure_sqnr)
    print(f"{args.samples} calibration samples, sensitivity on the first {min(args.samples, SAMPLES)}")
    print(f"{'model':<16} {'ops':>4} {'calibrate':>10} {'sensitivity':>12} {'ratio':>6} "
          f"{'SQNR min':>9} {'median':>7} {'below budget':>13}")
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            entry = zoo.get(name)
            path = Path(directory) / f"{name}.onnx"
            zoo.export_onnx(name, path, small=args.small)
            shapes = entry.shapes(args.small)
            rng = np.random.default_rng(0)
            samples = [{input_name: rng.uniform(0, 1, shape).astype(np.float32)
                        for input_name, shape in zip(entry.input_names, shapes)} for _ in range(args.samples)]
            seconds.clear()
            compiled = rblnc.compile_from_onnx(path, dtype="int8", calibration=samples, int8_ops="all")
            sqnr = np.array([layer.sqnr_db for layer in compiled.report.quantized.layers])
            print(f"{name:<16} {sqnr.size:>4} {seconds['calibrate']:>9.2f}s {seconds['sensitivity']:>11.2f}s "
                  f"{seconds['sensitivity'] / seconds['calibrate']:>6.2f} {sqnr.min():>8.1f} {np.median(sqnr):>7.1f} "
                  f"{int((sqnr < DEFAULT_MIN_SQNR_DB).sum()):>13}")


if __name__ == "__main__":
    main()
