"""Calibration: run the float graph on the user's samples (onnxruntime) and record each wanted
tensor's range, by `minmax`, `percentile`, `entropy` or `mse`; checks the samples first, naming
what is wrong."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnxruntime as ort

from ..errors import CompileError
from ..ir.graph import Graph
from ..ir.onnx_bridge import make_model

METHODS = ("minmax", "percentile", "entropy", "mse")
# Methods that choose a clipping threshold on a histogram of |value| (_MagnitudeHistogram).
_HISTOGRAM_METHODS = ("entropy", "mse")
# percentile: the range covers this share of each tensor's values (both tails cut), as
# onnxruntime's Percentile calibrator's default.
PERCENTILE = 99.999
# percentile keeps at most this many values per tensor (a uniform sample), to bound memory.
_MAX_KEPT = 1 << 20
# entropy: the histogram of |value| has this many bins (TensorRT's); when a later sample reaches
# past its range, adjacent bins merge in pairs (exact) until it fits, so it keeps 1024-2048 bins
# over the range seen.
ENTROPY_BINS = 2048
# entropy and mse: a tensor seen fewer times than this keeps the range seen (minmax). The KL search reads
# the histogram's shape; on a sparse one (a squeeze-excitation vector of a few hundred values per
# sample) it takes the large values that carry the signal for a tail and clips them: on PaddleOCR's
# recogniser that alone turned 80 % identical texts into none (benchmarks/bench_int8_accuracy.py).
ENTROPY_MIN_VALUES = 16 * ENTROPY_BINS


class CalibrationError(CompileError):
    """Calibration data that cannot calibrate the model (empty, wrong shape or type, NaN)."""


class CalibrationWarning(UserWarning):
    """Calibration data that gives a tensor no usable range (it was constant on every sample)."""


def check_sample(graph: Graph, sample: Any, index: int) -> dict[str, np.ndarray]:
    """One sample as {input name: array}, or a CalibrationError naming the input and the sample."""
    names = list(graph.inputs)
    if isinstance(sample, Mapping) and len(sample) == 1 and len(names) == 1 and names[0] not in sample:
        values = {names[0]: next(iter(sample.values()))}  # an .npz saved without names ("arr_0")
    elif isinstance(sample, Mapping):
        missing = [n for n in names if n not in sample]
        if missing:
            raise CalibrationError(f"calibration sample {index} lacks input(s) {', '.join(map(repr, missing))} "
                                   f"(it has {', '.join(map(repr, sample)) or 'none'})")
        values = {n: sample[n] for n in names}
    elif isinstance(sample, (list, tuple)) and len(names) > 1:
        if len(sample) != len(names):
            raise CalibrationError(f"calibration sample {index} has {len(sample)} arrays; the model takes "
                                   f"{len(names)} inputs ({', '.join(names)})")
        values = dict(zip(names, sample))
    elif len(names) == 1:
        values = {names[0]: sample}
    else:
        raise CalibrationError(f"calibration sample {index} is a {type(sample).__name__}; the model takes "
                               f"{len(names)} inputs: give a dict {{name: array}}")
    checked = {}
    for name, value in values.items():
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        info = graph.tensors[name]
        if info.shape and info.shape[0] == 1 and tuple(array.shape) == tuple(info.shape[1:]):
            array = array[None]  # samples stacked without the model's batch dimension of 1
        if tuple(array.shape) != tuple(info.shape):
            raise CalibrationError(f"calibration sample {index}: input {name!r} has shape {list(array.shape)}, "
                                   f"the model takes {list(info.shape)}")
        if array.dtype.kind != info.dtype.kind:
            raise CalibrationError(f"calibration sample {index}: input {name!r} is {array.dtype.name}, "
                                   f"the model takes {info.dtype.name}")
        array = array.astype(info.dtype, copy=False)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise CalibrationError(f"calibration sample {index}: input {name!r} holds NaN or infinite values")
        checked[name] = array
    return checked


class _Range:
    def __init__(self, method: str):
        self.method, self.low, self.high, self.kept = method, np.inf, -np.inf, []
        self._rng = np.random.default_rng(0)
        self.histogram = _MagnitudeHistogram() if method in _HISTOGRAM_METHODS else None

    def add(self, values: np.ndarray) -> None:
        values = values.reshape(-1).astype(np.float32, copy=False)
        if not values.size:
            return
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        if self.method == "percentile":
            if values.size > _MAX_KEPT // 4:
                values = self._rng.choice(values, _MAX_KEPT // 4, replace=False)
            self.kept.append(values)
        elif self.histogram is not None:
            self.histogram.add(values)

    def result(self) -> tuple[float, float]:
        if self.method == "percentile" and self.kept:
            values = np.concatenate(self.kept)
            if values.size > _MAX_KEPT:
                values = self._rng.choice(values, _MAX_KEPT, replace=False)
            return (float(np.percentile(values, 100 - PERCENTILE)), float(np.percentile(values, PERCENTILE)))
        if self.histogram is not None and self.histogram.width > 0 and np.isfinite(self.low + self.high) \
                and self.histogram.counts.sum() >= ENTROPY_MIN_VALUES:
            search = entropy_threshold if self.method == "entropy" else mse_threshold
            threshold = search(self.histogram.counts, self.histogram.width, self._levels())
            return max(self.low, -threshold), min(self.high, threshold)
        return self.low, self.high

    def _levels(self) -> int:
        """The int8 steps the larger side of the tensor gets. Asymmetric int8 spends all 255 on a
        one-signed tensor (its range widened to hold 0); on a two-signed one, the share of the
        range seen that the larger side takes (ReLU-like tensors with a small negative dip keep
        most steps; a symmetric one gets 128 per side, TensorRT's number)."""
        small, large = sorted((abs(self.low), abs(self.high)))
        return max(128, min(255, round(255 * large / (large + small))))


class _MagnitudeHistogram:
    """Counts of |value| in ENTROPY_BINS bins of equal width from 0, merged in pairs as the range grows."""

    def __init__(self):
        self.counts = np.zeros(ENTROPY_BINS, np.int64)
        self.width = 0.0  # 0 until a sample holds a value other than 0

    def add(self, values: np.ndarray) -> None:
        magnitudes = np.abs(values.astype(np.float64))
        largest = float(magnitudes.max())
        if self.width == 0.0:
            if largest == 0.0:
                self.counts[0] += magnitudes.size
                return
            self.width = largest / ENTROPY_BINS
        while largest > self.width * ENTROPY_BINS:
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1),
                                          np.zeros(ENTROPY_BINS // 2, np.int64)])
            self.width *= 2
        index = np.minimum((magnitudes / self.width).astype(np.int64), ENTROPY_BINS - 1)
        self.counts += np.bincount(index, minlength=ENTROPY_BINS)


def entropy_threshold(counts: np.ndarray, width: float, levels: int) -> float:
    """TensorRT's entropy calibration: the clipping threshold (a bin edge) whose `levels`-step
    quantisation of the histogram loses the least information, by KL divergence. For each
    candidate i (levels..last used bin), P is the histogram's first i bins with everything beyond
    added to the last, Q the first i bins merged into `levels` groups of i // levels bins (the last
    group takes the remainder, as onnxruntime's entropy calibrator) and spread back evenly over
    each group's non-empty bins; both are smoothed (`_smooth`) and compared."""
    used = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if used <= levels:
        return used * width  # fewer bins than steps: nothing to clip
    counts = counts[:used].astype(np.float64)
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = sum(counts[i:])
    best, best_divergence = used, np.inf
    for i in range(levels, used + 1):
        reference = counts[:i].copy()
        reference[-1] += tail[i]
        merged_bins = i // levels  # bins per step; the last step also takes the remainder
        starts = np.arange(levels) * merged_bins
        sizes = np.diff(np.append(starts, i))
        nonzero = reference != 0
        merged = np.add.reduceat(counts[:i], starts)
        filled = np.add.reduceat(nonzero.astype(np.float64), starts)
        spread = np.repeat(np.divide(merged, filled, out=np.zeros(levels), where=filled > 0), sizes) * nonzero
        divergence = _kl_divergence(_smooth(reference), _smooth(spread))
        if divergence < best_divergence:
            best, best_divergence = i, divergence
    return best * width


def mse_threshold(counts: np.ndarray, width: float, levels: int) -> float:
    """The clipping threshold (a bin edge) with the least expected squared quantisation error over
    the histogram, as NNCF's and TensorRT's MSE calibration choose one: for each candidate t (every
    edge up to the last used bin), the values inside [0, t] get the rounding noise of the step the
    tensor's larger side gets, `(t / levels)^2 / 12` each (as `entropy_threshold`, `levels` steps),
    and the values beyond are clipped to t, `(v - t)^2` each, with each bin's values spread evenly
    over the bin (its mean is (centre - t)^2 + width^2 / 12). Evaluating the fake-quantised bin
    centres instead (pytorch-quantization's way) puts every value of a bin at one point, about 8
    bins per step here: on uniform values that chose a range with 3 % more error than the range
    seen. With no tail the range seen wins, less a fraction of a step."""
    used = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if used == 0:
        return 0.0
    weights = counts[:used].astype(np.float64)
    centres = (np.arange(used) + 0.5) * width

    def beyond(values: np.ndarray) -> np.ndarray:  # [k] = sum over bins k.. of values (0 past the end)
        return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])

    count_beyond, first_beyond, second_beyond = beyond(weights), beyond(weights * centres), beyond(weights * centres ** 2)
    edges = np.arange(1, used + 1)
    thresholds = edges * width
    inside = count_beyond[0] - count_beyond[edges]
    clipped = (second_beyond[edges] - 2 * thresholds * first_beyond[edges] + thresholds ** 2 * count_beyond[edges]
               + count_beyond[edges] * width ** 2 / 12)
    errors = inside * (thresholds / levels) ** 2 / 12 + clipped
    return float(edges[int(np.argmin(errors))] * width)


