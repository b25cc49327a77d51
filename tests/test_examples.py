"""The seed tutorial's examples (examples/): their data layouts, pre- and post-processing, the pacing
calibration, and both scripts end to end on a handful of small samples; `make demo`'s check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import concurrency_report as report  # noqa: E402
from coco_val2017_like import COCO_CATEGORIES, write_coco_val2017  # noqa: E402
from detection import PAD_VALUE, LetterBox, decode_detections  # noqa: E402
from nyu_depth_v2_like import write_nyu_depth_v2  # noqa: E402
from rblnc.runtime.engine import Resource, Step  # noqa: E402


# --------------------------------------------------------------------------- data layouts


def test_nyu_depth_v2_layout_is_what_the_tutorial_reads(tmp_path):
    import h5py

    folder = write_nyu_depth_v2(tmp_path, count=2, seed=3)
    assert folder == tmp_path / "val" / "official"
    assert sorted(p.name for p in folder.iterdir()) == ["00001.h5", "00002.h5"]
    with h5py.File(folder / "00001.h5", "r") as h5f:
        rgb, depth = np.array(h5f["rgb"]), np.array(h5f["depth"])
    assert rgb.shape == (3, 480, 640) and rgb.dtype == np.uint8
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    assert 0.5 < depth.min() and depth.max() <= 10.0
    assert rgb.std() > 10  # a picture, not a flat fill
    # The tutorial's reading: HWC, then cv2.resize to the model's size.
    image = cv2.resize(np.transpose(rgb, (1, 2, 0)), (512, 512))
    assert image.shape == (512, 512, 3)
    # Seeded: the same samples again.
    again = write_nyu_depth_v2(tmp_path / "again", count=1, seed=3)
    with h5py.File(again / "00001.h5", "r") as first, h5py.File(folder / "00001.h5", "r") as second:
        np.testing.assert_array_equal(first["rgb"], second["rgb"])


def test_coco_val2017_layout_loads_with_pycocotools(tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    path = write_coco_val2017(tmp_path, count=9)
    assert path == tmp_path / "annotations" / "instances_val2017.json"
    coco = COCO(str(path))
    ids = coco.getImgIds()
    assert len(ids) == 9 and ids == sorted(ids)
    assert sorted(coco.getCatIds()) == [cid for cid, _, _ in COCO_CATEGORIES] and len(COCO_CATEGORIES) == 80
    for image_id in ids:
        info = coco.imgs[image_id]
        assert info["file_name"] == f"{image_id:012d}.jpg"
        with Image.open(tmp_path / "val2017" / info["file_name"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert (image.width, image.height) == (info["width"], info["height"])
            assert max(image.size) == 640
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            x, y, w, h = annotation["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= info["width"] + 0.01 and y + h <= info["height"] + 0.01
    assert len(coco.getAnnIds()) > 0


# --------------------------------------------------------------------------- pre- and post-processing


def test_letterbox_scales_and_centres_as_ultralytics():
    image = np.arange(427 * 640 * 3, dtype=np.float32).reshape(427, 640, 3) % 251
    boxed = LetterBox()(image=image)
    assert boxed.shape == (640, 640, 3)
    # 640 wide already: no resize; 213 rows of padding, the odd one at the bottom.
    assert LetterBox().geometry((427, 640)) == (1.0, (640, 427), (106, 107, 0, 0))
    np.testing.assert_array_equal(boxed[106:533], image)
    assert (boxed[:106] == PAD_VALUE).all() and (boxed[533:] == PAD_VALUE).all()

    tall = np.zeros((300, 100, 3), dtype=np.uint8)
    ratio, resized, padding = LetterBox((128, 128)).geometry(tall.shape[:2])
    assert (ratio, resized, padding) == (128 / 300, (43, 128), (0, 0, 42, 43))
    assert LetterBox((128, 128))(image=tall).shape == (128, 128, 3)


def test_decode_keeps_the_best_box_per_class_and_maps_back_to_the_image():
    letterbox = LetterBox((64, 64))  # a 32x64 image: scale 1, 16 rows of padding above
    anchors = 5
    output = np.zeros((1, 4 + 3, anchors), dtype=np.float32)
    boxes = [(20, 30, 10, 10), (21, 30, 10, 10), (20, 30, 10, 10), (50, 40, 8, 4), (5, 20, 4, 4)]
    scores = [(0.9, 0, 0), (0.8, 0, 0), (0, 0.7, 0), (0, 0, 0.6), (0.1, 0, 0)]
    for i, (box, score) in enumerate(zip(boxes, scores)):
        output[0, :4, i], output[0, 4:, i] = box, score
    detections = decode_detections(output, (32, 64), letterbox)
    # Anchor 1 overlaps anchor 0 of its class and goes; anchor 2 is another class and stays;
    # anchor 4 is under the score threshold.
    assert [(d.class_index, round(d.score, 2)) for d in detections] == [(0, 0.9), (1, 0.7), (2, 0.6)]
    np.testing.assert_allclose(detections[0].box, (15, 30 - 5 - 16, 25, 30 + 5 - 16))
    np.testing.assert_allclose(detections[2].box, (46, 40 - 2 - 16, 54, 40 + 2 - 16))


# --------------------------------------------------------------------------- pacing


def _steps():
    return [
        Step(Resource.H2D, "p0 h2d", "p0", 0.1e6),
        Step(Resource.NPU, "p0", "p0", 1.0e6, run=lambda values: None),
        Step(Resource.NPU, "p2", "p2", 0.002e6, run=lambda values: None),  # tiny: the emulator's fixed cost dominates
        Step(Resource.HOST, "p1", "p1", 5.0e6, run=lambda values: None),
    ]


def _overrun_fraction(steps, measured, scale, resource):
    pairs = [(report.COMPUTE_MARGIN * np.median(measured[s.name]) if s.run else 0.0, s.est_ns * 1e-9)
             for s in steps if s.resource is resource]
    modelled = scale * sum(e for _, e in pairs)
    return sum(max(0.0, c - scale * e) for c, e in pairs) / modelled


def test_pace_scale_is_the_smallest_that_keeps_each_resource_within_its_overrun_budget():
    steps = _steps()
    measured = {"p0": [0.2, 0.3, 0.25], "p2": [0.02, 0.02, 0.02], "p1": [0.005, 0.005, 0.006]}
    scale = report.pace_scale_for(steps, measured)
    for resource in (Resource.NPU, Resource.HOST):
        assert _overrun_fraction(steps, measured, scale, resource) <= report.OVERRUN_BUDGET
    # Two significant digits up from the smallest: 5% less breaks the budget on the NPU.
    assert _overrun_fraction(steps, measured, scale * 0.95, Resource.NPU) > report.OVERRUN_BUDGET
    # A per-step rule would have needed the tiny step to fit: 1.5 x 20 ms / 2 us = 15000.
    assert scale < 1000


def test_pace_scale_refuses_steps_without_modelled_time():
    steps = [Step(Resource.NPU, "p0", "p0", 0.0, run=lambda values: None)]
    with pytest.raises(ValueError, match="no step carries a modelled time"):
        report.pace_scale_for(steps, {"p0": [0.1]})


def test_differences_are_checked_against_the_tolerance():
    difference = report.Difference("logits", tolerance=1e-3)
    difference.add(np.array([1.0, 2.0005]), np.array([1.0, 2.0]))
    assert difference.ok and difference.largest == pytest.approx(5e-4) and difference.scale == 2.0
    difference.add(np.array([-3.0]), np.array([-3.01]))
    assert not difference.ok and difference.largest == pytest.approx(0.01)


# --------------------------------------------------------------------------- the scripts, end to end


def _run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def _check_report(stdout: str, samples: int, paced: int, target: str, dtype: str) -> None:
    assert re.search(rf"^compile: [\d.]+ s \(compile_from_\w+, {target}, {dtype}, -O2\): \d+ partitions", stdout, re.M)
    assert re.search(rf"^functional, {samples} samples .* sync [\d.]+ req/s, async [\d.]+ req/s: async/sync [\d.]+x$",
                     stdout, re.M)
    assert re.search(rf"^paced, {paced} samples: every step lasts S = 5 x its modelled time \(--pace-scale\)$",
                     stdout, re.M)
    # The paced runs go by the compiler's own estimates: the NPU's modelled time is in the artifact.
    npu_ms = re.search(r"^  modelled per request: .*NPU ([\d.e+-]+) ms", stdout, re.M)
    assert npu_ms and float(npu_ms.group(1)) > 0
    assert re.search(r"^  async [\d.e+-]+ req/s .* modelled NPU utilisation [\d.]+%$", stdout, re.M)
    assert re.search(r"^  async/sync [\d.]+x \(the model's bound: [\d.]+x\)$", stdout, re.M)


def _check_trace(path: Path, stdout: str) -> None:
    """The paced async run's trace: DMA and NPU lanes, and host lanes if and only if the compile
    line reports host partitions."""
    events = json.loads(path.read_text())["traceEvents"]
    lanes = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    host_partitions = int(re.search(r"^compile: .* (\d+) on the host$", stdout, re.M).group(1))
    assert {"NPU", "H2D DMA", "D2H DMA"} <= lanes and ("host 0" in lanes) == (host_partitions > 0)
    slices = [e for e in events if e.get("ph") == "X"]
    assert slices and all("modelled_us" in e["args"] for e in slices)


def test_torch_yolov8_example_runs_end_to_end(tmp_path):
    from PIL import Image

    trace, drawing = tmp_path / "trace.json", tmp_path / "boxes.png"
    # At bf16 (the compiler's default, as the tutorial compiles) the example reports the difference
    # from torch and checks an fp32 compile of the same model on the same samples; --target is
    # passed on to both compiles.
    result = _run_example("torch_yolov8_coco.py", "--samples", "3", "--paced-samples", "2", "--size", "96",
                          "--pace-scale", "5", "--data-root", str(tmp_path / "coco"), "--trace", str(trace),
                          "--detections", str(drawing), "--dtype", "bf16", "--target", "edge-tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    _check_report(result.stdout, samples=3, paced=2, target="edge-tiny", dtype="bf16")
    assert re.search(r"^largest \|rblnc - torch\| \(boxes, bf16, 3 samples\): .*reported, not checked", result.stdout, re.M)
    for part, tolerance in (("boxes", 0.05), ("class scores", 0.0001)):
        found = re.search(rf"^largest \|rblnc - torch\| \({part}, fp32, 3 samples\): (\S+) "
                          rf".*tolerance {tolerance:g}\): OK$", result.stdout, re.M)
        assert found and float(found.group(1)) <= tolerance
    assert re.search(r"^detections in \d{12}\.jpg \(fp32\): \d+ after NMS \(torch's own outputs: \d+, the same boxes\)",
                     result.stdout, re.M)
    with Image.open(drawing) as image:
        assert image.format == "PNG" and max(image.size) == 640  # drawn on the original image
    _check_trace(trace, result.stdout)
    assert (tmp_path / "coco" / "annotations" / "instances_val2017.json").is_file()


def test_tf_deeplabv3p_example_runs_end_to_end(tmp_path):
    trace = tmp_path / "trace.json"
    result = _run_example("tf_deeplabv3p_depth.py", "--samples", "3", "--paced-samples", "2", "--size", "64",
                          "--pace-scale", "5", "--data-root", str(tmp_path / "nyu"), "--trace", str(trace),
                          "--dtype", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    _check_report(result.stdout, samples=3, paced=2, target="rbln-ca12", dtype="fp32")
    found = re.search(r"^largest \|rblnc - keras\| \(logits, fp32, 3 samples\): (\S+) .*tolerance 0.001\): OK$",
                      result.stdout, re.M)
    assert found and float(found.group(1)) <= 1e-3
    _check_trace(trace, result.stdout)
    assert len(list((tmp_path / "nyu" / "val" / "official").glob("*.h5"))) == 3
    peak = re.search(r"^peak memory \(RSS\): (\S+) GiB, \d+ s after the imports$", result.stdout, re.M)
    assert peak and 0.1 < float(peak.group(1)) < 64


# --------------------------------------------------------------------------- make demo's check


def test_demo_check_fails_on_outputs_that_differ_from_torch(tmp_path):
    """The check `make demo` ends with, on a small artifact of the right name: it passes on the
    reference itself and exits 1 once one box coordinate is off by a pixel."""
    import rblnc
    import torch
    from PIL import Image

    model = torch.nn.Conv2d(3, 84, 1).eval()
    compiled = rblnc.compile_from_torch(model, [("images", [1, 3, 8, 8], "float32")], dtype="fp32")
    compiled.save(tmp_path / "yolov8n.rbln")
    image_path = tmp_path / "image.jpg"
    Image.fromarray(np.full((640, 640, 3), 90, np.uint8)).save(image_path)
    reference = np.random.default_rng(0).uniform(0, 1, (2, 1, 84, 8400)).astype(np.float32)
    np.savez(tmp_path / "reference.npz", output=reference, first_image=str(image_path))
    np.savez(tmp_path / "outputs.npz", output=reference)

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(EXAMPLES / "demo.py"), "check", str(tmp_path)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    passed = check()
    assert passed.returncode == 0 and "demo OK" in passed.stdout, passed.stdout + passed.stderr
    off = reference.copy()
    off[1, 0, 2, 17] += 1.0
    np.savez(tmp_path / "outputs.npz", output=off)
    failed = check()
    assert failed.returncode == 1
    assert "boxes: max |rblnc - torch| = 1 (fp32, tolerance 0.05)" in failed.stdout
    assert "demo FAILED" in failed.stdout
