"""Peak memory of importing a Keras model: rblnc's TensorFlow importer against tf2onnx's public
`from_keras`, each in a fresh process, on keras.applications models with random weights.

    .venv/bin/python benchmarks/bench_tf_import_memory.py [--models ConvNeXtTiny ConvNeXtBase] [--size 128]

Per model and way it prints the resident memory once the model is built, the peak during the
import (sampled every 10 ms) and the growth between the two, over the weights' size. rblnc
hands tf2onnx fresh NodeProtos on each update (upb frees a cleared field only with its arena)
and passes large constants through grappler as placeholders (docs/tensorflow.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, threading, time
import numpy as np

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.01)

name, size, way = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import keras
import tensorflow as tf
keras.utils.set_random_seed(0)
model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
weights = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
built = rss()
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
if way == "rblnc":
    from rblnc.importers.tensorflow_importer import import_tf_function
    import_tf_function(model, [("x", [1, size, size, 3], np.float32)])
else:
    import tf2onnx
    model.output_names = ["logits"]  # Keras 3 models lack the attribute tf2onnx reads
    tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="x")],
                               opset=17)
seconds = time.perf_counter() - start
time.sleep(0.05)
print("RESULT " + json.dumps({"weights": weights, "built": built, "peak": max(peak[0], rss()), "seconds": seconds}))
"""


def measure(name: str, size: int, way: str) -> dict | str:
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(size), way], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed (exit {done.returncode}): {tail[:120]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ConvNeXtTiny", "ConvNeXtBase", "ResNet50"])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    gib = 2**30
    print(f"{'model':16} {'way':10} {'weights':>9} {'built':>9} {'peak':>9} {'growth':>9} {'x weights':>9} {'seconds':>8}")
    for name in args.models:
        rows = {}
        for way in ("rblnc", "tf2onnx"):
            result = measure(name, args.size, way)
            if isinstance(result, str):
                print(f"{name:16} {way:10} {result}")
                continue
            growth = result["peak"] - result["built"]
            rows[way] = growth
            print(f"{name:16} {way:10} {result['weights'] / gib:8.2f}G {result['built'] / gib:8.2f}G "
                  f"{result['peak'] / gib:8.2f}G {growth / gib:8.2f}G {growth / result['weights']:9.1f} "
                  f"{result['seconds']:8.1f}")
        if len(rows) == 2:
            print(f"{name:16} rblnc / tf2onnx import growth: {rows['rblnc'] / rows['tf2onnx']:.2f}")


if __name__ == "__main__":
    main()
