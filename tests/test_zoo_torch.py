"""Tests for the PyTorch model zoo: determinism, sane numerics, tracing and ONNX export of every model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rblnc import zoo
from rblnc.zoo import torch_models

SMALL_OUTPUT_SHAPES = {
    "resnet50": (1, 1000),
    "mobilenet_v2": (1, 1000),
    "mobilenet_v3_small": (1, 1000),
    "efficientnet_b0": (1, 1000),
    "yolov8n": (1, 84, 16 * 16 + 8 * 8 + 4 * 4),
    "unet": (1, 2, 64, 64),
    "vit_tiny": (1, 1000),
    "bert_encoder": (1, 32, 256),
}
FULL_OUTPUT_SHAPES = {**SMALL_OUTPUT_SHAPES, "yolov8n": (1, 84, 8400), "unet": (1, 2, 256, 256),
                      "bert_encoder": (1, 128, 256)}
NAMES = list(SMALL_OUTPUT_SHAPES)


def _run(model: torch.nn.Module, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(*[torch.from_numpy(x) for x in inputs]).numpy()


@pytest.fixture(scope="module")
def reference():
    """name -> (seed-0 model, small example inputs, its output), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            entry = zoo.get(name)
            model, inputs = entry.build(seed=0), entry.example_inputs(small=True)
            cache[name] = model, inputs, _run(model, inputs)
        return cache[name]

    return get


def _assert_matches_torch(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    if name == "yolov8n":
        # Box rows are pixel coordinates (up to ~1000) and box centres near the border are
        # differences of such values, so their absolute error scales with the image, not with
        # the value: allow 1e-4 of the 640-pixel image there; class scores keep atol 1e-4.
        np.testing.assert_allclose(actual[:, :4], expected[:, :4], rtol=1e-3, atol=1e-4 * 640)
        actual, expected = actual[:, 4:], expected[:, 4:]
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)


def test_registry_lists_every_model_and_rejects_unknown_names():
    assert sorted(zoo.TORCH_ZOO) == sorted(NAMES)
    assert zoo.get("resnet50").name == "resnet50"
    with pytest.raises(KeyError, match="known: .*resnet50"):
        zoo.get("resnet51")


@pytest.mark.parametrize("name", NAMES)
def test_example_inputs_are_deterministic_and_in_range(name):
    entry = zoo.get(name)
    for small in (False, True):
        first, again, other = (entry.example_inputs(small, seed) for seed in (0, 0, 1))
        for x, x_again, x_other, shape, dtype, (low, high) in zip(
                first, again, other, entry.shapes(small), entry.input_dtypes, entry.input_ranges):
            assert x.shape == shape and x.dtype == np.dtype(dtype)
            assert low <= x.min() and x.max() < high
            np.testing.assert_array_equal(x, x_again)
            assert not np.array_equal(x, x_other)


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic_per_seed(name, reference):
    _, inputs, output = reference(name)
    entry = zoo.get(name)
    np.testing.assert_array_equal(_run(entry.build(seed=0), inputs), output)
    assert not np.allclose(_run(entry.build(seed=1), inputs), output)


@pytest.mark.parametrize("name", NAMES)
def test_small_forward_has_expected_shape_and_sane_values(name, reference):
    model, _, output = reference(name)
    assert not model.training
    assert output.shape == SMALL_OUTPUT_SHAPES[name]
    assert np.isfinite(output).all()
    assert output.std() > 1e-3
    if name == "yolov8n":  # class scores must not be saturated, or only atol would be tested
        scores = output[:, 4:]
        assert 0.05 < scores.mean() < 0.95 and scores.std() > 0.05


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_statistics_are_not_identity(name, reference):
    model, _, _ = reference(name)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if name in ("vit_tiny", "bert_encoder"):
        assert not norms
        return
    for bn in norms:
        assert bn.running_mean.abs().max() > 1e-3
        assert (bn.running_var - 1).abs().max() > 1e-2
        assert (bn.weight - 1).abs().max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_trace_matches_eager(name, reference):
    _, inputs, output = reference(name)
    traced = zoo.trace(name, small=True)
    assert isinstance(traced, torch.jit.ScriptModule)
    np.testing.assert_allclose(_run(traced, inputs), output, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch_under_onnxruntime(name, reference, tmp_path):
    model, inputs, output = reference(name)
    entry = zoo.get(name)
    path = zoo.export_onnx(name, tmp_path / f"{name}.onnx", small=True)

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(entry.input_names)
    for graph_input, shape in zip(graph.input, entry.small_input_shapes):
        assert tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim) == shape
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Shape", "ConstantOfShape", "Range"}, "shape arithmetic should be folded"
    has_batchnorm = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert ("BatchNormalization" in ops) == has_batchnorm

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, dict(zip(entry.input_names, inputs)))
    _assert_matches_torch(name, actual, output)


def test_onnx_export_can_leave_batchnorm_folding_to_the_exporter(tmp_path):
    path = zoo.export_onnx("mobilenet_v3_small", tmp_path / "folded.onnx", small=True, fold_batchnorm=True)
    assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_yolov8n_traces_at_any_multiple_of_32():
    model = torch_models.yolov8n(seed=0)
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        expected = model(x)
    assert expected.shape == (1, 84, 3 * 5 * (16 + 4 + 1))
    torch.testing.assert_close(traced(x), expected, rtol=1e-6, atol=1e-6)


def test_bert_attention_mask_hides_padding():
    model = torch_models.bert_encoder(seed=0, with_pooler=True)
    ids = torch.from_numpy(zoo.get("bert_encoder").example_inputs(small=True)[0])
    mask = torch.ones_like(ids)
    mask[:, 16:] = 0
    with torch.no_grad():
        (hidden, pooled), (prefix_hidden, _) = model(ids, mask), model(ids[:, :16])
    assert hidden.shape == (1, 32, 256) and pooled.shape == (1, 256)
    torch.testing.assert_close(hidden[:, :16], prefix_hidden, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_size_forward_and_onnx_export(name, tmp_path):
    entry = zoo.get(name)
    inputs = entry.example_inputs(small=False)
    output = _run(entry.build(seed=0), inputs)
    assert output.shape == FULL_OUTPUT_SHAPES[name]
    assert np.isfinite(output).all() and output.std() > 1e-3

    path = zoo.export_onnx(name, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, dict(zip(entry.input_names, inputs)))
    _assert_matches_torch(name, actual, output)
