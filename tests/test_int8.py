"""int8: QDQ ONNX models (onnxruntime.quantization) compiled to int8 NPU ops, run on the emulator's
integer kernels, against onnxruntime on the same QDQ file (docs/precision.md)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import export_onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import rblnc
from rblnc.format.artifact import FORMAT_VERSION, TensorKind
from rblnc.format.reader import load_artifact
from rblnc.format.writer import save_artifact


class SmallCnn(torch.nn.Module):
    """Conv (+Relu), a residual Add, MaxPool, a strided Conv, GlobalAveragePool, Gemm."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c3 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = torch.relu(self.c2(y) + y)
        z = torch.nn.functional.max_pool2d(torch.relu(self.dw(z)), 2)
        z = torch.relu(self.c3(z))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


class SmallMlp(torch.nn.Module):
    """Token MLP: MatMul of a 3-D input with constant weights (Gemm-free), ReLU, another layer."""

    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(24, 48) / 5)
        self.b1 = torch.nn.Parameter(torch.randn(48) / 10)
        self.fc2 = torch.nn.Linear(48, 16)

    def forward(self, x):
        return self.fc2(torch.relu(x @ self.w1 + self.b1))


class _Samples(CalibrationDataReader):
    def __init__(self, name, samples):
        self._it = iter([{name: s} for s in samples])

    def get_next(self):
        return next(self._it, None)


