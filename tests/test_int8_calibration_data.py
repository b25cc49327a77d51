"""Entropy (KL) calibration and the calibration data sources: an .npz, a folder of .npy/.npz
shards, a folder of images with a named preprocessing (docs/precision.md)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_int8 import SmallCnn

import rblnc
from rblnc.quantize.calibrate import CalibrationError

CNN_SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    torch.onnx.export(SmallCnn().eval(), torch.randn(*CNN_SHAPE), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    return path


def _long_tailed(count, seed=0):
    """Normal values with rare outliers (1 in 10 000 at 20-40 sigma); the first sample holds the
    largest magnitude, so the calibrator's histogram never has to grow."""
    rng = np.random.default_rng(seed)
    samples = [rng.standard_normal(CNN_SHAPE).astype(np.float32) for _ in range(count)]
    flat = np.concatenate([s.ravel() for s in samples])
    outliers = rng.choice(flat.size, max(1, flat.size // 10_000), replace=False)
    flat[outliers] = rng.uniform(20, 40, outliers.size) * rng.choice([-1, 1], outliers.size)
    flat[0] = 45.0
    return [chunk.reshape(CNN_SHAPE) for chunk in np.split(flat, count)]


def _reference_entropy_threshold(values, bins=2048, levels=128):
    """TensorRT's / onnxruntime's entropy calibration written out bin by bin: the histogram edge
    whose 128-level quantisation has the least KL divergence from the clipped histogram."""
    histogram, edges = np.histogram(np.abs(values), bins=bins, range=(0, np.abs(values).max()))
    best, best_divergence = None, np.inf
    for i in range(levels, bins + 1):
        p = histogram[:i].astype(np.float64)
        p[-1] += histogram[i:].sum()
        merged = i // levels
        q = np.zeros(i)
        for level in range(levels):
            start, stop = level * merged, (i if level == levels - 1 else (level + 1) * merged)
            nonzero = np.count_nonzero(p[start:stop])
            if nonzero:
                q[start:stop] = histogram[start:stop].sum() / nonzero
        q[p == 0] = 0
        p, q = p / p.sum(), q / q.sum()
        for d in (p, q):  # 1e-4 of the mass onto each empty bin, taken from the others in proportion
            zeros = d == 0
            if zeros.any():
                d[~zeros] *= 1 - 1e-4 * zeros.sum()
                d[zeros] = 1e-4
        divergence = sum(pk * np.log(pk / qk) for pk, qk in zip(p, q) if pk > 0)
        if divergence < best_divergence:
            best, best_divergence = edges[i], divergence
    return best


def test_entropy_clips_a_long_tailed_distribution(cnn_onnx):
    samples = _long_tailed(8)
    compiled = rblnc.compile_from_onnx(str(cnn_onnx), dtype="int8", int8_ops="all", calibration=samples,
                                       calibration_method="entropy")
    low, high = compiled.report.quantized.ranges["x"]
    values = np.concatenate([s.ravel() for s in samples])
    expected = _reference_entropy_threshold(values)
    # The KL search lands on the same histogram edge (one bin of float slack at the edges).
    bin_width = float(np.abs(values).max()) / 2048
    assert high == pytest.approx(expected, abs=1.01 * bin_width)
    assert low == pytest.approx(-expected, abs=1.01 * bin_width)
    # Far inside the range minmax takes (-40..45), around the normal bulk (|x| < ~4.5).
    assert 2.5 < high < 10 and high < 0.25 * values.max()
    minmax = rblnc.compile_from_onnx(str(cnn_onnx), dtype="int8", int8_ops="all", calibration=samples)
    assert minmax.report.quantized.ranges["x"] == (float(values.min()), float(values.max()))
    # Every range lies within the one seen; a one-signed tensor (after a ReLU) keeps its side: its
    # low end stays the minimum seen (asymmetric int8 spends all 255 steps on [0, threshold]).
    one_signed = 0
    for name, (seen_low, seen_high) in minmax.report.quantized.ranges.items():
        entropy_low, entropy_high = compiled.report.quantized.ranges[name]
        assert seen_low <= entropy_low <= entropy_high <= seen_high
        if seen_low >= 0:
            one_signed += 1
            assert entropy_low == seen_low and entropy_high < seen_high
    assert one_signed >= 3
    # The compiled model still follows onnxruntime's float run on ordinary inputs: relative L2
    # within 5 % (as minmax and percentile in test_int8_calibration.py).
    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    runtime = compiled.create_runtime()
    rng = np.random.default_rng(7)
    for _ in range(4):
        x = rng.standard_normal(CNN_SHAPE).astype(np.float32)
        reference = session.run(None, {"x": x})[0]
        error = np.linalg.norm(np.asarray(runtime.run(x)) - reference) / np.linalg.norm(reference)
        assert error < 0.05
