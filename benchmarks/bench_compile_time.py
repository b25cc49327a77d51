"""Compile time of ResNet-50 (ONNX -> .rbln) against OpenVINO's convert_model + save_model of the same ONNX, in one run."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rblnc
from rblnc import zoo


def time_runs(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first calls pay for lazy imports and one-time set-up in both tools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rblnc_compile(model: Path, out: Path, level: int, stages: dict | None = None):
    def run():
        start = time.perf_counter()
        compiled = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=level)
        compiled_at = time.perf_counter()
        compiled.save(out)
        if stages is not None:
            seconds = compiled.report.seconds
            stages.setdefault("import", []).append(compiled_at - start - sum(seconds.values()))
            for name, value in seconds.items():
                stages.setdefault(name, []).append(value)
            stages.setdefault("write", []).append(time.perf_counter() - compiled_at)
            stages["report"] = compiled.report.passes
    return run


def openvino_convert(model: Path, out: Path):
    import openvino

    def run():
        openvino.save_model(openvino.convert_model(str(model)), str(out))
    return run


def cold(code: str, repeats: int) -> list[float]:
    """Wall time of a fresh interpreter running `code` (imports included), as a user sees the CLI."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="64x64 input instead of 224x224 (a quick check)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = zoo.export_onnx("resnet50", folder / "resnet50.onnx", small=args.small)
        rows = []
        ov = time_runs(openvino_convert(model, folder / "ov.xml"), args.repeats)
        ov_median = statistics.median(ov)
        rows.append(("openvino convert_model + save_model", ov))
        stages: dict[int, dict] = {}
        for level in (0, 1, 2, 3):
            stages[level] = {}
            rows.append((f"rblnc compile_from_onnx + save, -O{level}",
                         time_runs(rblnc_compile(model, folder / f"o{level}.rbln", level, stages[level]), args.repeats)))
        rows.append(("cold process: openvino", cold(
            f"import openvino as ov; ov.save_model(ov.convert_model({str(model)!r}), {str(folder / 'c.xml')!r})",
            args.cold_repeats)))
        rows.append(("cold process: rblnc -O2", cold(
            f"import rblnc; rblnc.compile_from_onnx({str(model)!r}, dtype='fp32').save({str(folder / 'c.rbln')!r})",
            args.cold_repeats)))

    size = "64x64" if args.small else "224x224"
    print(f"ResNet-50 ({size}, fp32 ONNX from rblnc.zoo) compile time; median of {args.repeats} warm runs "
          f"after one warm-up (cold: {args.cold_repeats} fresh processes). The machine may be shared: "
          "compare the ratios, measured in this one run.")
    print(f"{'':44} {'median s':>9} {'min s':>7} {'vs OpenVINO':>12}")
    for name, times in rows:
        reference = ov_median if not name.startswith("cold") else statistics.median(rows[-2][1])
        print(f"{name:44} {statistics.median(times):9.3f} {min(times):7.3f} {statistics.median(times) / reference:11.2f}x")
    print("\nrblnc stages (median s): " + ", ".join(
        f"-O{level}: " + " ".join(f"{k} {statistics.median(v):.3f}" for k, v in s.items() if k != "report")
        for level, s in stages.items()))
    report = stages[3]["report"]
    slowest = sorted(report.stats.values(), key=lambda s: -s.seconds)[:5]
    print("slowest -O3 passes (last run): " + ", ".join(f"{s.name} {s.seconds * 1e3:.1f} ms" for s in slowest)
          + f"; nodes {report.nodes_before} -> {report.nodes_after}")


if __name__ == "__main__":
    main()
