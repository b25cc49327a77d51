"""What the checks on untrusted .rbln files cost: loading with the structural verifier and the
semantic checks against unpacking the same FlatBuffer unchecked, and preparing a runtime with
and without the NPU program shape check. Prints a table; ratios are within one run.

    .venv/bin/python benchmarks/bench_artifact_load.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import onnx

import rblnc
from rblnc.format import rbln_generated as fb
from rblnc.format.reader import load_artifact
from rblnc.format.verify import verify_flatbuffer
from rblnc.format.writer import FOOTER
from rblnc.runtime import executor

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["light_resnet50", "light_vgg19", "light_inception_v2"]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            path = Path(folder) / f"{name}.rbln"
            rblnc.compile_from_onnx(LIGHT / f"{name}.onnx", dtype="fp32").save(path)
            data = path.read_bytes()
            fb_size = FOOTER.unpack_from(data, len(data) - FOOTER.size)[0]
            flatbuffer = memoryview(data)[:fb_size]
            unchecked = best(lambda: fb.ModelT.InitFromObj(fb.Model.GetRootAs(flatbuffer, 0)), args.repeat)
            verify = best(lambda: verify_flatbuffer(flatbuffer), args.repeat)
            crc = best(lambda: zlib.crc32(data), args.repeat)
            checked = best(lambda: load_artifact(path), args.repeat)
            artifact = load_artifact(path)
            with_check = best(lambda: rblnc.Runtime(artifact), max(1, args.repeat // 2))
            original = executor.check_program_shapes
            executor.check_program_shapes = lambda program, opset: None
            try:
                without_check = best(lambda: rblnc.Runtime(artifact), max(1, args.repeat // 2))
            finally:
                executor.check_program_shapes = original
            rows.append((name, len(data), fb_size, unchecked, verify, crc, checked, without_check, with_check))
    print("Loading untrusted .rbln files: cost of the checks (best of runs, ms; machine shared)")
    header = (f"{'model':<20} {'file MiB':>8} {'FB KiB':>7} {'unpack':>8} {'verify':>8} {'crc':>7} {'load':>8} "
              f"{'load/unpack':>11} {'rt':>8} {'rt+shape':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for name, size, fb_size, unchecked, verify, crc, checked, without_check, with_check in rows:
        print(f"{name:<20} {size / 2**20:>8.1f} {fb_size / 1024:>7.1f} {unchecked * 1e3:>8.2f} {verify * 1e3:>8.2f} "
              f"{crc * 1e3:>7.1f} "
              f"{checked * 1e3:>8.2f} {checked / unchecked:>11.2f} {without_check * 1e3:>8.1f} "
              f"{with_check * 1e3:>9.1f} {with_check / without_check:>6.2f}")
    print("unpack: the generated object API alone (no checks, unsafe); verify: the structural walk; crc: zlib.crc32"
          " of the whole file;"
          " load: load_artifact (identifier, CRC-32 of the whole file, verify, unpack, semantic checks);"
          " rt / rt+shape: Runtime() without / with the program shape check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
