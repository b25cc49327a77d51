"""The inputs and outputs of `rblnc run --ray`: .npz/.npy shards or images in, one .npz shard per input shard out."""

from __future__ import annotations

import functools
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import dtypes
from ..errors import InputDtypeError, InputError, InputNameError, InputShapeError
from ..format.artifact import ValueInfo

ARRAY_SUFFIXES = (".npz", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Rows per block Ray Data hands to one actor task: small enough that a shard's rows spread over
# the actors, large enough that each task amortises its scheduling.
ROWS_PER_BLOCK = 256
IMAGE_ROWS_PER_SHARD = 1000
# Reading a chunk is light; a CPU request of its own also keeps Ray Data from fusing the read into
# the actors, which would bundle the one-row chunk descriptions into a single actor task.
READ_CPUS = 0.25
FILE_COLUMN = "_rblnc_file"
ROW_COLUMN = "_rblnc_row"
WORKER_COLUMN = "_rblnc_worker"


class ShardError(InputError, ValueError):
    """An input shard that cannot be read or does not fit the model (names the file)."""


@dataclass
class ArrayShard:
    path: Path
    keys: dict[str, str]   # model input -> array name in the file
    rows: int


@dataclass
class Inputs:
    """What `rblnc run --ray` reads: array shards, or images for a one-input model."""

    kind: str                                   # "arrays" | "images"
    files: list[Path]
    shards: list[ArrayShard] = field(default_factory=list)
    image_input: ValueInfo | None = None

    @property
    def rows(self) -> int | None:
        return sum(s.rows for s in self.shards) if self.kind == "arrays" else len(self.files)


def discover(inputs: Path, specs: Sequence[ValueInfo]) -> Inputs:
    """A .npz file, or a folder of .npy/.npz shards, or a folder of images; every shard's arrays
    are checked against the model here (headers only), before any worker starts."""
    if inputs.is_file():
        if inputs.suffix.lower() not in ARRAY_SUFFIXES:
            raise ShardError(f"{inputs}: expected a .npz or .npy file, or a folder of shards or images")
        files = [inputs]
    elif inputs.is_dir():
        entries = sorted(p for p in inputs.iterdir() if p.is_file())
        arrays = [p for p in entries if p.suffix.lower() in ARRAY_SUFFIXES]
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        if arrays and images:
            raise ShardError(f"{inputs}: holds both array shards ({arrays[0].name}, ...) and images "
                             f"({images[0].name}, ...); give a folder of one kind")
        if images:
            return Inputs("images", images, image_input=_image_input(specs, inputs))
        if not arrays:
            raise ShardError(f"{inputs}: no .npz, .npy or image files in this folder")
        stems = {}
        for p in arrays:
            if p.stem in stems:
                raise ShardError(f"{inputs}: {stems[p.stem].name} and {p.name} would both write {p.stem}.npz")
            stems[p.stem] = p
        files = arrays
    else:
        raise ShardError(f"{inputs}: no such file or folder")
    return Inputs("arrays", files, shards=[_array_shard(p, specs) for p in files])


def _array_shard(path: Path, specs: Sequence[ValueInfo]) -> ArrayShard:
    headers = _headers(path)
    names = [s.name for s in specs]
    if path.suffix.lower() == ".npy":
        if len(names) != 1:
            raise ShardError(f"{path}: a .npy shard holds one array, the model takes {len(names)} inputs "
                             f"({', '.join(map(repr, names))}); use .npz shards keyed by input name")
        keys = {names[0]: next(iter(headers))}
    elif set(headers) == set(names):
        keys = {n: n for n in names}
    elif set(headers) == {f"arr_{i}" for i in range(len(names))}:  # np.savez(path, x, y): by position
        keys = {n: f"arr_{i}" for i, n in enumerate(names)}
    elif len(headers) == 1 and len(names) == 1:
        keys = {names[0]: next(iter(headers))}
    else:
        raise InputNameError(f"{path}: arrays {', '.join(map(repr, headers))} do not match the model's inputs "
                             f"({', '.join(map(repr, names))})")
    rows = set()
    for spec in specs:
        shape, dtype = headers[keys[spec.name]]
        where = f"{path}: array {keys[spec.name]!r} (input {spec.name!r})"
        if not shape:
            raise InputShapeError(f"{where} is a scalar; a shard holds one row per request along its first axis")
        row = tuple(shape[1:])
        if spec.shape is not None and row != tuple(spec.shape) and not (spec.shape and spec.shape[0] == 1
                                                                          and row == tuple(spec.shape[1:])):
            raise InputShapeError(f"{where}: rows of shape {list(row)}, the model takes {list(spec.shape)} "
                                  f"(a row may leave out the leading 1)")
        if dtype != spec.dtype and not np.can_cast(dtype, spec.dtype, casting="safe"):
            raise InputDtypeError(f"{where}: {dtypes.name(dtype)}, the model takes {dtypes.name(spec.dtype)}")
        rows.add(shape[0])
    if len(rows) > 1:
        raise InputShapeError(f"{path}: its arrays hold different numbers of rows ({sorted(rows)})")
    return ArrayShard(path, keys, rows.pop())


def _headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """Array name -> (shape, dtype), from the .npy headers, without reading the data."""
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                return {"data": _read_header(f)}
        with zipfile.ZipFile(path) as archive:
            result = {}
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as f:
                        result[member[:-4]] = _read_header(f)
            if not result:
                raise ValueError("it holds no arrays")
            return result
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ShardError(f"{path}: not a readable {path.suffix} file ({exc})") from None


def _read_header(f) -> tuple[tuple, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = read(f)
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which rblnc does not unpickle")
    return tuple(shape), dtype


def _image_input(specs: Sequence[ValueInfo], folder: Path) -> ValueInfo:
    if len(specs) != 1:
        raise ShardError(f"{folder}: images feed a one-input model; this one takes {len(specs)} inputs")
    ImageToInput.layout_of(specs[0])  # raises if the input does not look like an image
    return specs[0]


# -- reading on the workers -------------------------------------------------------------------
def array_dataset(source: Inputs, rows_per_block: int = ROWS_PER_BLOCK):
    """A Dataset with one column per model input plus the shard index and row within it; each
    block is read from its shard by a Ray task, so shards need to be on a path workers can read."""
    import ray

    chunks = [{"file": index, "start": start, "stop": min(start + rows_per_block, shard.rows)}
              for index, shard in enumerate(source.shards) for start in range(0, shard.rows, rows_per_block)]
    files = [(str(s.path), s.keys) for s in source.shards]
    return ray.data.from_items(chunks, override_num_blocks=max(1, len(chunks))).map_batches(
        read_chunks, fn_kwargs={"files": files}, batch_size=None, num_cpus=READ_CPUS)


def read_chunks(batch: Mapping[str, np.ndarray], files: list[tuple[str, dict[str, str]]]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for index, start, stop in zip(batch["file"], batch["start"], batch["stop"]):
        path, keys = files[int(index)]
        arrays = _load(path, *_stamp(path))
        for name, key in keys.items():
            parts.setdefault(name, []).append(np.asarray(arrays[key][int(start):int(stop)]))
        parts.setdefault(FILE_COLUMN, []).append(np.full(int(stop) - int(start), int(index), np.int64))
        parts.setdefault(ROW_COLUMN, []).append(np.arange(int(start), int(stop), dtype=np.int64))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=1)
def _load(path: str, mtime_ns: int, size: int) -> Mapping[str, np.ndarray]:
    """One shard's arrays, kept for the next chunk of the same shard (a worker reads a shard's
    chunks in a row); .npy shards are memory-mapped, .npz ones read once."""
    try:
        if path.endswith(".npy"):
            return {"data": np.load(path, mmap_mode="r", allow_pickle=False)}
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ShardError(f"{path}: not a readable shard ({exc})") from None


class ImageToInput:
    """The CLI's preprocess for images: an HxWxC uint8 image (read at the input's size) becomes the
    input's layout (NCHW unless the input is tagged NHWC or only its last axis fits the channels),
    divided by 255 for floating inputs."""

    def __init__(self, spec: ValueInfo):
        self.layout, self.height, self.width, self.channels = self.layout_of(spec)
        # One image is one row: without the model's leading batch dimension, so outputs drop it too.
        self.shape = tuple(spec.shape[1:]) if len(spec.shape) == 4 else tuple(spec.shape)
        self.dtype = spec.dtype

    @staticmethod
    def layout_of(spec: ValueInfo) -> tuple[str, int, int, int]:
        shape = tuple(spec.shape or ())
        core = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
        if len(core) == 3:
            channels_first = core[0] in (1, 3) and spec.layout != "NHWC"
            if channels_first:
                return "CHW", core[1], core[2], core[0]
            if core[2] in (1, 3):
                return "HWC", core[0], core[1], core[2]
        raise ShardError(f"input {spec.name!r} of shape {list(shape)} does not take images "
                         "([1,] C, H, W or [1,] H, W, C with 1 or 3 channels)")

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def __call__(self, row: Mapping[str, Any]) -> np.ndarray:
        image = np.asarray(row["image"])
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        if self.layout == "CHW":
            image = image.transpose(2, 0, 1)
        if self.dtype.kind == "f":
            image = image.astype(self.dtype) / self.dtype.type(255)
        else:
            image = image.astype(self.dtype)
        return np.ascontiguousarray(image.reshape(self.shape))


def image_dataset(source: Inputs):
    import ray

    converter = ImageToInput(source.image_input)
    return ray.data.read_images([str(p) for p in source.files], size=(converter.height, converter.width),
                                mode=converter.mode, include_paths=True), converter


class ShardRowName:
    """Names a row of an array dataset in errors: its shard file and row."""

    def __init__(self, files: Sequence[Path]):
        self.files = [str(f) for f in files]

    def __call__(self, row: Mapping[str, Any]) -> str:
        return f"{self.files[int(row[FILE_COLUMN])]} row {int(row[ROW_COLUMN])}"


# -- writing on the driver --------------------------------------------------------------------
class ShardWriter:
    """Gathers output rows as they arrive, in order, and writes each input shard's outputs to
    OUTPUT_DIR/<its name>.npz (images: part-NNNNN.npz of IMAGE_ROWS_PER_SHARD rows, with their
    paths), keyed by output name. Each file is written whole or not at all."""

    def __init__(self, output_dir: Path, source: Inputs, output_columns: Sequence[str]):
        self.output_dir = output_dir
        self.source = source
        self.output_columns = list(output_columns)
        self.written: list[Path] = []
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_rows = 0
        self._current = 0  # the shard being gathered
        output_dir.mkdir(parents=True, exist_ok=True)

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        if self.source.kind == "images":
            self._append(batch, ["path"])
            while self._pending_rows >= IMAGE_ROWS_PER_SHARD:
                self._flush_images(IMAGE_ROWS_PER_SHARD)
            return
        files = batch[FILE_COLUMN]
        start = 0
        for end in [*(np.flatnonzero(np.diff(files)) + 1), len(files)]:
            piece = {name: values[start:end] for name, values in batch.items()}
            while int(files[start]) != self._current:  # the shard before is complete
                self._flush_shard()
                self._current += 1
            self._append(piece, [ROW_COLUMN])
            start = end

    def close(self) -> None:
        if self.source.kind == "images":
            while self._pending_rows:
                self._flush_images(min(self._pending_rows, IMAGE_ROWS_PER_SHARD))
        else:
            self._flush_shard()
            while self._current + 1 < len(self.source.shards):  # shards with no rows
                self._current += 1
                self._flush_shard()

    def _append(self, batch: Mapping[str, np.ndarray], extra: Iterable[str]) -> None:
        for name in [*self.output_columns, *extra]:
            self._pending.setdefault(name, []).append(np.asarray(batch[name]))
        self._pending_rows += len(batch[self.output_columns[0]])

    def _take(self, count: int) -> dict[str, np.ndarray]:
        arrays = {name: np.concatenate(parts) for name, parts in self._pending.items()}
        taken = {name: a[:count] for name, a in arrays.items()}
        self._pending = {name: [a[count:]] for name, a in arrays.items()} if count < self._pending_rows else {}
        self._pending_rows -= count
        return taken

    def _flush_shard(self) -> None:
        shard = self.source.shards[self._current]
        arrays = self._take(self._pending_rows) if self._pending_rows else {}
        rows = arrays.pop(ROW_COLUMN, np.empty(0, np.int64))
        if not np.array_equal(rows, np.arange(shard.rows)):
            raise InputError(f"{shard.path}: its outputs came back as rows {_span(rows)} of {shard.rows}; "
                             "Ray Data did not keep the order (execution_options.preserve_order)")
        self._write(self.output_dir / f"{shard.path.stem}.npz", arrays)

    def _flush_images(self, count: int) -> None:
        arrays = self._take(count)
        arrays["path"] = np.asarray([str(p) for p in arrays["path"]])
        self._write(self.output_dir / f"part-{len(self.written):05d}.npz", arrays)

    def _write(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(f, **arrays)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        self.written.append(path)


def _span(rows: np.ndarray) -> str:
    return f"{rows.min()}..{rows.max()} ({len(rows)} rows)" if len(rows) else "none"
