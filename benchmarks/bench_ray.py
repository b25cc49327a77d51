"""Ray Data scale-out: rows/s of rblnc.ray.Predictor with 1 and 2 actors on a paced model whose device time dominates.

Each actor owns one AsyncRuntime, i.e. one modelled device, paced to the artifact's modelled
times (pace=True, no slow motion). The NPU is made slow so that its modelled time per row (~12 ms)
dwarfs what the host spends per row (the emulator's compute and Python, well under 1 ms): on this
2-core machine the actors then spend their time waiting on their devices, as actors driving real
NPUs would, and throughput should scale with the number of devices.

The slow NPU: the default target preset with its peak FLOP/s divided by SLOWDOWN (everything
else as the preset), or `--target FILE`. Modelled times: the artifact's own est_time_ns, which
the compiler's timing model (rblnc/cost_model.py) fills from that target; the script stops if a
device step was left without an estimate or if the NPU is not the busiest resource.

rows/s is measured in the steady state: from the first batch any actor starts to the last batch
any actor finishes (actor start-up — importing torch, loading the artifact — is excluded and shown
separately as the end-to-end time). Ray Data waits for all actors before the first batch. A short
unmeasured run goes first: the first Dataset of a process pays one-off costs.

    python benchmarks/bench_ray.py [--rows 1536] [--target slow.toml] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import rblnc
from rblnc.target import load_target

SLOWDOWN = 1e4
ROWS_PER_BLOCK = 64
ACTOR_COUNTS = (1, 2)
WARM_UP_ROWS = 4 * ROWS_PER_BLOCK


def conv_model(size: int = 32, channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x[1,3,size,size] -> Conv 3x3 -> Relu -> Conv 3x3 -> Relu -> y: ~5.6 MFLOP per row at 32x32."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, channels, size, size])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def slow_target(path: str | None):
    if path is not None:
        return load_target(path)
    preset = load_target()
    return dataclasses.replace(preset, name=f"{preset.name}-slow", description=f"{preset.name}, peak FLOP/s / {SLOWDOWN:g}",
                               peak_flops={k: v / SLOWDOWN for k, v in preset.peak_flops.items()})


def build(folder: Path, target_file: str | None) -> tuple[Path, float]:
    """The paced model's .rbln and its modelled NPU time per row (ns), as the compiler estimated it."""
    from rblnc.runtime.engine import Resource, modelled_ns_per_request

    compiled = rblnc.compile_from_onnx(conv_model(), dtype="fp32", target=slow_target(target_file))
    path = folder / "conv_slow.rbln"
    compiled.save(path)
    steps = rblnc.Runtime(path).steps
    unestimated = [s for s in steps if s.resource.on_device and s.est_ns <= 0]
    if unestimated:
        raise SystemExit(f"device steps without a modelled time, so pacing would skip them: {unestimated}")
    per_resource = modelled_ns_per_request(steps)
    busiest = max(per_resource, key=per_resource.get)
    if busiest is not Resource.NPU:
        raise SystemExit(f"the NPU does not dominate: {per_resource}")
    return path, per_resource[Resource.NPU]


def make_timed_predictor():
    """A Predictor that adds each batch's start and end (wall clock) to its rows."""
    import rblnc.ray

    class TimedPredictor(rblnc.ray.Predictor):
        async def __call__(self, batch):
            start = time.time()
            out = await super().__call__(batch)
            count = len(out["y"])
            out["batch_start"] = np.full(count, start)
            out["batch_end"] = np.full(count, time.time())
            return out

    return TimedPredictor


def run(path: Path, x: np.ndarray, actors: int, batch_size: int) -> dict:
    """One Ray Data run over x; blocks of ROWS_PER_BLOCK rows spread evenly over the actors, two
    blocks in flight per actor so its device does not idle between Ray tasks (docs/ray.md)."""
    import ray
    import ray.data

    dataset = ray.data.from_numpy(np.array_split(x, max(1, len(x) // ROWS_PER_BLOCK)))
    outputs = dataset.map_batches(make_timed_predictor(), batch_size=batch_size,
                                  compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=2,
                                                                    max_tasks_in_flight_per_actor=2),
                                  fn_constructor_kwargs={"path": str(path), "pace": True, "worker_column": "worker"})
    began = time.perf_counter()
    columns: dict[str, list] = {"y": [], "worker": [], "batch_start": [], "batch_end": []}
    for batch in outputs.iter_batches(batch_size=None):
        for name in columns:
            columns[name].append(batch[name])
    wall = time.perf_counter() - began
    result = {name: np.concatenate(parts) for name, parts in columns.items()}
    window = result["batch_end"].max() - result["batch_start"].min()
    workers, counts = np.unique(result["worker"], return_counts=True)
    return {"actors": actors, "rows": len(result["y"]), "window": window, "wall": wall,
            "per_worker": sorted(counts.tolist(), reverse=True), "y": result["y"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1536, help="rows (1536: 24 blocks of 64, 12 per actor)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--target", default=None, help="a target spec (.toml/.json) with a slow NPU")
    args = parser.parse_args()

    import ray
    import ray.data

    with tempfile.TemporaryDirectory() as tmp:
        path, npu_ns = build(Path(tmp), args.target)
        x = np.random.default_rng(0).uniform(0, 1, (args.rows, 1, 3, 32, 32)).astype(np.float32)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # the table, not Ray Data's progress lines
        ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        try:
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False
            context.wait_for_min_actors_s = 600
            # The first Dataset a process runs pays one-off costs inside its steady window (measured:
            # whichever of the two runs came first reached ~95 % of its bound, the second ~99.5 %):
            # a short unmeasured run first, so the 1- and 2-actor runs start alike.
            print("bench_ray: warm-up run ...", file=sys.stderr, flush=True)
            run(path, x[:WARM_UP_ROWS], 1, args.batch_size)
            results = []
            for actors in ACTOR_COUNTS:
                print(f"bench_ray: {actors} actor(s) ...", file=sys.stderr, flush=True)
                results.append(run(path, x, actors, args.batch_size))
            check = rblnc.Runtime(path)
            for r in results:  # pacing only adds time: the outputs are the functional ones
                for i in (0, len(x) // 2, len(x) - 1):
                    np.testing.assert_array_equal(r["y"][i], check.run(x[i]))
        finally:
            ray.shutdown()

    print(f"\nRay Data, {args.rows} rows, batch {args.batch_size}, paced (S = 1); modelled NPU {npu_ns / 1e6:.2f} ms per row "
          f"on a slow NPU ({args.target or f'default preset, peak FLOP/s / {SLOWDOWN:g}'}); 2-core machine, shared")
    print(f"{'actors':>6} {'rows/s':>9} {'bound':>9} {'of bound':>9} {'NPU util.':>10} {'steady s':>9} {'end-to-end s':>13}"
          f"  rows per actor")
    for r in results:
        rate = r["rows"] / r["window"]
        bound = r["actors"] * 1e9 / npu_ns
        print(f"{r['actors']:>6} {rate:>9.1f} {bound:>9.1f} {rate / bound:>9.1%} {rate * npu_ns * 1e-9 / r['actors']:>10.1%}"
              f" {r['window']:>9.2f} {r['wall']:>13.2f}  {', '.join(map(str, r['per_worker']))}")
    one, two = (r["rows"] / r["window"] for r in results)
    print(f"\n2 actors / 1 actor: {two / one:.2f}x (goal >= 1.8x)")


if __name__ == "__main__":
    main()
