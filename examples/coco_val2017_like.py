"""Writes a folder laid out as COCO val2017 (val2017/*.jpg + annotations/instances_val2017.json)
from the real photographs that scikit-image and matplotlib ship, for the YOLOv8 example.

    python examples/coco_val2017_like.py build/data/coco [--count 100]

COCO itself cannot be downloaded here. The photos (scikit-image's astronaut, chelsea, coffee,
rocket, stereo motorcycle and camera; matplotlib's grace_hopper) are varied as a data loader would
(crop, flip, brightness) and saved as JPEGs of COCO's sizes (longest side 640) under COCO's
12-digit file names. The annotation file has COCO's 80 categories with their real ids, one image
entry per file and approximate boxes, drawn by hand on the source photos, for the objects of
those categories they show (persons, a cat, a cup, a spoon, a motorcycle, a bench, a tie).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

# COCO's 80 detection categories with their ids in instances_val2017.json (1-90, with gaps),
# in the order a detector's 80 class scores follow.
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]
CATEGORY_ID = {name: cid for cid, name, _ in COCO_CATEGORIES}

# A box is kept after cropping when at least this much of it is still in the picture.
MIN_VISIBLE_FRACTION = 0.3
LONG_SIDE = 640  # COCO's images are at most 640 pixels on their longest side


@dataclass(frozen=True)
class Photo:
    name: str
    pixels: np.ndarray                                   # H x W x 3, uint8, RGB
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]  # (category, (x, y, w, h) pixels)


def source_photos() -> list[Photo]:
    """The photographs, from the installed packages (nothing is downloaded)."""
    import matplotlib.cbook
    import skimage.data

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:
        hopper = np.asarray(image.convert("RGB"))
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)  # grey, kept as RGB (see below)
    return [
        Photo("astronaut", skimage.data.astronaut(), (("person", (20, 15, 345, 497)),)),
        Photo("chelsea", skimage.data.chelsea(), (("cat", (0, 0, 430, 300)),)),
        Photo("coffee", skimage.data.coffee(), (("cup", (172, 18, 250, 285)), ("spoon", (325, 65, 100, 260)))),
        Photo("rocket", skimage.data.rocket(), ()),
        Photo("motorcycle", skimage.data.stereo_motorcycle()[0],
              (("motorcycle", (92, 95, 590, 355)), ("bench", (40, 105, 245, 200)))),
        # COCO has a few grey JPEGs, which the tutorial's loader (np.asarray of the image) would turn into
        # 2-D arrays its letterbox and transpose do not take; like the first 100 of COCO, these are RGB.
        Photo("camera", camera, (("person", (0, 65, 335, 447)),)),
        Photo("grace_hopper", hopper, (("person", (10, 25, 502, 575)), ("tie", (220, 410, 85, 110)))),
    ]


def vary(photo: Photo, rng: np.random.Generator) -> tuple[Image.Image, list[tuple[str, list[float]]]]:
    """A crop (60-100% of each side), maybe mirrored and brightened, scaled to a 640 long side;
    with the photo's boxes moved along (those less than 30% visible are dropped)."""
    height, width = photo.pixels.shape[:2]
    crop_w, crop_h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = Image.fromarray(photo.pixels[y0:y0 + crop_h, x0:x0 + crop_w])
    mirrored = bool(rng.integers(0, 2))
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    scale = LONG_SIDE / max(crop_w, crop_h)
    size = (round(crop_w * scale), round(crop_h * scale))
    image = image.resize(size, Image.Resampling.BILINEAR)

    boxes = []
    for category, (bx, by, bw, bh) in photo.boxes:
        left, top = max(bx, x0), max(by, y0)
        right, bottom = min(bx + bw, x0 + crop_w), min(by + bh, y0 + crop_h)
        if right <= left or bottom <= top or (right - left) * (bottom - top) < MIN_VISIBLE_FRACTION * bw * bh:
            continue
        left, right = left - x0, right - x0
        if mirrored:
            left, right = crop_w - right, crop_w - left
        top, bottom = top - y0, bottom - y0
        # Each axis by its own factor: the resized size was rounded to whole pixels.
        sx, sy = image.width / crop_w, image.height / crop_h
        left, right = max(0.0, round(left * sx, 2)), min(float(image.width), round(right * sx, 2))
        top, bottom = max(0.0, round(top * sy, 2)), min(float(image.height), round(bottom * sy, 2))
        boxes.append((category, [left, top, round(right - left, 2), round(bottom - top, 2)]))
    return image, boxes


def write_coco_val2017(root: str | Path, count: int = 100, seed: int = 0) -> Path:
    """Writes `count` JPEGs to root/val2017 and root/annotations/instances_val2017.json; returns the json's path."""
    root = Path(root)
    images_dir, annotations_dir = root / "val2017", root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = source_photos()
    # COCO's ids are sparse and increasing (val2017 starts 139, 285, 632, ...).
    image_ids = np.cumsum(rng.integers(100, 1000, size=count)).tolist()
    images, annotations = [], []
    for index, image_id in enumerate(image_ids):
        photo = photos[index % len(photos)]
        image, boxes = vary(photo, rng)
        file_name = f"{image_id:012d}.jpg"
        image.save(images_dir / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height,
                       "license": 0, "coco_url": "", "flickr_url": "", "date_captured": "",
                       "source": f"{photo.name} (generated by examples/coco_val2017_like.py)"})
        for category, box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_ID[category],
                                "bbox": box, "area": round(box[2] * box[3], 2), "iscrowd": 0, "segmentation": []})
    dataset = {
        "info": {"description": "COCO val2017 layout, generated from scikit-image's and matplotlib's sample photos",
                 "version": "1.0", "year": 2017, "contributor": "rblnc examples", "date_created": ""},
        "licenses": [{"id": 0, "name": "as shipped by scikit-image and matplotlib", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": group} for cid, name, group in COCO_CATEGORIES],
    }
    path = annotations_dir / "instances_val2017.json"
    temporary = path.with_suffix(".json.partial")
    temporary.write_text(json.dumps(dataset))
    temporary.replace(path)  # the file appears whole or not at all: its presence means "generated"
    return path


def ensure_coco_val2017(root: str | Path, count: int) -> Path:
    """Generates the folder unless it has the annotation file and at least `count` JPEGs (a real
    COCO val2017 there is used as it is)."""
    path = Path(root) / "annotations" / "instances_val2017.json"
    if path.is_file() and sum(1 for _ in (Path(root) / "val2017").glob("*.jpg")) >= count:
        return path
    return write_coco_val2017(root, count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write_coco_val2017(args.root, args.count, args.seed)}")
