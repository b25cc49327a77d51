"""Entropy (KL) and MSE calibration and the calibration data sources: an .npz, a folder of .npy/.npz
shards, a folder of images with a named preprocessing (docs/precision.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import export_onnx
from test_int8 import SmallCnn

import rblnc
from rblnc.quantize.calibrate import CalibrationError

CNN_SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    export_onnx(SmallCnn().eval(), torch.randn(*CNN_SHAPE), path)
    return path


def _long_tailed(count, seed=0):
    """Normal values with rare outliers (1 in 10 000 at 20-45 sigma, both signs); the first sample
    holds the largest magnitude, so the calibrator's histogram never has to grow."""
    rng = np.random.default_rng(seed)
    samples = [rng.standard_normal(CNN_SHAPE).astype(np.float32) for _ in range(count)]
    flat = np.concatenate([s.ravel() for s in samples])
    outliers = rng.choice(flat.size, max(2, flat.size // 10_000), replace=False)
    flat[outliers] = rng.uniform(20, 40, outliers.size) * np.resize([-1, 1], outliers.size)
    flat[0], flat[1] = 45.0, -44.0
    return [chunk.reshape(CNN_SHAPE) for chunk in np.split(flat, count)]


def _reference_entropy_threshold(values, bins=2048):
    """TensorRT's / onnxruntime's entropy calibration written out bin by bin: the histogram edge
    whose quantisation to the larger side's share of 255 steps has the least KL divergence from
    the clipped histogram."""
    small, large = sorted((abs(float(values.min())), abs(float(values.max()))))
    levels = max(128, min(255, round(255 * large / (large + small))))
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
    samples = _long_tailed(48)  # 36 864 values of x: enough for the KL search (ENTROPY_MIN_VALUES)
    compiled = rblnc.compile_from_onnx(str(cnn_onnx), dtype="int8", int8_ops="all", calibration=samples,
                                       calibration_method="entropy")
    low, high = compiled.report.quantized.ranges["x"]
    values = np.concatenate([s.ravel() for s in samples])
    expected = _reference_entropy_threshold(values)
    # The KL search lands on the same histogram edge (one bin of float slack at the edges).
    bin_width = float(np.abs(values).max()) / 2048
    assert high == pytest.approx(expected, abs=1.01 * bin_width)
    assert low == pytest.approx(-expected, abs=1.01 * bin_width)
    # Far inside the range minmax takes (-44..45), around the normal bulk (|x| < ~4.5).
    assert 2.5 < high < 10 and high < 0.25 * values.max()
    minmax = rblnc.compile_from_onnx(str(cnn_onnx), dtype="int8", int8_ops="all", calibration=samples)
    assert minmax.report.quantized.ranges["x"] == (float(values.min()), float(values.max()))
    # Every range lies within the one seen; a one-signed tensor (after a ReLU) keeps its side: its
    # low end stays the minimum seen (asymmetric int8 spends all 255 steps on [0, threshold]).
    clipped = 0
    for name, (seen_low, seen_high) in minmax.report.quantized.ranges.items():
        entropy_low, entropy_high = compiled.report.quantized.ranges[name]
        assert seen_low <= entropy_low <= entropy_high <= seen_high
        if seen_low >= 0:
            assert entropy_low == seen_low
            clipped += entropy_high < seen_high
    assert clipped >= 2
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


def test_entropy_keeps_the_range_seen_on_too_few_values(cnn_onnx):
    """Under ENTROPY_MIN_VALUES values a histogram of 2048 bins is too sparse for the KL search (it
    clipped the squeeze-excitation vectors of PaddleOCR's recogniser): the range seen is kept."""
    from rblnc.importers import import_onnx
    from rblnc.quantize.calibrate import ENTROPY_MIN_VALUES, calibrate

    graph = import_onnx(str(cnn_onnx))
    few = _long_tailed(8)  # 6 144 values
    assert 8 * 768 < ENTROPY_MIN_VALUES <= 48 * 768
    ranges, count = calibrate(graph, few, ["x"], "entropy")
    seen = np.concatenate([s.ravel() for s in few])
    assert count == 8 and ranges["x"] == (float(seen.min()), float(seen.max()))
    ranges, _ = calibrate(graph, _long_tailed(48), ["x"], "entropy")
    assert ranges["x"][1] < 10


def _quantisation_mse(values, low, high):
    """Mean squared error of `values` quantised to int8 with the params rblnc chooses for the range
    (insert.activation_params), by ONNX's QuantizeLinear / DequantizeLinear, in float64."""
    from rblnc.quantize.insert import activation_params

    params = activation_params(low, high)
    scale, zero = float(params.scale[0]), int(params.zero_point[0])
    quantised = np.clip(np.round(values.astype(np.float64) / scale) + zero, -128, 127)
    return float(np.mean(((quantised - zero) * scale - values) ** 2))


def _reference_mse_threshold(values, levels, bins=2048):
    """The MSE search written out candidate by candidate: for threshold t, each value inside [0, t]
    costs the rounding noise (t / levels)^2 / 12, each value beyond costs (v - t)^2 (the values of a
    bin spread evenly over it, integrated numerically on 64 points per bin)."""
    magnitudes = np.abs(values.astype(np.float64))
    width = magnitudes.max() / bins  # the calibrator's bins: [k, k + 1) x width, the last one closed
    counts = np.bincount(np.minimum((magnitudes / width).astype(np.int64), bins - 1), minlength=bins)
    points = (np.arange(64) + 0.5) / 64  # where in a bin
    errors = []
    for i in range(1, bins + 1):
        t = i * width
        beyond = sum(counts[k] * np.mean(((k + points) * width - t) ** 2) for k in np.flatnonzero(counts[i:]) + i)
        errors.append(counts[:i].sum() * (t / levels) ** 2 / 12 + beyond)
    return (1 + int(np.argmin(errors))) * width


def test_mse_beats_minmax_on_outliers_and_keeps_a_tailless_range(cnn_onnx):
    """calibration_method="mse": the threshold with the least squared quantisation error over the
    histogram (NNCF / TensorRT style). On normal values with rare outliers it clips (less error than
    minmax's full range, measured on the values themselves); on uniform values (no tail) it keeps
    minmax's range within one quantisation step (the optimum sits half a step inside) with as
    little error (within 1 %)."""
    from rblnc.importers import import_onnx
    from rblnc.quantize.calibrate import calibrate

    graph = import_onnx(str(cnn_onnx))
    samples = _long_tailed(48)  # 36 864 values of x (at least ENTROPY_MIN_VALUES, as entropy needs)
    values = np.concatenate([s.ravel() for s in samples])
    mse_range = calibrate(graph, samples, ["x"], "mse")[0]["x"]
    minmax_range = calibrate(graph, samples, ["x"], "minmax")[0]["x"]
    assert minmax_range == (float(values.min()), float(values.max()))
    assert values.min() < mse_range[0] < 0 < mse_range[1] < values.max()
    # The same edge as the search written out, with the steps the larger side gets (45 of -44..45:
    # 129 of 255, as entropy takes them).
    bin_width = float(np.abs(values).max()) / 2048
    levels = round(255 * 45 / (45 + 44))
    assert mse_range[1] == pytest.approx(_reference_mse_threshold(values, levels), abs=1.01 * bin_width)
    # 9 % less error: the outliers (1 in 10 000, at 20-45) cost more clipped than the bulk gains from
    # a finer step, so the MSE threshold stays out at about 41 (entropy clips at about 4.5).
    assert _quantisation_mse(values, *mse_range) < 0.95 * _quantisation_mse(values, *minmax_range)

    rng = np.random.default_rng(1)
    for low, high in ((-3.0, 3.0), (0.0, 5.0)):  # two-signed, and one-signed (a ReLU's output)
        uniform = [rng.uniform(low, high, CNN_SHAPE).astype(np.float32) for _ in range(48)]
        seen = np.concatenate([u.ravel() for u in uniform])
        mse_low, mse_high = calibrate(graph, uniform, ["x"], "mse")[0]["x"]
        step = (seen.max() - min(seen.min(), 0)) / 255
        assert seen.max() - step < mse_high <= seen.max()
        assert mse_low == seen.min() if low == 0 else seen.min() <= mse_low < seen.min() + step
        assert _quantisation_mse(seen, mse_low, mse_high) <= _quantisation_mse(seen, seen.min(), seen.max()) * 1.01

    # The compiled model follows onnxruntime's float run on ordinary inputs (as the other methods).
    compiled = rblnc.compile_from_onnx(str(cnn_onnx), dtype="int8", int8_ops="all", calibration=samples,
                                       calibration_method="mse")
    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    runtime = compiled.create_runtime()
    for x in (np.random.default_rng(7).standard_normal(CNN_SHAPE).astype(np.float32) for _ in range(4)):
        reference = session.run(None, {"x": x})[0]
        assert np.linalg.norm(np.asarray(runtime.run(x)) - reference) / np.linalg.norm(reference) < 0.05


def _normal(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def _ranges(model, calibration, **options):
    compiled = rblnc.compile_from_onnx(str(model), dtype="int8", int8_ops="all", calibration=calibration, **options)
    return compiled.report.quantized.ranges


def test_a_folder_of_shards_calibrates_as_its_samples_in_name_order(cnn_onnx, tmp_path):
    """.npy with one sample (with or without the batch dimension of 1), .npy and .npz with several
    stacked, an unnamed .npz: the ranges equal those of the same samples given as a list."""
    samples = _normal(CNN_SHAPE, 7)
    folder = tmp_path / "shards"
    folder.mkdir()
    np.save(folder / "a.npy", samples[0])
    np.save(folder / "b.npy", samples[1][0])
    np.save(folder / "c.npy", np.stack(samples[2:4]))
    np.savez(folder / "d.npz", x=np.stack([s[0] for s in samples[4:6]]))
    np.savez(folder / "e.npz", samples[6])
    expected = _ranges(cnn_onnx, samples)
    assert _ranges(cnn_onnx, folder) == expected
    assert _ranges(cnn_onnx, str(folder)) == expected
    np.savez(tmp_path / "stacked.npz", x=np.stack(samples))
    assert _ranges(cnn_onnx, tmp_path / "stacked.npz") == expected


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, a, b):
        return self.fc(a) + b


def test_shards_of_a_two_input_model(tmp_path):
    torch.manual_seed(0)
    model, shape = _TwoInputs().eval(), (2, 8)
    path = tmp_path / "two.onnx"
    export_onnx(model, (torch.randn(*shape), torch.randn(*shape)), path, input_names=["a", "b"])
    a, b = _normal(shape, 3, seed=1), _normal(shape, 3, seed=2)
    folder = tmp_path / "shards"
    folder.mkdir()
    np.savez(folder / "0.npz", a=a[0], b=b[0])
    np.savez(folder / "1.npz", a=np.stack(a[1:]), b=np.stack(b[1:]))
    assert _ranges(path, folder) == _ranges(path, [{"a": x, "b": y} for x, y in zip(a, b)])
    np.save(folder / "2.npy", a[0])
    with pytest.raises(CalibrationError, match=r"calibration shard '.*2\.npy': an \.npy holds one array, but "
                                               r"the model takes 2 inputs \(a, b\); save each shard as an \.npz"):
        _ranges(path, folder)
    (folder / "2.npy").unlink()
    np.savez(folder / "3.npz", a=np.stack(a[1:]), b=b[0])
    with pytest.raises(CalibrationError, match=r"'.*3\.npz': its arrays hold different numbers of samples "
                                               r"\(a: 2, b: 1\)"):
        _ranges(path, folder)


def test_bad_calibration_folders_name_the_file(cnn_onnx, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(CalibrationError, match=r"calibration folder '.*data' is empty"):
        _ranges(cnn_onnx, folder)
    np.save(folder / "a.npy", _normal(CNN_SHAPE, 1)[0])
    np.save(folder / "b.npy", np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(CalibrationError) as failure:
        _ranges(cnn_onnx, folder)
    assert str(failure.value) == (f"calibration shard {str(folder / 'b.npy')!r}: input 'x' has shape [1, 3, 8, 8]; "
                                  "the model takes [1, 3, 16, 16] (one sample, or samples stacked on a first axis)")
    (folder / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(CalibrationError, match=r"cannot read calibration shard '.*b\.npy'"):
        _ranges(cnn_onnx, folder)
    (folder / "b.npy").unlink()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(CalibrationError, match=r"'notes\.txt' is neither an \.npy/\.npz shard nor an image"):
        _ranges(cnn_onnx, folder)
    (folder / "notes.txt").unlink()
    _write_image(folder / "c.png", (20, 30))
    with pytest.raises(CalibrationError, match=r"mixes shards \('a\.npy'\) and images \('c\.png'\)"):
        _ranges(cnn_onnx, folder)
    with pytest.raises(CalibrationError, match=r"calibration data '.*missing' does not exist"):
        _ranges(cnn_onnx, tmp_path / "missing")


def _write_image(path, size, seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


SKIMAGE_IMAGES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png")


def _image_folder(tmp_path):
    """Photos of different sizes (and one grayscale) from scikit-image's bundled data."""
    import shutil

    import skimage

    data = Path(skimage.__file__).parent / "data"
    folder = tmp_path / "images"
    folder.mkdir()
    for name in SKIMAGE_IMAGES:
        shutil.copy(data / name, folder / name)
    return folder


def _expected_image(path, height, width, mean, std):
    """The preprocessing written out: RGB, bilinear resize (PIL), / 255, (x - mean) / std."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), np.float32) / 255
    return (pixels - np.array(mean, np.float32)) / np.array(std, np.float32)


class _NhwcCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.relu(self.conv(x.permute(0, 3, 1, 2)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_folder_of_images_with_imagenet_preprocessing(cnn_onnx, tmp_path, layout):
    folder = _image_folder(tmp_path)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = [_expected_image(folder / name, 16, 16, mean, std) for name in sorted(SKIMAGE_IMAGES)]
    if layout == "NCHW":
        model, samples = cnn_onnx, [e.transpose(2, 0, 1)[None] for e in expected]
    else:
        torch.manual_seed(0)
        model = tmp_path / "nhwc.onnx"
        export_onnx(_NhwcCnn().eval(), torch.randn(1, 16, 16, 3), model)
        samples = [e[None] for e in expected]
    ranges = _ranges(model, folder, calibration_preprocess="imagenet")
    assert ranges == _ranges(model, samples)
    # The input's range is that of normalised photos (about -2.1..2.6), not of 0..255.
    low, high = ranges["x"]
    assert -2.2 < low < -1.5 and 2.0 < high < 2.7
    with pytest.raises(CalibrationError, match="holds images: name their preprocessing"):
        _ranges(model, folder)
    with pytest.raises(CalibrationError, match="calibration preprocessing 'caffe' is unknown; choose one of "
                                               "imagenet, unit, none"):
        _ranges(model, folder, calibration_preprocess="caffe")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CalibrationError, match=r"cannot read calibration image '.*broken\.png'"):
        _ranges(model, folder, calibration_preprocess="imagenet")


def test_command_line_calibrates_from_a_folder_of_images(cnn_onnx, tmp_path):
    import json
    import subprocess
    import sys

    folder = _image_folder(tmp_path)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rblnc.cli", *map(str, args)], capture_output=True, text=True)

    done = cli("compile", cnn_onnx, "-o", tmp_path / "cnn.rbln", "--dtype", "int8", "--calibrate", folder,
               "--calibration-preprocess", "unit", "--calibration-method", "entropy", "--int8-ops", "all")
    assert done.returncode == 0, done.stderr
    assert f"calibrated on {len(SKIMAGE_IMAGES)}/{len(SKIMAGE_IMAGES)} sample(s)" in done.stderr
    report = json.loads(cli("inspect", tmp_path / "cnn.rbln", "--json").stdout)
    assert report["precision"]["conversion"]["commands"] == 2
    failed = cli("compile", cnn_onnx, "-o", tmp_path / "bad.rbln", "--dtype", "int8", "--calibrate", folder)
    assert failed.returncode == 1
    assert "holds images: name their preprocessing" in failed.stderr.strip().splitlines()[-1]
