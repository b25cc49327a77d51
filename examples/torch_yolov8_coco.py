"""The vendor tutorial's PyTorch example (concurrent processing, YOLOv8n on COCO val2017), on rblnc.

    python examples/torch_yolov8_coco.py [--samples 100] [--paced-samples 20] [--size 640] [--trace trace.json]

The code below is the tutorial's, in its order and with its names; every place that differs is
marked `# rblnc:` with the reason. What a user changes: the import line, where the weights come
from (YOLOv8n built locally from ultralytics' blocks with seeded random weights: neither
ultralytics nor its yolov8n.pt can be had here) and where the data comes from (a folder laid out
as COCO val2017, generated from real photographs when absent). After the tutorial's code, the
script decodes and draws the boxes of one image, measures what concurrency gained (see
examples/concurrency_report.py) and checks rblnc's outputs against torch's own; it exits 1 if
they differ by more than the tolerance.
"""

import argparse
import sys
import time
import typing

from pathlib import Path

import numpy as np
import torch
import rblnc as rebel  # rblnc: the one line a user of the vendor SDK changes
from PIL import Image
from pycocotools.coco import COCO
# rblnc: `from ultralytics import YOLO` and `from ultralytics.data.augment import LetterBox` in the
# tutorial; ultralytics does not install here, so the model comes from rblnc's zoo (the same
# blocks) and LetterBox from examples/detection.py (the same transform).
import rblnc.zoo
from detection import LetterBox, decode_detections, draw_detections

import concurrency_report as report  # rblnc: the measurements printed after the tutorial's code
from coco_val2017_like import ensure_coco_val2017

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
report.add_common_arguments(parser, size=640, data_root="build/data/coco")
parser.add_argument("--detections", type=Path, default=Path("build/examples/yolov8n_detections.png"),
                    help="where to draw the first image's boxes (PNG)")
args = parser.parse_args()
report.set_emulator_threads(args.emulator_threads)
SIZE = args.size  # rblnc: the tutorial's 640, a flag so the tests can run small
Sample = typing.Tuple[int, Path]  # rblnc: the tutorial annotates with it but never defines it


class COCO2017Dataset():
    def __init__(self, dataset_root: Path):
        image_root = dataset_root / "val2017"
        self.coco_gt = COCO(dataset_root / "annotations" / "instances_val2017.json")

        # Create sample
        self.samples: typing.List[Sample] = []
        for image_id in self.coco_gt.getImgIds():
            self.samples.append(
                (
                    image_id,
                    image_root / self.coco_gt.imgs[image_id]["file_name"],
                )
            )

    def __getitem__(self, index):
        image_id, image_path = self.samples[index]
        image = Image.open(image_path)
        letterbox_transform = LetterBox(new_shape=(SIZE, SIZE))  # rblnc: LetterBox() is 640x640
        array = np.asarray(image, dtype=np.float32)
        array = letterbox_transform(image=array)
        array = np.transpose(array, [2, 0, 1])
        array = np.ascontiguousarray(array)
        array /= 255
        return array


# rblnc: the tutorial expects COCO's val2017 images and annotations in "."; here a folder laid out
# the same way is generated (once) under --data-root, and a real one there is used as it is.
ensure_coco_val2017(args.data_root, args.samples)
dataset = COCO2017Dataset(args.data_root)
samples = [dataset[i] for i in range(args.samples)]  # rblnc: the tutorial's 100, a flag

model = rblnc.zoo.get("yolov8n").build().eval()  # rblnc: YOLO("yolov8n.pt").model.eval() in the tutorial
model(torch.zeros([1, 3, SIZE, SIZE], dtype=torch.float32))
scripted_model = torch.jit.trace(model, torch.zeros([1, 3, SIZE, SIZE], dtype=torch.float32))
compile_started = time.perf_counter()  # rblnc: timed, for the report
compiled_model = rebel.compile_from_torchscript(scripted_model, **report.compile_options(args))  # rblnc: --dtype, --target
compile_seconds = time.perf_counter() - compile_started

import asyncio  # noqa: E402  (where the tutorial imports it)

runtime = compiled_model.create_async_runtime()

async def main() -> None:
    tasks = []

    for sample in samples:
        sample = np.expand_dims(sample, axis=0)
        task = runtime.async_run(sample)
        tasks.append(task)

    logits = await asyncio.gather(*tasks)
    return logits


logits = asyncio.run(main())
runtime.close()  # rblnc: the tutorial's process ends here; this one goes on measuring

# --------------------------------------------------------------------------- beyond the tutorial
inputs = [np.expand_dims(sample, axis=0) for sample in samples]
report.show(report.describe_compile(compiled_model, compile_seconds, "compile_from_torchscript"))
failures = []

# The first image's boxes: decoded (best class per box, NMS per class) and drawn. At fp32 they
# must be torch's own boxes (checked below, on the fp32 compile if the default precision is lower).
category_ids = sorted(dataset.coco_gt.getCatIds())
names = [dataset.coco_gt.cats[i]["name"] for i in category_ids]
image = np.asarray(Image.open(dataset.samples[0][1]).convert("RGB"))
letterbox = LetterBox(new_shape=(SIZE, SIZE))
detections = decode_detections(logits[0], image.shape[:2], letterbox)
with torch.no_grad():
    torch_detections = decode_detections(model(torch.from_numpy(inputs[0])).numpy(), image.shape[:2], letterbox)
