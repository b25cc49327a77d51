"""The NPU emulator's time per inference beside onnxruntime's, on the same ONNX models, in one run.

    python benchmarks/bench_emulator_vs_onnxruntime.py [--models resnet50,yolov8n,unet] [--rounds 5] [--threads 1]

Models come from rblnc.zoo at full size (ResNet-50 224x224, YOLOv8n 640x640, UNet 256x256),
exported once to build/bench/. Each runtime lives in its own worker process (as a user would run
it: their thread pools never compete), and the workers are timed in blocks that alternate, so a
neighbour's load on a shared machine hits them alike; the table shows the median per inference
and the ratio emulator / onnxruntime (lower is better for rblnc): the median, over rounds, of the
ratio of the two blocks of that round, so that a burst of load that hits one block of a round
moves one ratio, not the result. The `modelled` column is the
target's modelled device time, for scale; `max err` compares the emulator's output with
onnxruntime's (max |diff| / max |onnxruntime|). Both runtimes' idle workers sleep (OpenMP's
OMP_WAIT_POLICY=PASSIVE, which rblnc.emulator sets; onnxruntime's allow_spinning=0): spinning
ones cost either runtime several times its time on a shared machine. `--threads N` gives both
N intra-op threads; 1 compares the kernels alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import rblnc.emulator  # noqa: F401  before torch: its OpenMP wait policy then holds here and in the workers

import torch  # noqa: E402

import rblnc  # noqa: E402
from rblnc import zoo  # noqa: E402
from rblnc.report import format_time, modelled_time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "bench"


def export(name: str, fold_batchnorm: bool = False) -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / f"{name}{'_bnfolded' if fold_batchnorm else ''}.onnx"
    if not path.exists():
        zoo.export_onnx(name, path, fold_batchnorm=fold_batchnorm)
    return path


def _worker(connection, kind: str, path: str, name: str, precision: str | None, threads: int | None) -> None:
    """Loads one runtime, then answers ("time", n) with n timings and ("output",) with its output."""
    (x,) = zoo.get(name).example_inputs()
    if threads:
        torch.set_num_threads(threads)
    if kind == "onnxruntime":
        options = ort.SessionOptions()
        # Idle workers sleep, as the emulator's OpenMP workers do (OMP_WAIT_POLICY=PASSIVE): on a
        # shared machine spinning workers slow both runtimes several times over.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        run = lambda: session.run(None, feed)[0]  # noqa: E731
        info = {}
    else:
        runtime = rblnc.compile_from_onnx(path, dtype=precision).create_runtime(host_threads=threads)
        run = lambda: runtime.run(x)  # noqa: E731
        info = {"modelled_ns": modelled_time(runtime.artifact)["total"],
                "host_partitions": sum(1 for p in runtime.artifact.partitions if p.device.name == "HOST")}
    run()
    run()  # warm-up: caches, oneDNN primitive creation, thread pools
    connection.send(("ready", info))
    while True:
        message = connection.recv()
        if message[0] == "time":
            times = []
            for _ in range(message[1]):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            connection.send(times)
        elif message[0] == "output":
            connection.send(run())
        else:
            return


class Worker:
    def __init__(self, kind: str, path: Path, name: str, precision: str | None = None,
                 threads: int | None = None):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, kind, str(path), name, precision, threads),
                                          daemon=True)
        self.process.start()
        status, self.info = self.connection.recv()
        assert status == "ready"

    def time(self, n: int) -> list[float]:
        self.connection.send(("time", n))
        return self.connection.recv()

    def output(self):
        self.connection.send(("output",))
        return self.connection.recv()

    def close(self) -> None:
        self.connection.send(("stop",))
        self.process.join(timeout=30)


def bench_model(name: str, label: str, path: Path, precisions: list[str], rounds: int, per_block: int,
                threads: int | None = None) -> list[dict]:
    workers = {"onnxruntime": Worker("onnxruntime", path, name, threads=threads)}
    workers.update({p: Worker("rblnc", path, name, p, threads) for p in precisions})
    try:
        samples: dict[str, list[float]] = {k: [] for k in workers}
        ratios: dict[str, list[float]] = {p: [] for p in precisions}
        for _ in range(rounds):
            block = {key: statistics.median(worker.time(per_block)) for key, worker in workers.items()}
            for key, value in block.items():
                samples[key].append(value)
            for precision in precisions:
                ratios[precision].append(block[precision] / block["onnxruntime"])
        medians = {k: statistics.median(v) for k, v in samples.items()}
        expected = workers["onnxruntime"].output()
        rows = []
        for precision in precisions:
            actual = workers[precision].output()
            error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))
            rows.append({
                "model": label, "precision": precision, "onnxruntime_s": medians["onnxruntime"],
                "rblnc_s": medians[precision], "ratio": statistics.median(ratios[precision]),
                "error": error, **workers[precision].info,
            })
        return rows
    finally:
        for worker in workers.values():
            worker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,yolov8n,unet")
    parser.add_argument("--precisions", default="bf16,fp32", help="rblnc precisions (bf16 is the default)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-block", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of both runtimes (torch and onnxruntime; default: their own). "
                             "1 compares the kernels without the thread pools' waits on a loaded machine")
    parser.add_argument("--no-folded", action="store_true",
                        help="skip the ResNet-50 exported with BatchNormalization folded (what fusion brings)")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")

    threads = args.threads or f"default (torch {torch.get_num_threads()})"
    print(f"emulator vs onnxruntime {ort.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, threads {threads}; each runtime in its own "
          f"process, {args.rounds} rounds of alternating blocks of {args.per_block} runs; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, onnxruntime allow_spinning=0", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} (a shared machine: compare ratios, not absolute times)\n", flush=True)
    rows = []
    jobs = [(m, m, export(m)) for m in args.models.split(",")]
    if not args.no_folded and "resnet50" in args.models:
        jobs.append(("resnet50", "resnet50 (BN folded)", export("resnet50", fold_batchnorm=True)))
    for name, label, path in jobs:
        rows += bench_model(name, label, path, precisions, args.rounds, args.per_block, args.threads)
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
