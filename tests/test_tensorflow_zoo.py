"""The Keras zoo through compile_from_tf_function, as the seed writes it, against TensorFlow's own outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relative_errors

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import rblnc  # noqa: E402
from rblnc.api import RBLNCompiledModel  # noqa: E402
from rblnc.compiler import CompileOptionsIn, compile_graph  # noqa: E402
from rblnc.emulator import MODEL_ERROR_BOUNDS  # noqa: E402
from rblnc.importers.tensorflow_importer import import_tf_function  # noqa: E402
from rblnc.report import build_report  # noqa: E402
from rblnc.zoo.keras_models import KERAS_ZOO  # noqa: E402

# What tf2onnx's transpose optimiser leaves: the NHWC input feeds NCHW ops through one
# Transpose; a spatial (NHWC) output needs one more on the way out. Classifiers end in a
# rank-2 Gemm and need none there.
TRANSPOSES_LEFT = {"resnet50": 1, "mobilenet_v2": 1, "efficientnet_b0": 1, "deeplabv3plus": 2, "unet": 2}


@pytest.fixture(scope="module")
def keras_model():
    """Seed-0 zoo models, built once per (name, size): building dominates TF test time."""
    cache = {}

    def get(name, small=True):
        if (name, small) not in cache:
            cache[name, small] = KERAS_ZOO[name].build_model(small=small, seed=0)
        return cache[name, small]

    return get


@pytest.fixture(scope="module")
def imported_graph(keras_model):
    """Each small model imported once; reduced-precision tests compile copies of it."""
    cache = {}

    def get(name):
        if name not in cache:
            model = keras_model(name)
            shape = list(KERAS_ZOO[name].small_input_shape)
            cache[name] = import_tf_function(tf.function(lambda x: model(x)), [("x", shape, np.float32)])
        return cache[name]

    return get


def reference(model, x):
    return np.asarray(model(x, training=False))


def compile_and_check_fp32(name, model, small):
    zoo_model = KERAS_ZOO[name]
    shape = zoo_model.small_input_shape if small else zoo_model.input_shape
    compiled = rblnc.compile_from_tf_function(
        tf.function(lambda x: model(x)), input_info=[("x", list(shape), np.float32)], dtype="fp32"
    )
    x = zoo_model.example_inputs(small=small)
    expected = reference(model, x)
    actual = compiled.create_runtime().run(x)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)
    (interface,) = compiled.artifact.inputs
    assert (interface.name, tuple(interface.shape), interface.layout) == ("x", shape, "NHWC")
    assert build_report(compiled.artifact)["transposes"] == TRANSPOSES_LEFT[name]


@pytest.mark.parametrize("name", list(KERAS_ZOO))
def test_zoo_model_matches_tensorflow_fp32(name, keras_model):
    compile_and_check_fp32(name, keras_model(name), small=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KERAS_ZOO))
def test_zoo_model_matches_tensorflow_fp32_full_size(name):
    compile_and_check_fp32(name, KERAS_ZOO[name].build_model(small=False, seed=0), small=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", list(KERAS_ZOO))
def test_zoo_model_matches_tensorflow_reduced_precision(name, precision, keras_model, imported_graph):
    artifact, _ = compile_graph(imported_graph(name).copy(), CompileOptionsIn(dtype=precision), "tensorflow")
    x = KERAS_ZOO[name].example_inputs(small=True)
    expected = reference(keras_model(name), x)
    actual = RBLNCompiledModel(artifact).create_runtime().run(x).astype(np.float32)
    worst, l2 = relative_errors(actual, expected)
    max_bound, l2_bound = MODEL_ERROR_BOUNDS[precision]
    assert worst <= max_bound and l2 <= l2_bound, f"{name} {precision}: max {worst:.2e}, l2 {l2:.2e}"