args.detections.parent.mkdir(parents=True, exist_ok=True)
Image.fromarray(draw_detections(image, detections, names)).save(args.detections)


def same_as_torch(found) -> bool:
    return len(found) == len(torch_detections) and all(
        a.class_index == b.class_index and np.allclose(a.box, b.box, atol=0.5) for a, b in zip(found, torch_detections))


def describe_detections(found, dtype: str) -> str:
    return (f"detections in {dataset.samples[0][1].name} ({dtype}): {len(found)} after NMS (torch's own outputs: "
            f"{len(torch_detections)}, {'the same boxes' if same_as_torch(found) else 'other boxes'})")


report.show(describe_detections(detections, compiled_model.artifact.options.dtype) + f"; the best 20 drawn in "
            f"{args.detections} (random weights: the boxes show the decoding, not objects)")

# The same samples again, sync then async, on warmed-up runtimes (the tutorial's run above paid
# for torch's and onnxruntime's first-use set-up); both must give exactly the tutorial's outputs.
functional = report.functional_comparison(compiled_model, inputs, logits)
report.show(report.describe_functional(functional))
if not functional.outputs_match:
    failures.append("the sync and async runtimes gave different outputs")

# torch's own outputs; at fp32 rblnc must match them to the tolerance, at a lower default precision
# the difference is reported and an fp32 compile is checked on a few samples.
BOX_TOLERANCE = 0.05     # pixels, boxes up to ~SIZE; fp32 differences seen: ~7e-3
SCORE_TOLERANCE = 1e-4   # sigmoid scores in [0, 1]


def torch_outputs(x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


parts = {"boxes": (lambda y: y[:, :4], BOX_TOLERANCE), "class scores": (lambda y: y[:, 4:], SCORE_TOLERANCE)}
dtype = compiled_model.artifact.options.dtype
differences = report.compare_with_framework(logits, inputs, torch_outputs, parts)
report.show(report.describe_differences(differences, "torch", len(inputs), dtype, checked=dtype == "fp32"))
if dtype != "fp32":
    fp32_model = report.compile_fp32(lambda **options: rebel.compile_from_torchscript(scripted_model, **options), args)
    few = inputs[:4]
    fp32_outputs, _ = report.run_sync(fp32_model.create_runtime(), few)
    differences = report.compare_with_framework(fp32_outputs, few, torch_outputs, parts)
    report.show(report.describe_differences(differences, "torch", len(few), "fp32", checked=True))
    fp32_detections = decode_detections(fp32_outputs[0], image.shape[:2], letterbox)
    report.show(describe_detections(fp32_detections, "fp32"))
else:
    fp32_detections = detections
if not same_as_torch(fp32_detections):
    failures.append("the fp32 compile's boxes of the first image are not torch's")
failures += [f"{d.name} differ from torch by {d.largest:.3g} > {d.tolerance:g}" for d in differences if not d.ok]

if args.paced_samples > 0:
    paced = report.paced_comparison(compiled_model, inputs[:args.paced_samples], logits,
                                     functional.measured, args.trace, f"YOLOv8n {SIZE}x{SIZE}, async, paced",
                                     args.pace_scale)
    report.show(report.describe_paced(paced))
    if not paced.outputs_match:
        failures.append("the paced runs gave other outputs than the functional ones")
    if args.trace is not None:
        report.show(f"wrote {args.trace} (the paced async run; open in ui.perfetto.dev or chrome://tracing)")

    # The whole pipeline, the tutorial's step 1 included: the letterbox as `preprocess` and box
    # decoding + NMS as `postprocess`, each a host step of every request, overlapping other
    # requests' copies and NPU work. A request is a decoded image (H x W x 3 uint8); its result
    # the detections, in the letterboxed frame (postprocess sees only the model's outputs).
    pipeline_letterbox = LetterBox(new_shape=(SIZE, SIZE))

    def preprocess(image: np.ndarray) -> np.ndarray:
        array = pipeline_letterbox(image=image.astype(np.float32))
        return np.ascontiguousarray(np.transpose(array, [2, 0, 1])[None]) / np.float32(255)

    def postprocess(output: np.ndarray) -> list:
        return decode_detections(output, (SIZE, SIZE), pipeline_letterbox)

    # One OpenCV thread per call: the host lanes are the parallelism here (as one torch and one
    # onnxruntime thread per lane), and a stage is paced by its thread's CPU time x S, which an
    # OpenCV pool waiting for its helpers on a busy machine inflated 20x for some images.
    import cv2
    cv2.setNumThreads(1)
    images = [np.asarray(Image.open(path).convert("RGB")) for _, path in dataset.samples[:args.paced_samples]]
    pipeline = report.paced_pipeline_comparison(compiled_model, images, preprocess, postprocess, paced.scale)
    report.show(report.describe_pipeline(pipeline, "letterbox -> YOLOv8n -> decode + NMS"))
    if not pipeline.outputs_match:
        failures.append("the paced pipeline gave other detections than the functional one")

for failure in failures:
    print(f"FAILED: {failure}", file=sys.stderr)
sys.exit(1 if failures else 0)
