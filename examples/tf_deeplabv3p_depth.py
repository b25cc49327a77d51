"""The vendor tutorial's TensorFlow example (concurrent processing, DeepLabV3+ on NYU Depth V2), on rblnc.

    python examples/tf_deeplabv3p_depth.py [--samples 100] [--paced-samples 20] [--size 512] [--trace trace.json]

The code below is the tutorial's, in its order and with its names; every place that differs is
marked `# rblnc:` with the reason. What a user changes: the import line, where the weights come
from (a DeepLabV3+ on ResNet-50 built locally with seeded random weights, since the Hugging Face
hub is out of reach) and where the data comes from (a folder laid out as NYU Depth V2's
validation set, generated when absent). After the tutorial's code, the script measures what
concurrency gained (see examples/concurrency_report.py) and checks rblnc's outputs against
Keras's own; it exits 1 if they differ by more than the tolerance. Last it prints the process's
peak memory (docs/emulator.md has the figures: about 10 GB at 512x512, most of it TensorFlow's).
"""

import argparse
import gc
import resource
import sys
import time

import cv2
import h5py
import numpy as np
import rblnc as rebel  # rblnc: the one line a user of the vendor SDK changes
import tensorflow as tf
import asyncio

from pathlib import Path
# rblnc: the tutorial loads "keras-io/deeplabv3p-resnet50" with huggingface_hub.from_pretrained_keras;
# the same architecture (keras.io's DeepLabV3+ on ResNet-50) is built here instead.
from rblnc.zoo.keras_models import deeplabv3plus

import concurrency_report as report  # rblnc: the measurements printed after the tutorial's code
from nyu_depth_v2_like import ensure_nyu_depth_v2

script_started = time.perf_counter()  # rblnc: for the report at the end
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
report.add_common_arguments(parser, size=512, data_root="build/data/nyu_depth_v2")
args = parser.parse_args()
report.set_emulator_threads(args.emulator_threads)
SIZE = args.size  # rblnc: the tutorial's 512, a flag so the tests can run small


class NYUDepthV2Dataset():
    def __init__(self, dataset_root: Path):
        image_root = dataset_root / "val" / "official"
        self.samples = sorted(image_root.glob("*.h5"))

    def __getitem__(self, index):
        h5f = h5py.File(self.samples[index], "r")
        image = np.transpose(np.array(h5f["rgb"]), (1, 2, 0))
        image = cv2.resize(image, (SIZE, SIZE))  # rblnc: SIZE is the tutorial's 512
        image = tf.image.convert_image_dtype(image, tf.float32)
        return image


# rblnc: the tutorial downloads NYU Depth V2's validation tars into "."; here a folder laid out
# the same way is generated (once) under --data-root, and a real one there is used as it is.
ensure_nyu_depth_v2(args.data_root, args.samples)
dataset = NYUDepthV2Dataset(args.data_root)
samples = [dataset[i] for i in range(args.samples)]  # rblnc: the tutorial's 100, a flag

model = deeplabv3plus(input_shape=(SIZE, SIZE, 3))  # rblnc: from_pretrained_keras(...) in the tutorial
compile_started = time.perf_counter()  # rblnc: timed, for the report
compiled_model = rebel.compile_from_tf_function(
    tf.function(lambda x : model(x)),
    input_info=[("x", [1, SIZE, SIZE, 3], np.float32)],
    **report.compile_options(args),  # rblnc: --dtype, --target; none unless given
)
compile_seconds = time.perf_counter() - compile_started


runtime = compiled_model.create_async_runtime()


async def main() -> None:
    tasks = []

    for sample in samples:
        sample = np.expand_dims(sample.numpy(), axis=0)
        task = runtime.async_run(sample)
        tasks.append(task)

    logits = await asyncio.gather(*tasks)
    return logits


logits = asyncio.run(main())
runtime.close()  # rblnc: the tutorial's process ends here; this one goes on measuring

# --------------------------------------------------------------------------- beyond the tutorial
inputs = [np.expand_dims(sample.numpy(), axis=0) for sample in samples]
report.show(report.describe_compile(compiled_model, compile_seconds, "compile_from_tf_function"))
failures = []

# The same samples again, sync then async, on warmed-up runtimes (the tutorial's run above paid
# for torch's and onnxruntime's first-use set-up); both must give exactly the tutorial's logits.
functional = report.functional_comparison(compiled_model, inputs, logits)
report.show(report.describe_functional(functional))
if not functional.outputs_match:
    failures.append("the sync and async runtimes gave different outputs")

# Keras's own outputs; at fp32 rblnc must match them to the tolerance, at a lower default
# precision the difference is reported and an fp32 compile is checked on a few samples.
LOGIT_TOLERANCE = 1e-3  # logits are O(1-10); fp32 differences seen: ~5e-5


def keras_logits(x):
    return model(x).numpy()


parts = {"logits": (lambda y: y, LOGIT_TOLERANCE)}
dtype = compiled_model.artifact.options.dtype
differences = report.compare_with_framework(logits, inputs, keras_logits, parts)
report.show(report.describe_differences(differences, "keras", len(inputs), dtype, checked=dtype == "fp32"))
if dtype != "fp32":
    fp32_model = report.compile_fp32(lambda **options: rebel.compile_from_tf_function(
        tf.function(lambda x : model(x)), input_info=[("x", [1, SIZE, SIZE, 3], np.float32)], **options), args)
    few = inputs[:4]
    fp32_outputs, _ = report.run_sync(fp32_model.create_runtime(), few)
    differences = report.compare_with_framework(fp32_outputs, few, keras_logits, parts)
    report.show(report.describe_differences(differences, "keras", len(few), "fp32", checked=True))
    del fp32_model, fp32_outputs  # at 512x512 the process is near 9 GB (TensorFlow, two compiles): free one
    gc.collect()
failures += [f"{d.name} differ from Keras by {d.largest:.3g} > {d.tolerance:g}" for d in differences if not d.ok]

if args.paced_samples > 0:
    paced = report.paced_comparison(compiled_model, inputs[:args.paced_samples], logits,
                                     functional.measured, args.trace,
                                     f"DeepLabV3+ {SIZE}x{SIZE}, async, paced", args.pace_scale)
    report.show(report.describe_paced(paced))
    if not paced.outputs_match:
        failures.append("the paced runs gave other outputs than the functional ones")
    if args.trace is not None:
        report.show(f"wrote {args.trace} (the paced async run; open in ui.perfetto.dev or chrome://tracing)")

# rblnc: the process's peak resident memory (TensorFlow, the Keras model, the compiled models, the
# samples and every output kept for the comparisons), for sizing a machine for this example.
report.show(f"peak memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB, "
            f"{time.perf_counter() - script_started:.0f} s after the imports")

for failure in failures:
    print(f"FAILED: {failure}", file=sys.stderr)
sys.exit(1 if failures else 0)
