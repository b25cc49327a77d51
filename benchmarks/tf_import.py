"""TF import cost on the Keras zoo: rblnc's freeze + tf2onnx stages against tf2onnx's public path, in one run.

    .venv/bin/python benchmarks/tf_import.py [--full] [--models resnet50 unet ...]

Per model it prints the seconds of each way (freezing the tf.function, converting the frozen
GraphDef to ONNX), their ratio, the Transposes tf2onnx emits before its optimisers and those
left in the compiled model, and the compiled model's largest error against TensorFlow.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


REPEATS = 2  # each way is timed this many times, interleaved; the fastest counts (the machine is shared)


def _seconds(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _fastest(*fns):
    """Run the callables in turn REPEATS times; each one's last result and fastest time."""
    best = [float("inf")] * len(fns)
    results = [None] * len(fns)
    for _ in range(REPEATS):
        for i, fn in enumerate(fns):
            results[i], seconds = _seconds(fn)
            best[i] = min(best[i], seconds)
    return results, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full input sizes (default: the small CI sizes)")
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()

    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tf2onnx import tf_loader
    from tf2onnx.tfonnx import process_tf_graph

    from rblnc.api import RBLNCompiledModel
    from rblnc.compiler import CompileOptionsIn, compile_graph
    from rblnc.importers.tensorflow_importer import _freeze, import_tf_function
    from rblnc.importers.tensorflow_onnx import graph_def_to_onnx, quiet_tensorflow
    from rblnc.report import build_report
    from rblnc.zoo.keras_models import KERAS_ZOO

    small = not args.full
    rows = []
    for name in args.models or list(KERAS_ZOO):
        zoo_model = KERAS_ZOO[name]
        model = zoo_model.build_model(small=small, seed=0)
        x = zoo_model.example_inputs(small=small)
        shape = zoo_model.small_input_shape if small else zoo_model.input_shape
        concrete = tf.function(lambda v: model(v, training=False)).get_concrete_function(
            tf.TensorSpec(shape, tf.float32, name="x"))
        output = concrete.outputs[0].name

        (frozen, (graph_def, _)), (peer_freeze, our_freeze) = _fastest(
            lambda: convert_variables_to_constants_v2(concrete).graph.as_graph_def(), lambda: _freeze(concrete))
        with quiet_tensorflow():
            _, (peer_convert, our_convert) = _fastest(
                lambda: tf2onnx.convert.from_graph_def(frozen, input_names=["x:0"], output_names=[output], opset=17),
                lambda: graph_def_to_onnx(graph_def, ["x:0"], [output], {}, name))
            with tf.Graph().as_default():
                optimized = tf_loader.tf_optimize(["x:0"], [output], graph_def)
            with tf.Graph().as_default() as tf_graph:
                tf.import_graph_def(optimized, name="")
                unoptimized = process_tf_graph(tf_graph, opset=17, input_names=["x:0"], output_names=[output])
            emitted = sum(1 for n in unoptimized.get_nodes() if n.type == "Transpose")

        graph, import_seconds = _seconds(lambda: import_tf_function(model, [("x", list(shape), np.float32)]))
        artifact, _ = compile_graph(graph, CompileOptionsIn(dtype="fp32"), "tensorflow")
        error = np.abs(RBLNCompiledModel(artifact).create_runtime().run(x) - np.asarray(model(x, training=False)))
        left = build_report(artifact)["transposes"]
        rows.append((name, len(graph_def.node), peer_freeze, our_freeze, peer_convert, our_convert,
                     (peer_freeze + peer_convert) / (our_freeze + our_convert), emitted, left, import_seconds,
                     float(error.max())))
        print(f"  {name} done", flush=True)
    _print(rows, small)


def _print(rows, small: bool) -> None:
    print(f"\nKeras zoo at {'small (CI)' if small else 'full'} sizes; seconds on a shared machine, ratios from one run")
    header = (f"{'model':<16} {'TF nodes':>8} {'freeze peer':>11} {'ours':>6} {'tf2onnx peer':>12} {'ours':>6} "
              f"{'speed-up':>8} {'T emitted':>9} {'T left':>6} {'import':>7} {'max err':>9}")
    print(header)
    print("-" * len(header))
    for name, nodes, pf, of, pc, oc, ratio, emitted, left, total, err in rows:
        print(f"{name:<16} {nodes:>8} {pf:>11.2f} {of:>6.2f} {pc:>12.2f} {oc:>6.2f} {ratio:>7.1f}x "
              f"{emitted:>9} {left:>6} {total:>7.2f} {err:>9.1e}")
    print("peer = convert_variables_to_constants_v2 + tf2onnx.convert.from_graph_def (catch_errors deep copies);"
          "\nT emitted = Transposes tf2onnx's op handlers emit (before its optimisers); T left = in the .rbln;"
          "\nimport = rblnc's whole import of the Keras model (trace, freeze, tf2onnx, IR); max err vs TensorFlow.")


if __name__ == "__main__":
    main()
