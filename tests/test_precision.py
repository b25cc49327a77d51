"""Precision: bf16 by default; weights stored, activations rounded per command, fp32 accumulation;
error bounds against the fp32 reference per precision (the figures of docs/precision.md)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import LIGHT_DIR, LIGHT_MODELS, make_onnx, mixed_model, relative_errors
from ml_dtypes import bfloat16
from onnx import TensorProto, helper, numpy_helper

import rblnc
from rblnc import zoo
from rblnc.compiler import DEFAULT_PRECISION
from rblnc.emulator import MODEL_ERROR_BOUNDS
from rblnc.emulator.kernels import KERNELS
from rblnc.format.artifact import Device, TensorKind

STORAGE = {"bf16": bfloat16, "fp16": np.float16, "fp32": np.float32}

# docs/precision.md, "Error bounds": error of the whole model against its fp32 reference,
# as max|y - ref| / max|ref| and ||y - ref|| / ||ref||.
ZOO_BOUNDS = MODEL_ERROR_BOUNDS
LIGHT_BOUNDS = {"fp16": 2e-3, "bf16": 2e-3}
# Light models whose activations reach 1e12..1e19 in fp32: beyond fp16's 65504, so fp16
# overflows on the device (and in the emulator) to inf/NaN.
FP16_OVERFLOWS = {"light_bvlc_alexnet", "light_inception_v1", "light_resnet50", "light_squeezenet",
                  "light_vgg19", "light_zfnet512"}


def rounded(x: np.ndarray, precision: str) -> np.ndarray:
    return np.asarray(x, np.float32).astype(STORAGE[precision]).astype(np.float32)




def test_default_precision_is_bf16():
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], [("y", [4])])
    assert DEFAULT_PRECISION == "bf16"
    assert rblnc.compile_from_onnx(model).artifact.options.dtype == "bf16"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_weights_are_stored_in_the_precision_and_shape_operands_keep_their_type(tmp_path, precision):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = make_onnx(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["y"])],
        [("x", [1, 3, 5, 5])], [("y", [1, 36])],
        [("w", w), ("shape", np.array([1, 36], np.int64))],
    )
    path = rblnc.compile_from_onnx(model, dtype=precision, opt_level=0).save(tmp_path / "m.rbln")
    program = rblnc.RBLNCompiledModel(path).artifact.partitions[0].npu_program
    constants = {t.name: t for t in program.tensors if t.kind == TensorKind.CONSTANT}
    assert constants["w"].data.dtype == np.dtype(STORAGE[precision])
    assert np.array_equal(constants["w"].data.astype(np.float32), rounded(w, precision))
    assert constants["shape"].data.dtype == np.int64
    assert program.weight_bytes == w.size * 2 + 2 * 8
    activations = [t for t in program.tensors if t.kind != TensorKind.CONSTANT]
    assert {np.dtype(t.dtype) for t in activations} == {np.dtype(STORAGE[precision])}


@pytest.fixture(params=["torch", "onnxruntime"])
def engine(request, monkeypatch):
    """Both emulator engines (rblnc/emulator/npu.py): command by command on torch, or the whole
    program as one onnxruntime session with a rounding after every command."""
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", request.param)
    return request.param


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_each_command_rounds_its_result_once(precision, engine):
    """Sigmoid(Add(Mul(x, a), b)) as the device computes it: fp32 arithmetic inside each
    command on stored (rounded) operands, the result rounded to the precision."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64,)).astype(np.float32), rng.standard_normal((64,)).astype(np.float32)
    model = make_onnx(
        [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Add", ["m", "b"], ["s"]),
         helper.make_node("Sigmoid", ["s"], ["y"])],
        [("x", [8, 64])], [("y", [8, 64])], [("a", a), ("b", b)],
    )
    x = rng.standard_normal((8, 64)).astype(np.float32) * 3
    r = lambda v: rounded(v, precision)  # noqa: E731
    m = r(r(x) * r(a))
    s = r(m + r(b))
    expected = r(1 / (1 + np.exp(-s.astype(np.float64))))
    runtime = rblnc.compile_from_onnx(model, dtype=precision, opt_level=0).create_runtime()  # one command per op
    actual = runtime.run(x)
    # The exp inside Sigmoid is fp32 to within an ulp, which may flip the final rounding.
    ulp = np.abs(expected) * (2.0**-7 if precision == "bf16" else 2.0**-10)
    assert np.all(np.abs(actual - expected) <= ulp) and np.mean(actual == expected) > 0.99
    # and it differs from the unrounded fp32 result, or the test would prove nothing
    assert not np.allclose(actual, 1 / (1 + np.exp(-(x * a + b))), rtol=1e-4, atol=0)
    # Mul and Add are exact in fp32 on rounded operands: bit for bit.
    two = make_onnx([helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                    [("x", [8, 64])], [("y", [8, 64])], [("a", a), ("b", b)])
    assert np.array_equal(rblnc.compile_from_onnx(two, dtype=precision, opt_level=0).create_runtime().run(x), s)


def _single_op_cases():
    rng = np.random.default_rng(2)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    conv_w = f(8, 4, 3, 3)
    return {
        "Relu": ([], {}, [f(2, 8, 6, 6)]),
        "Sigmoid": ([], {}, [f(2, 8, 6, 6)]),
        "Tanh": ([], {}, [f(2, 8, 6, 6)]),
        "HardSwish": ([], {}, [f(2, 8, 6, 6) * 4]),
        "Add": ([], {}, [f(2, 8, 6, 6), f(8, 1, 1)]),
        "Mul": ([], {}, [f(2, 8, 6, 6), f(2, 8, 6, 6)]),
        "Div": ([], {}, [f(2, 8), f(2, 8) + 4]),
        "Softmax": ([], {"axis": -1}, [f(4, 33)]),
        "BatchNormalization": (["scale", "bias", "mean", "var"], {"epsilon": 1e-3},
                               [f(2, 8, 5, 5), f(8), f(8), f(8), np.abs(f(8)) + 0.5]),
        "MaxPool": ([], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [f(1, 8, 9, 9)]),
        "AveragePool": ([], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, [f(1, 8, 9, 9)]),
        "GlobalAveragePool": ([], {}, [f(1, 8, 9, 9)]),
        "Conv": (["w", "b"], {"pads": [1, 1, 1, 1]}, [f(1, 4, 9, 9), conv_w, f(8)]),
        "Gemm": (["w", "b"], {"transB": 1}, [f(3, 40), f(10, 40), f(10)]),
        "MatMul": ([], {}, [f(2, 5, 40), f(2, 40, 7)]),
        "ConvTranspose": (["w"], {"strides": [2, 2]}, [f(1, 4, 5, 5), f(4, 3, 3, 3)]),
        "LayerNormalization": (["scale", "bias"], {"axis": -1}, [f(3, 16), f(16), f(16)]),
    }


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("op_type", sorted(_single_op_cases()))
def test_fast_paths_compute_what_the_precision_rule_says(op_type, precision, engine):
    """Every command, fast path or not, equals its kernel run in fp32 on the stored operands with
    the result rounded once; exactly for elementwise ops, within one rounding step where the
    accumulation order of a reduction may differ (and, where a sum cancels to near zero, the
    fp32 difference of two accumulation orders: onnxruntime's Conv is not oneDNN's)."""
    constant_names, attrs, values = _single_op_cases()[op_type]
    data_names = [f"x{i}" for i in range(len(values) - len(constant_names))]
    names = data_names + constant_names
    torch_inputs = [torch.from_numpy(rounded(v, precision)) for v in values]
    reference = KERNELS[op_type](torch_inputs, attrs)[0].numpy()
    model = make_onnx(
        [helper.make_node(op_type, names, ["y"], **attrs)],
        [(n, list(v.shape)) for n, v in zip(data_names, values)], [("y", list(reference.shape))],
        list(zip(constant_names, values[len(data_names):])),
    )
    compiled = rblnc.compile_from_onnx(model, dtype=precision)
    assert [p.device for p in compiled.artifact.partitions] == [Device.NPU]
    actual = compiled.create_runtime().run(*values[:len(data_names)])
    expected = rounded(reference, precision)
    step = np.abs(expected) * (2.0**-7 if precision == "bf16" else 2.0**-10) + 1e-30
    step += 2.0**-20 * np.abs(expected).max()  # a few fp32 steps of the largest value
    if op_type in ("Relu", "Add", "Mul", "Div", "MaxPool"):
        assert np.array_equal(actual, expected)
    else:
        assert np.all(np.abs(actual - expected) <= step), np.abs(actual - expected).max()


def test_host_partitions_stay_fp32():
    artifact = rblnc.compile_from_onnx(mixed_model(), dtype="bf16").artifact
    npu0, host, npu1 = artifact.partitions
    assert host.device == Device.HOST
    subgraph = onnx.load_from_string(bytes(host.host_onnx))
    assert {v.type.tensor_type.elem_type for v in [*subgraph.graph.input, *subgraph.graph.output]} == {TensorProto.FLOAT}
    assert [np.dtype(v.dtype) for v in npu0.outputs] == [np.dtype(np.float32)]
    # The host sees the NPU's bf16 values widened to fp32: Erf of them, exactly.
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    runtime = rblnc.Runtime(artifact)
    out = runtime.run(x)
    assert out.dtype == np.float32 and np.array_equal(out, rounded(out, "bf16"))


def _zoo_reference(name: str, small: bool):
    entry = zoo.get(name)
    inputs = entry.example_inputs(small=small)
    with torch.no_grad():
        expected = entry.build(seed=0).eval()(*[torch.from_numpy(x) for x in inputs]).numpy()
    return inputs, expected


def _check_zoo(name: str, small: bool, tmp_path):
    path = zoo.export_onnx(name, tmp_path / f"{name}.onnx", small=small)
    inputs, expected = _zoo_reference(name, small)
    fp32 = rblnc.compile_from_onnx(str(path), dtype="fp32").create_runtime().run(*inputs)
    if name == "yolov8n":  # box coordinates in pixels: their error scales with the image (as in test_zoo_torch)
        np.testing.assert_allclose(fp32[:, :4], expected[:, :4], rtol=1e-3, atol=1e-4 * 640)
        np.testing.assert_allclose(fp32[:, 4:], expected[:, 4:], rtol=1e-3, atol=1e-4)
    else:
        np.testing.assert_allclose(fp32, expected, rtol=1e-3, atol=1e-4)
    for precision, (max_bound, l2_bound) in ZOO_BOUNDS.items():
        actual = rblnc.compile_from_onnx(str(path), dtype=precision).create_runtime().run(*inputs)
        worst, l2 = relative_errors(actual, expected)
        assert worst <= max_bound and l2 <= l2_bound, f"{name} {precision}: max {worst:.2e}, l2 {l2:.2e}"
        assert worst > 0  # the precision really is reduced


@pytest.mark.parametrize("name", ["resnet50", "yolov8n", "unet"])
def test_benchmark_models_stay_within_the_documented_bounds(name, tmp_path):
    _check_zoo(name, small=True, tmp_path=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "yolov8n", "unet", "mobilenet_v2", "efficientnet_b0", "vit_tiny"])