def _samples(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def quantize_with_onnxruntime(module, shape, directory, activation_type=QuantType.QInt8):
    """The module exported to ONNX and quantised as onnxruntime's docs show (QDQ, per channel)."""
    torch.manual_seed(0)
    module = module.eval()
    float_path, qdq_path = directory / "float.onnx", directory / "qdq.onnx"
    export_onnx(module, torch.randn(*shape), float_path)
    quantize_static(str(float_path), str(qdq_path), _Samples("x", _samples(shape, 16)),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activation_type)
    return qdq_path


def output_scale(path) -> float:
    model = onnx.load(str(path))
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert last.op_type == "DequantizeLinear"
    scale = next(i for i in model.graph.initializer if i.name == last.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def reference_session(path) -> ort.InferenceSession:
    """onnxruntime running the QDQ file as ONNX defines it (DequantizeLinear, the float op in fp32,
    QuantizeLinear), its graph optimisations off. Its fused int8 kernels (QLinearConv, QLinearMatMul,
    QGemm, what the default session runs) sum uint8 x int8 product pairs in int16 on CPUs without
    VNNI and saturate: on an AVX2-only host only 22.5 % of the uint8 CNN's outputs and 92.6 % of the
    MLP's were within 1 LSB of the reference (worst 17 and 16 LSB), where rblnc's emulator, which
    picks a kernel engine that accumulates exactly (rblnc/emulator/int8_kernels.py), is within 1 LSB
    on every element."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_within_one_lsb(path, shape, samples=8, compiled=None):
    """rblnc's int8 outputs against onnxruntime's on the QDQ file at `path`: within 1 LSB of the
    output scale on >= 99.9 % of elements. `compiled`: a model to check (by default rblnc's compile
    of the file itself)."""
    compiled = compiled or rblnc.compile_from_onnx(path)
    runtime = compiled.create_runtime()
    session = reference_session(path)
    lsb = output_scale(path)
    ours, theirs = [], []
    for x in _samples(shape, samples, seed=123):
        ours.append(np.asarray(runtime.run(x)))
        theirs.append(session.run(None, {"x": x})[0])
    difference = np.abs(np.concatenate([o.ravel() for o in ours]) - np.concatenate([t.ravel() for t in theirs]))
    within = np.mean(difference <= lsb * 1.001)
    assert within >= 0.999, f"{within:.4%} of elements within 1 LSB ({lsb:.3g}); worst {difference.max() / lsb:.1f} LSB"
    return compiled


def _commands(compiled):
    return [c for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]


@pytest.mark.parametrize("activation_type", [QuantType.QInt8, QuantType.QUInt8], ids=["int8", "uint8"])
def test_qdq_cnn_matches_onnxruntime_within_one_lsb(tmp_path, activation_type):
    path = quantize_with_onnxruntime(SmallCnn(), (2, 3, 16, 16), tmp_path, activation_type)
    compiled = assert_within_one_lsb(path, (2, 3, 16, 16))
    ops = [c.op_type for c in _commands(compiled)]
    # Everything between the input's QuantizeLinear and the output's DequantizeLinear is integer.
    assert ops.count("QConv") == 4 and "QAdd" in ops and "QMaxPool" in ops and "QGlobalAveragePool" in ops
    assert "QGemm" in ops and ops[0] == "QuantizeLinear" and ops[-1] == "DequantizeLinear"
    assert not any(op in ops for op in ("Conv", "Gemm", "Add"))
    assert len(compiled.artifact.partitions) == 1


def test_qdq_matmul_mlp_matches_onnxruntime_within_one_lsb(tmp_path):
    path = quantize_with_onnxruntime(SmallMlp(), (4, 12, 24), tmp_path)
    compiled = assert_within_one_lsb(path, (4, 12, 24))
    assert [c.op_type for c in _commands(compiled)].count("QGemm") == 2


def test_quantised_tensors_round_trip_through_the_file(tmp_path):
    path = quantize_with_onnxruntime(SmallCnn(), (1, 3, 16, 16), tmp_path)
    compiled = rblnc.compile_from_onnx(path)
    saved = save_artifact(compiled.artifact, tmp_path / "model.rbln")
    loaded = load_artifact(saved)
    assert loaded.version == FORMAT_VERSION == 3
    before = {t.name: t for t in compiled.artifact.partitions[0].npu_program.tensors}
    after = loaded.partitions[0].npu_program.tensors
    quantised = [t for t in after if t.quantization is not None]
    assert {t.dtype.name for t in quantised} == {"int8", "int32"}
    for t in quantised:
        assert t.quantization == before[t.name].quantization
    weights = [t for t in quantised if t.kind == TensorKind.CONSTANT and t.dtype == np.int8]
    assert weights and all(t.quantization.scale.size == t.shape[0] for t in weights)  # per output channel
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(rblnc.RBLNCompiledModel(saved).create_runtime().run(x),
                                  compiled.create_runtime().run(x))


def test_version_1_files_stay_readable(tmp_path):
    """A float model written as format version 1 (no Quantization table) reads unchanged."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    compiled = rblnc.compile_from_torch(module, [("x", [1, 3, 8, 8], "float32")], dtype="fp32")
    compiled.artifact.version = 1
    loaded = load_artifact(save_artifact(compiled.artifact, tmp_path / "v1.rbln"))
    assert loaded.version == 1
    assert all(t.quantization is None for p in loaded.partitions if p.npu_program for t in p.npu_program.tensors)


def test_quantize_linear_rounds_half_to_even_as_onnx():
    """x / scale exactly halfway between integers: ONNX (and onnxruntime) round to even."""
    from onnx import TensorProto, helper

    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 300.0, -300.0]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("z", TensorProto.INT8, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compiled = rblnc.compile_from_onnx(model)
    assert [c.op_type for c in _commands(compiled)] == ["QuantizeLinear", "DequantizeLinear"]
    ours = compiled.create_runtime().run(x)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, [[0, 2, 2, 0, -2, -2, 127, -128]])


def _qdq_conv_model(weights, w_scale, x_zero, y_zero, shape, *, group=1, pads=(0, 0, 0, 0), bias=None,
                    x_scale=0.02, y_scale=0.05, activations=np.int8) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv with per-output-channel int8 weights (and an int32 bias) -> Q/DQ, as
    onnxruntime.quantization writes a quantized convolution."""
    from onnx import TensorProto, helper, numpy_helper

    channels, kernel = weights.shape[0], list(weights.shape[2:])
    conv_inputs = ["xd", "wd"] + (["bd"] if bias is not None else [])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", conv_inputs, ["c"], group=group, pads=list(pads), kernel_shape=kernel),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    values = {"xs": np.float32(x_scale), "xz": activations(x_zero), "w": weights, "ws": w_scale,
              "wz": np.zeros(channels, np.int8), "ys": np.float32(y_scale), "yz": activations(y_zero)}
    if bias is not None:
        nodes.insert(3, helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0))
        values.update(b=bias, bs=(np.float32(x_scale) * w_scale).astype(np.float32),
                      bz=np.zeros(channels, np.int32))
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in values.items()]
    out_shape = [shape[0], channels, *[s + pads[i] + pads[i + len(kernel)] - k + 1
                                       for i, (s, k) in enumerate(zip(shape[2:], kernel))]]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_depthwise_conv_with_full_range_integers_matches_onnxruntime():
    """Depthwise QConv on activations and weights that fill the int8 range: sums of uint8 x int8
    pairs exceed int16 (fbgemm's depthwise kernel saturated there, tens of LSB off), so this checks
    the int32 accumulation."""
    channels, size, rng = 144, 16, np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(channels, 1, 3, 3)).astype(np.int8)
    w_scale = (rng.random(channels) * 0.01 + 0.001).astype(np.float32)
    x_scale, x_zero, y_scale = 0.02, -125, 0.05
    shape = [1, channels, size, size]
    model = _qdq_conv_model(weights, w_scale, x_zero, -128, shape, group=channels, pads=(1, 1, 1, 1),
                            x_scale=x_scale, y_scale=y_scale)
    compiled = rblnc.compile_from_onnx(model)
    assert [c.op_type for c in _commands(compiled)] == ["QuantizeLinear", "QConv", "DequantizeLinear"]
    x = ((rng.integers(-128, 128, size=shape) - x_zero) * x_scale).astype(np.float32)  # every int8 value
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    difference = np.abs(compiled.create_runtime().run(x) - expected)
    assert np.mean(difference <= y_scale * 1.001) >= 0.999 and difference.max() <= y_scale * 1.001


def test_a_channel_with_a_denormal_scale_gives_its_zero_point():
    """A trained model's dead channel (weights around 1e-40) gets a weight scale near 1e-42, so its
    requantisation multiplier is a denormal float, which QNNPACK refuses ("requantization scale must
    be finite and positive", on PaddleOCR's recogniser): the emulator makes that channel zero, whose
    result is the zero point, as onnxruntime's QDQ reference computes."""
    channels, rng = 8, np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(channels, 16, 1, 1)).astype(np.int8)
    w_scale = (rng.random(channels) * 0.01 + 0.001).astype(np.float32)
    w_scale[3] = 1e-42  # denormal in float32
    bias = rng.integers(-500, 500, channels).astype(np.int32)
    model = _qdq_conv_model(weights, w_scale, 3, -7, [1, 16, 4, 4], bias=bias)
    path = Path(tempfile.mkdtemp()) / "dead.onnx"
    onnx.save(model, str(path))
    compiled = rblnc.compile_from_onnx(path)
    assert [c.op_type for c in _commands(compiled)] == ["QuantizeLinear", "QConv", "DequantizeLinear"]
    x = rng.standard_normal((1, 16, 4, 4)).astype(np.float32)
    ours = compiled.create_runtime().run(x)
    expected = reference_session(path).run(None, {"x": x})[0]
    assert np.all(ours[:, 3] == (-7 - -7) * 0.05) and np.all(expected[:, 3] == 0)
    assert np.abs(ours - expected).max() <= 0.05 * 1.001


def test_a_quantised_conv_on_the_host_computes_the_qdq_reference(tmp_path):
    """A QConv placed on the host runs as its decomposition in onnxruntime with the QDQ fusions
    off: fused, onnxruntime's uint8 x int8 kernel saturates in int16 on CPUs without VNNI (8 LSB
    off, 10 % of elements beyond 1 LSB, on this test's full-range values on an AVX2 EPYC)."""
    channels, rng = 64, np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(channels, 64, 3, 3)).astype(np.int8)
    w_scale = (rng.random(channels) * 0.01 + 0.001).astype(np.float32)
    shape = [1, 64, 16, 16]
    model = _qdq_conv_model(weights, w_scale, 3, 0, shape, pads=(1, 1, 1, 1), y_scale=2.0, activations=np.uint8)
    path = tmp_path / "host_qconv.onnx"
    onnx.save(model, str(path))
    compiled = rblnc.compile_from_onnx(path, host_ops=["QConv"])
    host = [p for p in compiled.artifact.partitions if p.npu_program is None]
    assert len(host) == 1 and len(compiled.artifact.partitions) == 3
    runtime, session = compiled.create_runtime(), reference_session(path)
    for _ in range(2):
        x = ((rng.integers(0, 256, size=shape) - 3) * 0.02).astype(np.float32)  # every uint8 value
        difference = np.abs(runtime.run(x) - session.run(None, {"x": x})[0])
        assert difference.max() <= 2.0 * 1.001
