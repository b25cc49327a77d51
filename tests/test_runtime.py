"""The synchronous Runtime: numerics against onnxruntime, input binding, errors, outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import conv_relu_model, make_onnx, mixed_model
from onnx import helper

import rblnc
from rblnc.errors import InputDtypeError, InputNameError, InputShapeError


def _reference(model, **feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def conv_runtime(tmp_path_factory):
    model = conv_relu_model()
    path = rblnc.compile_from_onnx(model, dtype="fp32").save(tmp_path_factory.mktemp("m") / "conv.rbln")
    return model, rblnc.Runtime(path)


def test_matches_onnxruntime(conv_runtime):
    model, runtime = conv_runtime
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(runtime.run(x), _reference(model, x=x)[0], rtol=1e-4, atol=1e-5)


def test_host_fallback_in_the_middle_matches_onnxruntime(tmp_path):
    model = mixed_model()
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime()
    devices = [p.device.name for p in runtime.artifact.partitions]
    assert devices == ["NPU", "HOST", "NPU"]
    assert runtime.artifact.partitions[1].fallback_reasons[0].op_type == "Erf"
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(runtime(x), _reference(model, x=x)[0], rtol=1e-4, atol=1e-5)


def test_positional_named_and_call_alias_agree(conv_runtime):
    _, runtime = conv_runtime
    x = np.ones((1, 3, 8, 8), np.float32)
    a, b, c = runtime.run(x), runtime.run(x=x), runtime(x)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_torch_input_and_pt_output(conv_runtime):
    _, runtime = conv_runtime
    x = torch.ones(1, 3, 8, 8)
    pt = rblnc.Runtime(runtime.artifact, tensor_type="pt").run(x)
    assert isinstance(pt, torch.Tensor)
    assert np.array_equal(pt.numpy(), runtime.run(x.numpy()))


def test_out_fills_preallocated_arrays(conv_runtime):
    _, runtime = conv_runtime
    x = np.ones((1, 3, 8, 8), np.float32)
    out = np.empty((1, 4, 8, 8), np.float32)
    result = runtime.run(x, out=out)
    assert result is out and np.array_equal(out, runtime.run(x))
    with pytest.raises(InputShapeError, match=r"out= for output 'y': expected float32\[1, 4, 8, 8\]"):
        runtime.run(x, out=np.empty((1, 4, 8), np.float32))


def test_non_contiguous_input_is_used_correctly(conv_runtime):
    _, runtime = conv_runtime
    base = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype(np.float32)
    x = base.transpose(0, 3, 1, 2)  # a view with other strides
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(runtime.run(x), runtime.run(np.ascontiguousarray(x)))


def test_wrong_input_name(conv_runtime):
    _, runtime = conv_runtime
    with pytest.raises(InputNameError, match=r"unknown input 'image'; the model's inputs are 'x'") as info:
        runtime.run(image=np.ones((1, 3, 8, 8), np.float32))
    assert isinstance(info.value, KeyError)


def test_missing_and_extra_inputs(conv_runtime):
    _, runtime = conv_runtime
    with pytest.raises(InputNameError, match="missing input"):
        runtime.run()
    x = np.ones((1, 3, 8, 8), np.float32)
    with pytest.raises(InputNameError, match="takes 1 input"):
        runtime.run(x, x)
    with pytest.raises(InputNameError, match="both by position and by name"):
        runtime.run(x, x=x)


def test_wrong_shape_names_input_expected_and_given(conv_runtime):
    _, runtime = conv_runtime
    with pytest.raises(InputShapeError, match=r"input 'x': expected shape \[1, 3, 8, 8\], got \[1, 3, 8, 9\]") as info:
        runtime.run(np.ones((1, 3, 8, 9), np.float32))
    assert isinstance(info.value, TypeError)


def test_wrong_dtype_names_input_expected_and_given(conv_runtime):
    _, runtime = conv_runtime
    with pytest.raises(InputDtypeError, match=r"input 'x': expected float32, got float64") as info:
        runtime.run(np.ones((1, 3, 8, 8), np.float64))
    assert isinstance(info.value, TypeError)


def test_safe_dtype_is_converted(tmp_path):
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 3])], [("y", [2, 3])])
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime()
    x16 = np.array([[1, -2, 3], [-4, 5, -6]], np.float16)
    np.testing.assert_array_equal(runtime.run(x16), np.maximum(x16.astype(np.float32), 0))


def test_several_outputs_come_back_as_a_list_in_order():
    model = make_onnx(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["x"], ["s"])],
        [("x", [2, 2])], [("s", [2, 2]), ("r", [2, 2])],
    )
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime()
    x = np.array([[-1, 2], [3, -4]], np.float32)
    s, r = runtime.run(x)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_array_equal(r, np.maximum(x, 0))


def test_model_description_lists_inputs_outputs_target_memory(conv_runtime):
    _, runtime = conv_runtime
    text = runtime.model_description()
    assert "x: float32[1x3x8x8]" in text and "y: float32[1x4x8x8]" in text
    assert "target: rbln-ca12" in text and "memory: weights" in text


def test_compiled_model_loads_from_path(tmp_path):
    path = rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32").save(tmp_path / "m.rbln")
    loaded = rblnc.RBLNCompiledModel(path)
    assert loaded.input_names == ["x"] and loaded.output_names == ["y"]
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(loaded.create_runtime().run(x), rblnc.Runtime(path).run(x))


def test_unknown_compile_option_is_a_type_error():
    with pytest.raises(TypeError, match="unknown option.*optimise"):
        rblnc.compile_from_onnx(conv_relu_model(), optimise=True)


def test_dtype_option(tmp_path):
    assert rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32").artifact.options.dtype == "fp32"
    with pytest.raises(rblnc.CompileError, match="dtype 'int4' is unknown"):
        rblnc.compile_from_onnx(conv_relu_model(), dtype="int4")
