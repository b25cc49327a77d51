"""The NPU emulator's time per inference beside onnxruntime's, on the same ONNX models, in one run.

    python benchmarks/emulator_vs_onnxruntime.py [--models resnet50,yolov8n,unet] [--rounds 5]

Models come from rblnc.zoo at full size (ResNet-50 224x224, YOLOv8n 640x640, UNet 256x256),
exported once to build/bench/. Each configuration is timed in blocks that alternate between
the runtimes (so a neighbour's load on a shared machine hits them alike); the table shows the
median per inference and the ratio emulator / onnxruntime (lower is better for rblnc). The
`modelled` column is the target's modelled device time, for scale; `max err` compares the
emulator's output with onnxruntime's (max |diff| / max |onnxruntime|).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import rblnc
from rblnc import zoo
from rblnc.report import format_time, modelled_time

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "bench"


def export(name: str, fold_batchnorm: bool = False) -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / f"{name}{'_bnfolded' if fold_batchnorm else ''}.onnx"
    if not path.exists():
        zoo.export_onnx(name, path, fold_batchnorm=fold_batchnorm)
    return path


def timed_blocks(runners: dict[str, callable], rounds: int, per_block: int) -> dict[str, float]:
    """Median seconds per call of each runner, measured in alternating blocks."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():  # warm-up: caches, oneDNN primitive creation, thread pools
        fn()
        fn()
    for _ in range(rounds):
        for key, fn in runners.items():
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_model(name: str, label: str, path: Path, precisions: list[str], rounds: int, per_block: int) -> list[dict]:
    entry = zoo.get(name)
    (x,) = entry.example_inputs()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    expected = session.run(None, feed)[0]
    runtimes = {}
    for precision in precisions:
        compiled = rblnc.compile_from_onnx(str(path), dtype=precision)
        runtimes[precision] = compiled.create_runtime()
    runners = {"onnxruntime": lambda: session.run(None, feed)}
    runners.update({p: (lambda rt=rt: rt.run(x)) for p, rt in runtimes.items()})
    medians = timed_blocks(runners, rounds, per_block)
    rows = []
    for precision, runtime in runtimes.items():
        actual = runtime.run(x)
        error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))
        rows.append({
            "model": label, "precision": precision, "onnxruntime_s": medians["onnxruntime"],
            "rblnc_s": medians[precision], "ratio": medians[precision] / medians["onnxruntime"],
            "modelled_ns": modelled_time(runtime.artifact)["total"], "error": error,
            "host_partitions": sum(1 for p in runtime.artifact.partitions if p.device.name == "HOST"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,yolov8n,unet")
    parser.add_argument("--precisions", default="bf16,fp32", help="rblnc precisions (bf16 is the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-block", type=int, default=3)
    parser.add_argument("--no-folded", action="store_true",
                        help="skip the ResNet-50 exported with BatchNormalization folded (what fusion brings)")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")

    print(f"emulator vs onnxruntime {ort.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"median of {args.rounds} x {args.per_block} runs, alternating blocks", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} (a shared machine: compare ratios, not absolute times)\n", flush=True)
    rows = []
    jobs = [(m, m, export(m)) for m in args.models.split(",")]
    if not args.no_folded and "resnet50" in args.models:
        jobs.append(("resnet50", "resnet50 (BN folded)", export("resnet50", fold_batchnorm=True)))
    for name, label, path in jobs:
        rows += bench_model(name, label, path, precisions, args.rounds, args.per_block)
        for row in rows[-len(precisions):]:
            print(f"  measured {row['model']} {row['precision']}: {row['rblnc_s'] * 1e3:.1f} ms vs "
                  f"{row['onnxruntime_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)

    header = (f"{'model':<22} {'rblnc dtype':<11} {'onnxruntime':>12} {'rblnc':>10} {'ratio':>7} "
              f"{'modelled':>10} {'max err':>9} {'host parts':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<22} {r['precision']:<11} {r['onnxruntime_s'] * 1e3:>9.1f} ms "
              f"{r['rblnc_s'] * 1e3:>7.1f} ms {r['ratio']:>7.2f} {format_time(r['modelled_ns']):>10} "
              f"{r['error']:>9.1e} {r['host_partitions']:>10}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nratio = rblnc / onnxruntime (goal: <= 1.0 in bf16, the default; <= 1.2 in fp32). "
          f"load average at end: {load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