def test_models_at_full_size_stay_within_the_documented_bounds(name, tmp_path):
    _check_zoo(name, small=False, tmp_path=tmp_path)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_stay_within_the_documented_bounds(name, precision):
    from onnx.backend.test.runner import Runner

    path = LIGHT_DIR / f"{name}.onnx"
    model = onnx.load(str(path))
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"{name}_output_0.pb")))
    initializers = {t.name for t in model.graph.initializer}
    inputs = {vi.name: Runner.generate_dummy_data(vi, seed=0, random=False)
              for vi in model.graph.input if vi.name not in initializers}
    actual = rblnc.compile_from_onnx(model, dtype=precision).create_runtime().run(**inputs)
    if precision == "fp16" and name in FP16_OVERFLOWS:
        assert not np.all(np.isfinite(actual))  # the documented overflow, not a wrong result
        return
    worst, _ = relative_errors(actual, expected)
    assert worst <= LIGHT_BOUNDS[precision], f"{name} {precision}: {worst:.2e}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("transform, nearest_mode, out_size", [
    ("asymmetric", "floor", 12), ("asymmetric", "floor", 18), ("half_pixel", "round_prefer_floor", 12),
    ("asymmetric", "floor", 3), ("half_pixel", "round_prefer_ceil", 9), ("align_corners", "round_prefer_floor", 11),
])
def test_nearest_resize_after_a_convolution_picks_the_kernels_elements(precision, transform, nearest_mode, out_size,
                                                                      monkeypatch):
    """Nearest Resize copies elements (exact in any precision): the fast path, fed the
    channels-last result of a convolution, picks exactly those of the registered kernel.
    (The torch engine's fast path: both programs must compute the convolution alike.)"""
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "torch")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    size = np.array([1, 5, out_size, out_size], np.int64)
    resize = helper.make_node("Resize", ["c", "", "", "size"], ["y"], mode="nearest",
                              coordinate_transformation_mode=transform, nearest_mode=nearest_mode)
    conv_only = make_onnx([conv], [("x", [1, 3, 6, 6])], [("c", [1, 5, 6, 6])], [("w", w)])
    both = make_onnx([conv, resize], [("x", [1, 3, 6, 6])], [("y", size.tolist())], [("w", w), ("size", size)])
    c = rblnc.compile_from_onnx(conv_only, dtype=precision).create_runtime().run(x)
    expected = KERNELS["Resize"]([torch.from_numpy(c), None, None, torch.from_numpy(size)],
                                 {"mode": "nearest", "coordinate_transformation_mode": transform,
                                  "nearest_mode": nearest_mode})[0].numpy()
    actual = rblnc.compile_from_onnx(both, dtype=precision).create_runtime().run(x)
    assert actual.shape == tuple(size) and np.array_equal(actual, expected)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("transform, sizes, scales", [
    ("half_pixel", [1, 5, 24, 24], None), ("half_pixel", [1, 5, 9, 15], None),
    ("half_pixel", None, [1, 1, 1.5, 2.5]), ("pytorch_half_pixel", [1, 5, 13, 4], None),
    ("align_corners", [1, 5, 11, 17], None), ("asymmetric", [1, 5, 12, 12], None),
])
def test_linear_resize_after_a_convolution_is_the_kernel_rounded_once(precision, transform, sizes, scales):
    """Bilinear Resize on a convolution's channels-last result (F.interpolate where its source
    coordinates are ONNX's) equals the registered kernel computed in fp32 on the stored operand
    and rounded once, within one rounding step; in fp32 it also matches onnxruntime."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    constants = [("w", w)]
    if scales is not None:
        constants.append(("scales", np.array(scales, np.float32)))
        out_shape = [int(np.floor(n * s)) for n, s in zip([1, 5, 6, 6], scales)]
        resize_inputs = ["c", "", "scales"]
    else:
        constants.append(("sizes", np.array(sizes, np.int64)))
        out_shape, resize_inputs = sizes, ["c", "", "", "sizes"]
    resize = helper.make_node("Resize", resize_inputs, ["y"], mode="linear", coordinate_transformation_mode=transform)
    conv_only = make_onnx([conv], [("x", [1, 3, 6, 6])], [("c", [1, 5, 6, 6])], constants[:1])
    both = make_onnx([conv, resize], [("x", [1, 3, 6, 6])], [("y", out_shape)], constants)
    c = rblnc.compile_from_onnx(conv_only, dtype=precision).create_runtime().run(x)
    reference = KERNELS["Resize"](
        [torch.from_numpy(c), None, None if scales is None else torch.tensor(scales),
         None if sizes is None else torch.tensor(sizes)],
        {"mode": "linear", "coordinate_transformation_mode": transform})[0].numpy()
    expected = rounded(reference, precision)
    actual = rblnc.compile_from_onnx(both, dtype=precision).create_runtime().run(x)
    assert actual.shape == tuple(out_shape)
    step = np.abs(expected) * {"fp32": 2.0**-22, "bf16": 2.0**-7, "fp16": 2.0**-10}[precision] + 1e-6
    assert np.all(np.abs(actual - expected) <= step), np.abs(actual - expected).max()
    if precision == "fp32":
        import onnxruntime as ort

        session = ort.InferenceSession(both.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(actual, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_with_a_constant_weight_is_one_product_rounded_once(precision, trans_a):
    """Gemm (and transA) through the matrix-product fast path: the stored operands multiplied
    in fp32, the result rounded once."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 5) if trans_a else (5, 3)).astype(np.float32)
    b, c = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    model = make_onnx([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a)],
                      [("a", list(a.shape))], [("y", [5, 4])], [("b", b), ("c", c)])
    actual = rblnc.compile_from_onnx(model, dtype=precision).create_runtime().run(a)
    stored = [rounded(v, precision).astype(np.float64) for v in (a, b, c)]
    expected = rounded((stored[0].T if trans_a else stored[0]) @ stored[1] + stored[2], precision)
    step = np.abs(expected) * (2.0**-7 if precision == "bf16" else 1e-6) + 1e-6
    assert np.all(np.abs(actual - expected) <= step)
