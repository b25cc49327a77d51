"""The torch zoo through the TorchScript importer: trace, compile, run on the emulator, match torch."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import relative_errors

import rblnc
from rblnc import zoo
from rblnc.emulator import MODEL_ERROR_BOUNDS
from rblnc.format.artifact import Device

# Tracing and scripting are what these tests exercise; torch's deprecation notices and the
# tracer's warnings about Python values are expected here.
pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

NAMES = sorted(zoo.TORCH_ZOO)
# YOLOv8n's box rows are pixel coordinates (up to ~1000); their absolute error scales with the
# image, so boxes get 1e-4 of the 640-pixel image, as the zoo's own export test allows.
YOLO_BOX_ATOL = 1e-4 * 640
TOP_BOXES = 20


def _eager(name: str, inputs) -> np.ndarray:
    with torch.no_grad():
        return zoo.get(name).build(seed=0)(*[torch.from_numpy(x) for x in inputs]).numpy()


def _compile_and_run(name: str, small: bool, dtype: str = "fp32"):
    entry = zoo.get(name)
    inputs = entry.example_inputs(small=small)
    compiled = rblnc.compile_from_torchscript(zoo.trace(name, small=small), dtype=dtype)
    return compiled, compiled.create_runtime().run(*inputs), _eager(name, inputs)


def assert_matches_torch(name: str, actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-3,
                         atol: float = 1e-4, box_atol: float = YOLO_BOX_ATOL, top_overlap: float = 1.0) -> None:
    """Outputs within tolerance; for YOLOv8n also the same top-scoring anchors (all of the top
    TOP_BOXES, with the same classes, at top_overlap 1; that fraction of them otherwise)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if name == "yolov8n":
        np.testing.assert_allclose(actual[:, :4], expected[:, :4], rtol=rtol, atol=box_atol)
        scores, expected_scores = actual[:, 4:], expected[:, 4:]
        np.testing.assert_allclose(scores, expected_scores, rtol=rtol, atol=atol)
        # Detection keeps the best-scoring anchors: the same ones must come out on top.
        best, expected_best = scores.max(1)[0], expected_scores.max(1)[0]
        top = np.argsort(-expected_best)[:TOP_BOXES]
        shared = set(np.argsort(-best)[:TOP_BOXES]) & set(top)
        assert len(shared) >= top_overlap * TOP_BOXES, f"only {len(shared)} of the top {TOP_BOXES} anchors agree"
        if top_overlap == 1.0:
            np.testing.assert_array_equal(scores.argmax(1)[0][top], expected_scores.argmax(1)[0][top])
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_matches_torch_at_small_size(name):
    compiled, actual, expected = _compile_and_run(name, small=True)
    assert_matches_torch(name, actual, expected)
    assert compiled.artifact.options.source_framework == "torchscript"
    # Named after forward's arguments, as traced (the zoo's ONNX names are its own choice).
    forward = inspect.signature(zoo.get(name).build(seed=0).forward)
    assert compiled.input_names == list(forward.parameters)[:len(compiled.input_names)]
    if name != "bert_encoder":  # its first op is an int64 Gather, which stays on the host
        assert any(p.device == Device.NPU for p in compiled.artifact.partitions)


# torch.jit.script takes these as written (the others define functions inside forward).
SCRIPTABLE = ["efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small", "resnet50", "unet"]


@pytest.mark.parametrize("name", SCRIPTABLE)
def test_scripted_zoo_model_matches_torch(name):
    entry = zoo.get(name)
    inputs = entry.example_inputs(small=True)
    model = entry.build(seed=0)
    info = [(n, list(x.shape), x.dtype) for n, x in zip(entry.input_names, inputs)]
    compiled = rblnc.compile_from_torchscript(torch.jit.script(model), input_info=info, dtype="fp32")
    with torch.no_grad():
        expected = model(*[torch.from_numpy(x) for x in inputs]).numpy()
    assert_matches_torch(name, compiled.create_runtime().run(*inputs), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_matches_torch_at_full_size(name):
    _, actual, expected = _compile_and_run(name, small=False)
    assert_matches_torch(name, actual, expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_at_reduced_precision(name, precision):
    """Within the bounds docs/precision.md documents for the precision; YOLOv8n also keeps 80%
    of its top-scoring anchors."""
    _, actual, expected = _compile_and_run(name, small=True, dtype=precision)
    worst, l2 = relative_errors(actual, expected)
    max_bound, l2_bound = MODEL_ERROR_BOUNDS[precision]
    assert worst <= max_bound and l2 <= l2_bound, f"{name} {precision}: max {worst:.2e}, l2 {l2:.2e}"
    if name == "yolov8n":
        best, expected_best = actual[:, 4:].max(1)[0], expected[:, 4:].max(1)[0]
        shared = set(np.argsort(-best)[:TOP_BOXES]) & set(np.argsort(-expected_best)[:TOP_BOXES])
        assert len(shared) >= 0.8 * TOP_BOXES, f"only {len(shared)} of the top {TOP_BOXES} anchors agree"


def test_saved_yolov8n_compiles_from_the_command_line_at_640(tmp_path):
    """The seed's example: a traced YOLOv8n saved to .pt, compiled by the CLI, run, matched."""
    zoo.trace("yolov8n").save(str(tmp_path / "yolov8n.pt"))
    result = subprocess.run(
        [sys.executable, "-m", "rblnc.cli", "compile", str(tmp_path / "yolov8n.pt"),
         "-o", str(tmp_path / "yolov8n.rbln"),
         "--input", "images:1x3x640x640:float32", "--dtype", "fp32"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "(torchscript)" in result.stderr and "wrote" in result.stdout
    runtime = rblnc.Runtime(tmp_path / "yolov8n.rbln")
    assert runtime.input_names == ["images"]
    assert [v.shape for v in runtime.artifact.inputs] == [(1, 3, 640, 640)]
    (x,) = zoo.get("yolov8n").example_inputs()
    assert_matches_torch("yolov8n", runtime.run(images=x), _eager("yolov8n", (x,)))


def test_saved_module_without_input_shapes_says_how_to_give_them(tmp_path):
    zoo.trace("unet", small=True).save(str(tmp_path / "unet.pt"))
    result = subprocess.run(
        [sys.executable, "-m", "rblnc.cli", "compile", str(tmp_path / "unet.pt"), "-o", str(tmp_path / "unet.rbln")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") <= 2 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "not recorded" in result.stderr
    assert "input_info=[('x', [1, 3, 224, 224], 'float32')]" in result.stderr
    assert "--input x:1x3x224x224:float32" in result.stderr
    assert not (tmp_path / "unet.rbln").exists()
