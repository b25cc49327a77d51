"""The onnxruntime engine on int8 programs (rblnc/emulator/onnx_int8.py): every integer tensor of
the program equals the torch engine's bit for bit (np.array_equal), on quantised models with int8
and uint8 activations, per-channel weights, depthwise and strided convolutions, matrix products,
residual adds, pools, full-range integers and a channel with a denormal multiplier; and the
outputs stay within 1 LSB of onnxruntime's QDQ reference as tests/test_int8.py checks."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType
from test_int8 import SmallCnn, SmallMlp, _samples, assert_within_one_lsb, quantize_with_onnxruntime

import rblnc
from rblnc import zoo
from rblnc.emulator import NpuProgramRunner
from rblnc.emulator.npu import INT8_CHOICE
from rblnc.emulator.onnx_program import UnsupportedProgram, program_to_onnx
from rblnc.format.artifact import Command, NpuProgram, Tensor, TensorKind
from rblnc.ir.graph import RBLNC_DOMAIN
from rblnc.quant_params import QuantParams


def _npu_program(compiled) -> NpuProgram:
    programs = [p.npu_program for p in compiled.artifact.partitions if p.npu_program]
    assert len(programs) == 1
    return programs[0]


def _every_integer_tensor_exposed(program: NpuProgram) -> NpuProgram:
    """The program with each quantised activation made a program output, so the engines are
    compared on every intermediate integer result (and int8 results leave the onnxruntime model
    through its shift back from uint8)."""
    tensors = [dataclasses.replace(t, kind=TensorKind.PROGRAM_OUTPUT)
               if t.kind == TensorKind.ACTIVATION and t.quantization is not None else t for t in program.tensors]
    return NpuProgram(tensors, program.commands)


def assert_engines_equal(program: NpuProgram, inputs: list[np.ndarray]) -> int:
    """Both engines on `program` with every integer tensor exposed: bit-equal. Returns how many
    integer tensors were compared."""
    exposed = _every_integer_tensor_exposed(program)
    on_torch = NpuProgramRunner(exposed, engine="torch")
    on_onnxruntime = NpuProgramRunner(exposed, engine="onnxruntime")
    assert on_onnxruntime.engine == "onnxruntime", on_onnxruntime.engine_reason
    names = [t.name for t in exposed.tensors if t.kind == TensorKind.PROGRAM_INPUT]
    compared = 0
    for x in inputs:
        feeds = dict(zip(names, [x]))
        expected, actual = on_torch.run(feeds), on_onnxruntime.run(feeds)
        assert expected.keys() == actual.keys()
        for name, value in expected.items():
            assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
            different = int(np.sum(actual[name] != value))
            assert different == 0, f"{name}: {different} of {value.size} elements differ"
            compared += value.dtype.kind in "iu"
    return compared


def _ops(program: NpuProgram) -> list[str]:
    return [c.op_type for c in program.commands]


@pytest.mark.parametrize("activation_type", [QuantType.QInt8, QuantType.QUInt8], ids=["int8", "uint8"])
def test_cnn_equals_the_torch_engine(tmp_path, activation_type):
    """Conv+Relu, residual QAdd, depthwise and strided QConv, QMaxPool, QGlobalAveragePool, QGemm."""
    path = quantize_with_onnxruntime(SmallCnn(), (2, 3, 16, 16), tmp_path, activation_type)
    program = _npu_program(rblnc.compile_from_onnx(path))
    ops = _ops(program)
    assert ops.count("QConv") == 4 and {"QAdd", "QMaxPool", "QGlobalAveragePool", "QGemm"} <= set(ops)
    assert any(c.attributes.get("group", 1) > 1 for c in program.commands if c.op_type == "QConv")
    assert any(t.quantization is not None and not t.quantization.per_tensor for t in program.tensors)
    assert assert_engines_equal(program, _samples((2, 3, 16, 16), 4, seed=7)) >= 4 * 9


def test_mlp_on_a_3d_input_equals_the_torch_engine(tmp_path):
    path = quantize_with_onnxruntime(SmallMlp(), (4, 12, 24), tmp_path)
    program = _npu_program(rblnc.compile_from_onnx(path))
    assert _ops(program).count("QGemm") == 2
    assert_engines_equal(program, _samples((4, 12, 24), 4, seed=7))


def _qdq_conv_model(weights, w_scale, x_scale, x_zero, y_scale, y_zero, bias=None, **conv_attrs):
    """QuantizeLinear -> QDQ Conv -> QuantizeLinear -> DequantizeLinear with the given integers."""
    channels = weights.shape[0]
    inits = {"xs": np.float32(x_scale), "xz": np.int8(x_zero), "w": weights, "ws": w_scale,
             "wz": np.zeros(channels, np.int8), "ys": np.float32(y_scale), "yz": np.int8(y_zero)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0)]
    conv_inputs = ["xd", "wd"]
    if bias is not None:
        inits.update(b=bias, bs=(np.float32(x_scale) * w_scale).astype(np.float32), bz=np.zeros(channels, np.int32))
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0))
        conv_inputs.append("bd")
    nodes += [helper.make_node("Conv", conv_inputs, ["c"], **conv_attrs),
              helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    group = conv_attrs.get("group", 1)
    shape = [1, weights.shape[1] * group, 12, 12]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, shape


@pytest.mark.parametrize("group", [1, 32], ids=["dense", "depthwise"])
def test_full_range_integers_and_many_scales_equal_the_torch_engine(group):
    """Activations over the whole int8 range and 32 random per-channel scales: every product pair
    overflows int16 somewhere and the multipliers exercise the fp32 requantisation's rounding."""
    rng = np.random.default_rng(group)
    channels = 32
    weights = rng.integers(-127, 128, size=(channels, channels // group, 3, 3)).astype(np.int8)
    w_scale = (rng.random(channels) * 0.01 + 0.0005).astype(np.float32)
    bias = rng.integers(-3000, 3000, channels).astype(np.int32)
    x_scale, x_zero = 0.02, -11
    model, shape = _qdq_conv_model(weights, w_scale, x_scale, x_zero, 0.3 if group == 1 else 0.05, 9, bias,
                                   group=group, pads=[1, 1, 1, 1], strides=[2, 2] if group == 1 else [1, 1])
    program = _npu_program(rblnc.compile_from_onnx(model))
    assert _ops(program) == ["QuantizeLinear", "QConv", "DequantizeLinear"]
    inputs = [((rng.integers(-128, 128, size=shape) - x_zero) * x_scale).astype(np.float32) for _ in range(3)]
    assert_engines_equal(program, inputs)


def test_a_channel_with_a_denormal_multiplier_equals_the_torch_engine():
    """The torch engine zeroes such a channel (QNNPACK refuses the multiplier); onnxruntime
    multiplies by the denormal and rounds to 0: both give the zero point."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(8, 16, 1, 1)).astype(np.int8)
    w_scale = (rng.random(8) * 0.01 + 0.001).astype(np.float32)
    w_scale[3] = 1e-42
    bias = rng.integers(-500, 500, 8).astype(np.int32)
    model, shape = _qdq_conv_model(weights, w_scale, 0.02, 3, 0.05, -7, bias, kernel_shape=[1, 1])
    program = _npu_program(rblnc.compile_from_onnx(model))
    inputs = [rng.standard_normal(shape).astype(np.float32) * 2 for _ in range(3)]
    assert_engines_equal(program, inputs)
    runner = NpuProgramRunner(program, engine="onnxruntime")
    y = runner.run({"x": inputs[0]})["y"]
    assert np.all(y[:, 3] == 0)


def test_int8_program_inputs_and_outputs_cross_the_model_boundary_unchanged():
    """An NPU program taking and giving int8 (between partitions): the onnxruntime model shifts
    them to uint8 and back; a requantising QMaxPool and a QAdd with a fused Clip on the way."""
    x_params, y_params = QuantParams.make(0.1, -3), QuantParams.make(0.07, 5)
    tensors = [
        Tensor("x", np.dtype(np.int8), (1, 4, 6, 6), TensorKind.PROGRAM_INPUT, quantization=x_params),
        Tensor("p", np.dtype(np.int8), (1, 4, 3, 3), TensorKind.ACTIVATION, quantization=y_params),
        Tensor("y", np.dtype(np.int8), (1, 4, 3, 3), TensorKind.PROGRAM_OUTPUT, quantization=x_params),
    ]
    commands = [Command("QMaxPool", [0], [1], "pool", {"kernel_shape": [2, 2], "strides": [2, 2]}, RBLNC_DOMAIN),
                Command("QAdd", [1, 1], [2], "add", {"activation": "Clip", "activation_params": [-1.0, 0.8]}, RBLNC_DOMAIN)]
    program = NpuProgram(tensors, commands)
    x = np.arange(-128, 16).astype(np.int8).reshape(1, 4, 6, 6)
    assert assert_engines_equal(program, [x, x[:, ::-1].copy()]) == 4
    y = NpuProgramRunner(program, engine="onnxruntime").run({"x": x})["y"]
    assert y.dtype == np.int8 and y.min() == round(-1.0 / 0.1) - 3 and y.max() == round(0.8 / 0.1) - 3


@pytest.mark.parametrize("activation_type", [QuantType.QInt8, QuantType.QUInt8], ids=["int8", "uint8"])
def test_the_onnxruntime_engine_is_within_one_lsb_of_onnxruntimes_qdq_reference(tmp_path, activation_type,
                                                                             monkeypatch):
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "onnxruntime")
    path = quantize_with_onnxruntime(SmallCnn(), (2, 3, 16, 16), tmp_path, activation_type)
    compiled = rblnc.compile_from_onnx(path)
    runners = [r for _, r in compiled.create_runtime()._executor.stages if hasattr(r, "engine")]
    assert runners and all(r.engine == "onnxruntime" for r in runners)
    assert_within_one_lsb(path, (2, 3, 16, 16), compiled=compiled)


def test_a_zoo_model_equals_the_torch_engine(tmp_path):
    """MobileNetV2 at the zoo's small size, quantised by onnxruntime (QDQ, per channel): 65 int8
    commands, every intermediate integer tensor bit-equal."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    float_path, qdq_path = tmp_path / "m.onnx", tmp_path / "m_qdq.onnx"
    zoo.export_onnx("mobilenet_v2", float_path, small=True)
    spec = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    rng = np.random.default_rng(0)

    class Samples(CalibrationDataReader):
        def __init__(self):
            self._it = iter({spec.name: rng.standard_normal(spec.shape).astype(np.float32)} for _ in range(4))

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(float_path), str(qdq_path), Samples(), quant_format=QuantFormat.QDQ, per_channel=True)
    program = _npu_program(rblnc.compile_from_onnx(qdq_path))
    assert _ops(program).count("QConv") > 40
    assert assert_engines_equal(program, [rng.standard_normal(spec.shape).astype(np.float32)]) > 50


def test_auto_runs_int8_programs_on_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.delenv("RBLNC_EMULATOR_ENGINE", raising=False)
    path = quantize_with_onnxruntime(SmallMlp(), (4, 12, 24), tmp_path)
    runner = NpuProgramRunner(_npu_program(rblnc.compile_from_onnx(path)))
    assert (runner.engine, runner.engine_reason) == ("onnxruntime", INT8_CHOICE)


def test_an_op_computing_on_int8_values_keeps_the_torch_engine():
    """A plain Relu on int8 integers computes on them, which the model's uint8 + 128 holding would
    change: the program is not built, and the runner keeps the torch engine."""
    params = QuantParams.make(0.1, 0)
    tensors = [Tensor("x", np.dtype(np.int8), (4,), TensorKind.PROGRAM_INPUT, quantization=params),
               Tensor("y", np.dtype(np.int8), (4,), TensorKind.PROGRAM_OUTPUT, quantization=params)]
    program = NpuProgram(tensors, [Command("Relu", [0], [1], "relu3")])
    with pytest.raises(UnsupportedProgram, match=r"command relu3 \(Relu\) computes on int8 values"):
        program_to_onnx(program, 17)
    runner = NpuProgramRunner(program, engine="onnxruntime")
    assert runner.engine == "torch" and "relu3 (Relu) computes on int8 values" in runner.engine_reason


def test_the_multiplier_is_computed_as_qnnpack_computes_it():
    """fp32(x_scale * w_scale) * fp32(1 / y_scale), not x_scale * w_scale / y_scale: for these
    scales the two are 1 ulp apart and an accumulator of 16971 lands on either side of 57.5. Both
    engines give the first (the torch engine through QNNPACK, the onnxruntime one by
    construction)."""
    f = np.float32
    x_scale, w_scale, y_scale = f(0.047945976), f(0.003806483), f(0.053866114)
    qnnpack = f(f(x_scale * w_scale) * f(f(1) / y_scale))
    divided = f(f(x_scale * w_scale) / y_scale)
    assert np.round(f(16971) * qnnpack) != np.round(f(16971) * divided)
    model, shape = _qdq_conv_model(np.ones((1, 1, 1, 1), np.int8), np.array([w_scale]), x_scale, 0, y_scale, 0,
                                   np.array([16971], np.int32), kernel_shape=[1, 1])
    program = _npu_program(rblnc.compile_from_onnx(model))
    steps = (np.arange(np.prod(shape)) - 72).reshape(shape)  # x - x_zero: -72 .. 71, so acc = 16971 + step
    x = (steps * x_scale).astype(np.float32)
    assert_engines_equal(program, [x])
    expected = (np.round((16971 + steps).astype(f) * qnnpack) * y_scale).astype(np.float32)
    np.testing.assert_array_equal(NpuProgramRunner(program, engine="onnxruntime").run({"x": x})["y"], expected)


def test_a_cpu_whose_integer_kernels_saturate_keeps_the_torch_engine(tmp_path, monkeypatch):
    """The probe (a uint8 x uint8 product pair over int16's range) passes on this CPU; where it
    fails, int8 programs are not built for onnxruntime. The same pair in uint8 x int8 saturates
    to 32767 here, so the probe can tell."""
    from rblnc.emulator import onnx_int8

    assert onnx_int8.integer_kernels_exact()
    product = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "u8s8",
                                [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2])],
                                [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                                [numpy_helper.from_array(np.full((2, 1), 127, np.int8), "w")])
    model = helper.make_model(product, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    saturated = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.full((1, 2), 255, np.uint8)})[0]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "vnni" not in flags:  # without VNNI, MLAS sums uint8 x int8 pairs in int16
        assert int(saturated[0, 0]) == 32767  # not 2 x 255 x 127 = 64770
    monkeypatch.setattr(onnx_int8, "integer_kernels_exact", lambda: False)
    path = quantize_with_onnxruntime(SmallMlp(), (4, 12, 24), tmp_path)
    runner = NpuProgramRunner(_npu_program(rblnc.compile_from_onnx(path)), engine="auto")
    assert runner.engine == "torch"
    assert "integer kernels do not sum exactly in int32 on this CPU" in runner.engine_reason
