"""`make demo`: the seed tutorial's PyTorch example through the command line, on a bundled model.

    python examples/demo.py prepare build/demo   # yolov8n.pt, inputs.npz, reference.npz
    rblnc compile build/demo/yolov8n.pt -o build/demo/yolov8n.rbln --input images:1x3x640x640:float32 --dtype fp32
    rblnc inspect build/demo/yolov8n.rbln
    rblnc run --async --pace build/demo/yolov8n.rbln build/demo/inputs.npz -o build/demo/outputs.npz
    python examples/demo.py check build/demo     # outputs.npz against torch's; exit 1 if they differ

The bundled model is YOLOv8n from rblnc's zoo (ultralytics' blocks, seeded random weights),
traced as the tutorial traces it and saved as TorchScript; the inputs are a handful of images from
a folder laid out as COCO val2017 (examples/coco_val2017_like.py: real photographs shipped by
scikit-image and matplotlib), letterboxed to 640x640 as the tutorial does. Nothing is downloaded.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coco_val2017_like import COCO_CATEGORIES, ensure_coco_val2017  # noqa: E402
from detection import LetterBox, decode_detections, draw_detections  # noqa: E402

SIZE = 640
IMAGES = 4
INPUT_NAME = "images"  # ultralytics' name for YOLO's input
# fp32 outputs match torch's to these (boxes in pixels up to ~640, scores in [0, 1]); at a lower
# precision the check is that 99% of the values lie within 5% of their part's range.
FP32_TOLERANCE = {"boxes": 0.05, "class scores": 1e-4}
REDUCED_PRECISION_SHARE, REDUCED_PRECISION_RANGE = 0.99, 0.05


def letterboxed(path: Path) -> np.ndarray:
    """The tutorial's COCO2017Dataset.__getitem__: letterbox, CHW, [0, 1]."""
    array = np.asarray(Image.open(path), dtype=np.float32)
    array = LetterBox((SIZE, SIZE))(image=array)
    return np.ascontiguousarray(np.transpose(array, [2, 0, 1])) / 255


def prepare(folder: Path) -> None:
    import rblnc.zoo

    # One torch thread: on a busy 2-core machine a 2-thread team stalls whenever the other core is
    # taken (this step took 100 s with two, 10 s with one).
    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    model = rblnc.zoo.get("yolov8n").build().eval()
    example = torch.zeros([1, 3, SIZE, SIZE], dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace` is deprecated")
        model(example)
        # check_trace would only run the model twice more to compare; check() compares anyway.
        torch.jit.trace(model, example, check_trace=False).save(str(folder / "yolov8n.pt"))

    coco = folder / "coco"
    ensure_coco_val2017(coco, IMAGES)
    paths = sorted((coco / "val2017").glob("*.jpg"))[:IMAGES]
    images = np.stack([letterboxed(p)[None] for p in paths])  # one leading dimension: that many requests
    with torch.no_grad():
        reference = np.stack([model(torch.from_numpy(x)).numpy() for x in images])
    np.savez(folder / "inputs.npz", **{INPUT_NAME: images})
    np.savez(folder / "reference.npz", output=reference, first_image=str(paths[0]))
    print(f"prepared {folder}: yolov8n.pt (zoo YOLOv8n, traced at 1x3x{SIZE}x{SIZE}), {len(paths)} letterboxed "
          f"COCO-like images in inputs.npz, torch's outputs in reference.npz")


def check(folder: Path) -> int:
    from rblnc.format.reader import load_artifact

    dtype = load_artifact(folder / "yolov8n.rbln").options.dtype
    with np.load(folder / "outputs.npz") as out, np.load(folder / "reference.npz") as ref:
        actual, expected, first_image = next(iter(out.values())), ref["output"], Path(str(ref["first_image"]))
    if actual.shape != expected.shape:
        print(f"demo FAILED: rblnc gave outputs of shape {actual.shape}, torch {expected.shape}")
        return 1
    ok = True
    for name, part in (("boxes", np.s_[..., :4, :]), ("class scores", np.s_[..., 4:, :])):
        diff = np.abs(actual[part].astype(np.float64) - expected[part])
        if dtype == "fp32":
            good, rule = diff.max() <= FP32_TOLERANCE[name], f"tolerance {FP32_TOLERANCE[name]:g}"
        else:
            span = float(expected[part].max() - expected[part].min())
            share = float(np.mean(diff <= REDUCED_PRECISION_RANGE * span))
            good, rule = share >= REDUCED_PRECISION_SHARE, f"{share:.1%} within 5% of the range {span:.3g}"
        ok &= bool(good)
        print(f"  {name}: max |rblnc - torch| = {diff.max():.3g} ({dtype}, {rule})")

    image = np.asarray(Image.open(first_image).convert("RGB"))
    detections = decode_detections(actual[0], image.shape[:2], LetterBox((SIZE, SIZE)))
    drawing = folder / "detections.png"
    Image.fromarray(draw_detections(image, detections, [name for _, name, _ in COCO_CATEGORIES])).save(drawing)
    print(f"  {len(detections)} boxes after NMS in {first_image.name}, the best 20 drawn in {drawing} "
          "(random weights: they show the decoding, not objects)")
    print(f"demo {'OK' if ok else 'FAILED'}: YOLOv8n on rblnc ({actual.shape[0]} requests, async) against torch")
    return 0 if ok else 1


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "prepare":
        prepare(folder)
    else:
        sys.exit(check(folder))