def _smooth(distribution: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Normalised, each empty bin given `eps` of the mass, taken from the others in proportion
    (TensorRT and onnxruntime take an equal amount from each bin, which can turn a sparse bin
    negative; in proportion keeps every bin positive and the KL finite)."""
    distribution = distribution / distribution.sum()
    empty = distribution == 0
    if empty.all() or not empty.any():
        return distribution
    return np.where(empty, eps, distribution * (1 - eps * empty.sum()))


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    inside = p > 0
    q = np.maximum(q, 1e-300)
    return float(np.sum(p[inside] * np.log(p[inside] / q[inside])))


def calibrate(graph: Graph, samples: Iterable[Any], tensors: list[str], method: str = "minmax", *,
              progress: Callable[[str], None] | None = None, show_progress: bool | None = None
              ) -> tuple[dict[str, tuple[float, float]], int]:
    """({tensor: (low, high)}, number of samples) over `samples` run through the float graph."""
    if method not in METHODS:
        raise CalibrationError(f"calibration method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if isinstance(samples, (str, bytes)) or not hasattr(samples, "__iter__"):
        raise CalibrationError(f"calibration must be an iterable of samples (input dicts or arrays), "
                               f"got {type(samples).__name__}")
    wanted = [t for t in dict.fromkeys(tensors) if t not in graph.constants]
    session, outputs = float_session(graph, [t for t in wanted if t not in graph.inputs], "calibration")
    ranges = {t: _Range(method) for t in wanted}
    total = len(samples) if hasattr(samples, "__len__") else None
    bar = _progress_bar(total, show_progress)
    count = 0
    try:
        for index, sample in enumerate(samples):
            feeds = check_sample(graph, sample, index)
            values = dict(zip(outputs, session.run(outputs, feeds)))
            values.update(feeds)
            for name in wanted:
                ranges[name].add(np.asarray(values[name]))
            count += 1
            bar.update(1)
            if progress is not None and (count % 16 == 0 or count == total):
                progress(f"calibrated on {count}{f'/{total}' if total else ''} sample(s)")
    finally:
        bar.close()
    if not count:
        raise CalibrationError("the calibration set is empty: give at least one sample (a few hundred "
                               "representative inputs calibrate best)")
    result = {}
    for name, tracked in ranges.items():
        low, high = tracked.result()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise CalibrationError(f"tensor {name!r} reached NaN or infinity on the calibration data; "
                                   "int8 cannot represent it")
        if low == high:
            warnings.warn(f"tensor {name!r} is {low:g} on every calibration sample (a zero range): its int8 "
                          "scale cannot be measured; give samples that vary", CalibrationWarning, stacklevel=2)
        result[name] = (low, high)
    return result, count


def session_options(optimise: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def float_session(graph: Graph, extra_outputs: Iterable[str], name: str, optimise: bool = True
                  ) -> tuple[ort.InferenceSession, list[str]]:
    """The float graph in onnxruntime returning its outputs and then `extra_outputs` (each once),
    and the names of what it returns, in that order. optimise=False for a graph with QDQ: onnxruntime's
    optimiser fuses QDQ into its int8 kernels, which on CPUs without VNNI sum uint8 x int8 pairs in
    int16 and saturate (docs/precision.md); unoptimised, it dequantises and runs the fp32 op, the
    QDQ reference."""
    nodes = graph.topological_order()
    constants = sorted({i for n in nodes for i in n.inputs + n.implicit_inputs if i and graph.is_constant(i)})
    outputs = list(dict.fromkeys(list(graph.outputs) + list(extra_outputs)))
    model = make_model(graph, nodes, graph.inputs, outputs, name=name, initializers=constants)
    return ort.InferenceSession(model.SerializeToString(), session_options(optimise),
                                providers=["CPUExecutionProvider"]), outputs


def _progress_bar(total: int | None, show: bool | None):
    """tqdm on stderr; by default only when stderr is a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, desc="calibrating", unit="sample", disable=not show, file=sys.stderr, leave=False)


class NpzSamples:
    """The samples of an .npz of stacked inputs: one array per input name (the first axis counts
    samples), or a single unnamed array for a one-input model; read lazily, sample by sample."""

    def __init__(self, path):
        self.path = path
        try:
            with np.load(path) as data:
                self._names = list(data.files)
                counts = {name: data[name].shape[0] if data[name].ndim else 0 for name in self._names}
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"cannot read calibration data {str(path)!r}: {exc}") from None
        if len(set(counts.values())) > 1:
            raise CalibrationError(f"calibration data {str(path)!r}: arrays hold different numbers of samples "
                                   f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
        self._count = next(iter(counts.values()), 0)

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        with np.load(self.path) as data:
            arrays = {name: data[name] for name in self._names}
        for i in range(self._count):
            yield {name: array[i] for name, array in arrays.items()}
