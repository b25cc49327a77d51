"""Calibration samples from files: an .npz of stacked inputs, a folder of .npy/.npz shards, or a
folder of images made into model inputs by a named preprocessing. Each source is a lazy iterable
of {input name: array}; every problem is a CalibrationError naming the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..ir.graph import Graph
from .calibrate import CalibrationError, NpzSamples

SHARD_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# How an image becomes a model input: "imagenet" scales to [0, 1] and normalises with ImageNet's
# mean and std (torchvision's, timm's default); "unit" only scales to [0, 1]; "none" keeps 0..255.
PREPROCESSINGS = ("imagenet", "unit", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_calibration(path: str | os.PathLike, graph: Graph, preprocess: str | None = None):
    """The samples at `path`: an .npz file, or a folder of shards or of images (not both)."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration data {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise CalibrationError(f"calibration data {str(path)!r}: give an .npz of stacked inputs or a folder "
                                   "of .npy/.npz shards or images")
        return NpzSamples(path)
    files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if not files:
        raise CalibrationError(f"calibration folder {str(path)!r} is empty")
    shards = [p for p in files if p.suffix.lower() in SHARD_SUFFIXES]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    for other in files:
        if other not in shards and other not in images:
            raise CalibrationError(f"calibration folder {str(path)!r}: {other.name!r} is neither an .npy/.npz "
                                   f"shard nor an image ({', '.join(IMAGE_SUFFIXES)})")
    if shards and images:
        raise CalibrationError(f"calibration folder {str(path)!r} mixes shards ({shards[0].name!r}) and images "
                               f"({images[0].name!r}); give one kind")
    if shards:
        return ShardFolder(shards, graph)
    if preprocess is None:
        raise CalibrationError(f"calibration folder {str(path)!r} holds images: name their preprocessing "
                               f"(calibration_preprocess= / --calibration-preprocess: {', '.join(PREPROCESSINGS)})")
    return ImageFolder(images, graph, preprocess)


class ShardFolder:
    """.npy/.npz shards in name order, each holding one sample or several stacked on the first
    axis. An .npz holds one array per input name (or one unnamed array for a one-input model); an
    .npy holds one array, so it can only feed a one-input model (give a multi-input model .npz)."""

    def __init__(self, files: list[Path], graph: Graph):
        self.files, self.graph = files, graph
        self.shapes = {name: tuple(graph.tensors[name].shape) for name in graph.inputs}
        if len(self.shapes) > 1:
            npy = [f for f in files if f.suffix.lower() == ".npy"]
            if npy:
                raise CalibrationError(f"calibration shard {str(npy[0])!r}: an .npy holds one array, but the model "
                                       f"takes {len(self.shapes)} inputs ({', '.join(self.shapes)}); save each "
                                       "shard as an .npz with one array per input name")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self.files:
            arrays = self._read(path)
            counts = {name: self._count(path, name, array) for name, array in arrays.items()}
            if len({count for count, _ in counts.values()}) > 1:
                raise CalibrationError(f"calibration shard {str(path)!r}: its arrays hold different numbers of "
                                       f"samples ({', '.join(f'{k}: {v[0]}' for k, v in counts.items())})")
            for i in range(next(iter(counts.values()))[0]):
                yield {name: array[i] if counts[name][1] else array for name, array in arrays.items()}

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        try:
            if path.suffix.lower() == ".npy":
                return {next(iter(self.shapes)): np.load(path, allow_pickle=False)}
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise CalibrationError(f"cannot read calibration shard {str(path)!r}: {exc}") from None
        if len(arrays) == 1 and len(self.shapes) == 1:
            return {next(iter(self.shapes)): next(iter(arrays.values()))}
        missing = [n for n in self.shapes if n not in arrays]
        if missing:
            raise CalibrationError(f"calibration shard {str(path)!r} lacks input(s) {', '.join(map(repr, missing))} "
                                   f"(it has {', '.join(map(repr, arrays)) or 'none'})")
        return {name: arrays[name] for name in self.shapes}

    def _count(self, path: Path, name: str, array: np.ndarray) -> tuple[int, bool]:
        """(samples in the array, whether they are stacked): one input (with or without a batch
        dimension of 1), or inputs stacked on a first axis; anything else names the shard and shapes."""
        shape = self.shapes[name]
        single = {shape} | ({shape[1:]} if shape and shape[0] == 1 else set())
        if array.shape in single:
            return 1, False
        if array.ndim and array.shape[1:] in single:
            return array.shape[0], True
        raise CalibrationError(f"calibration shard {str(path)!r}: input {name!r} has shape {list(array.shape)}; "
                               f"the model takes {list(shape)} (one sample, or samples stacked on a first axis)")


class ImageFolder:
    """Images in name order, each decoded to RGB (or grayscale for one channel), resized to the
    input's H x W (bilinear), scaled by the preprocessing and laid out as the input's shape says:
    NCHW when the channel count (1 or 3) is the second dimension, else NHWC when it is the last.
    A batch of N takes N consecutive images; images that do not fill a last batch are left out."""

    def __init__(self, files: list[Path], graph: Graph, preprocess: str):
        if preprocess not in PREPROCESSINGS:
            raise CalibrationError(f"calibration preprocessing {preprocess!r} is unknown; choose one of "
                                   f"{', '.join(PREPROCESSINGS)}")
        if len(graph.inputs) != 1:
            raise CalibrationError(f"a folder of images calibrates a one-input model; this one takes "
                                   f"{len(graph.inputs)} ({', '.join(graph.inputs)}): give .npz shards")
        self.files, self.preprocess = files, preprocess
        self.name = graph.inputs[0]
        info = graph.tensors[self.name]
        self.shape, self.dtype = tuple(info.shape), info.dtype
        if len(self.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in self.shape):
            raise CalibrationError(f"a folder of images needs an image input of fixed shape [N, C, H, W] or "
                                   f"[N, H, W, C]; input {self.name!r} is {list(self.shape)}")
        if self.shape[1] in (1, 3):
            self.layout, (self.batch, self.channels, self.height, self.width) = "NCHW", self.shape
        elif self.shape[3] in (1, 3):
            self.layout, (self.batch, self.height, self.width, self.channels) = "NHWC", self.shape
        else:
            raise CalibrationError(f"input {self.name!r} of shape {list(self.shape)} has no channel dimension of "
                                   "1 or 3 (second or last): it does not take images")

    def __len__(self) -> int:
        return len(self.files) // self.batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self) * self.batch, self.batch):
            images = np.stack([self.load(path) for path in self.files[start:start + self.batch]])
            yield {self.name: images.astype(self.dtype)}

    def load(self, path: Path) -> np.ndarray:
        """One image as the input wants it: (C, H, W) or (H, W, C) float32 (or 0..255 with "none")."""
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise CalibrationError("calibrating from images needs Pillow: pip install pillow") from None
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                image = image.resize((self.width, self.height), Image.BILINEAR)
                pixels = np.asarray(image, np.float32)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise CalibrationError(f"cannot read calibration image {str(path)!r}: {exc}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.preprocess != "none":
            pixels = pixels / 255.0
        if self.preprocess == "imagenet":
            mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
            if self.channels == 1:  # a gray image: the channels' average
                mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
            pixels = (pixels - mean) / std
        return pixels.transpose(2, 0, 1) if self.layout == "NCHW" else pixels
