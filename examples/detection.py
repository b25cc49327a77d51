"""YOLOv8's pre- and post-processing for the examples: ultralytics' LetterBox (ultralytics itself
does not install here), box decoding with non-maximum suppression, drawing boxes on an image."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # ultralytics pads with grey 114


class LetterBox:
    """`ultralytics.data.augment.LetterBox()` with its defaults (auto=False, scale_fill=False,
    scaleup=True, center=True): scales the image to fit `new_shape` keeping its aspect ratio
    (bilinear), then pads both sides of the short dimension evenly with grey 114.
    Called as the tutorial does: `LetterBox()(image=array)` with an H x W x C array."""

    def __init__(self, new_shape: tuple[int, int] | int = (640, 640)):
        self.new_shape = (new_shape, new_shape) if isinstance(new_shape, int) else tuple(new_shape)

    def geometry(self, shape: tuple[int, int]) -> tuple[float, tuple[int, int], tuple[int, int, int, int]]:
        """(scale, resized (width, height), padding (top, bottom, left, right)) for an image of `shape` (H, W)."""
        ratio = min(self.new_shape[0] / shape[0], self.new_shape[1] / shape[1])
        resized = int(round(shape[1] * ratio)), int(round(shape[0] * ratio))
        pad_w, pad_h = (self.new_shape[1] - resized[0]) / 2, (self.new_shape[0] - resized[1]) / 2
        # ultralytics' rounding: the odd pixel goes to the bottom / right.
        padding = int(round(pad_h - 0.1)), int(round(pad_h + 0.1)), int(round(pad_w - 0.1)), int(round(pad_w + 0.1))
        return ratio, resized, padding

    def __call__(self, labels: dict | None = None, image: np.ndarray | None = None) -> np.ndarray:
        if image is None:
            image = (labels or {})["img"]
        _, resized, (top, bottom, left, right) = self.geometry(image.shape[:2])
        if image.shape[1::-1] != resized:
            image = cv2.resize(image, resized, interpolation=cv2.INTER_LINEAR)
        return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                  value=(PAD_VALUE,) * 3)


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels
    score: float
    class_index: int                         # 0..79, the model's class order


def decode_detections(output: np.ndarray, image_shape: tuple[int, int], letterbox: LetterBox, *,
                      score_threshold: float = 0.25, iou_threshold: float = 0.45,
                      max_detections: int = 300) -> list[Detection]:
    """YOLOv8's [1, 4 + classes, anchors] output (cx, cy, w, h in letterboxed pixels, then class
    scores) -> the detections of one image, as ultralytics' non_max_suppression (one label per box,
    the best class; NMS per class) followed by scale_boxes back to the image's pixels."""
    prediction = np.asarray(output)[0]
    boxes, scores = prediction[:4].T, prediction[4:].T
    class_index = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), class_index]
    keep = best > score_threshold
    boxes, best, class_index = boxes[keep], best[keep], class_index[keep]
    corners = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], axis=1)  # x, y, w, h
    chosen = cv2.dnn.NMSBoxesBatched(corners.tolist(), best.tolist(), class_index.tolist(),
                                     score_threshold, iou_threshold, top_k=max_detections)
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
    chosen = chosen[np.argsort(-best[chosen], kind="stable")][:max_detections]
    ratio, _, (top, _, left, _) = letterbox.geometry(image_shape)
    height, width = image_shape
    detections = []
    for i in chosen:
        x, y, w, h = corners[i]
        x1, x2 = np.clip([(x - left) / ratio, (x + w - left) / ratio], 0, width)
        y1, y2 = np.clip([(y - top) / ratio, (y + h - top) / ratio], 0, height)
        detections.append(Detection((float(x1), float(y1), float(x2), float(y2)), float(best[i]), int(class_index[i])))
    return detections


def draw_detections(image: np.ndarray, detections: list[Detection], names: list[str], *,
                    limit: int = 20) -> np.ndarray:
    """The image (H x W x 3 RGB uint8) with the `limit` best detections boxed and labelled."""
    canvas = np.ascontiguousarray(image.copy())
    for rank, d in enumerate(detections[:limit]):
        hue = (d.class_index * 47) % 180
        colour = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        label = f"{names[d.class_index]} {d.score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        top = max(y1, text_h + baseline)
        cv2.rectangle(canvas, (x1, top - text_h - baseline), (x1 + text_w, top), colour, -1)
        cv2.putText(canvas, label, (x1, top - baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
