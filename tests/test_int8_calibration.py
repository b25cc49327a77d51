"""rblnc's own post-training quantisation (dtype="int8", calibration=...): int8 ops chosen,
accuracy against the float model, bad calibration data, the command line (docs/precision.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import export_onnx
from test_int8 import SmallCnn, SmallMlp

import rblnc
from rblnc.errors import CompileError
from rblnc.quantize.calibrate import CalibrationError, CalibrationWarning

CNN_SHAPE = (1, 3, 16, 16)


def _samples(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def _ops(compiled):
    return [c.op_type for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return SmallCnn().eval()


def _relative_l2(ours, reference):
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_int8_cnn_stays_close_to_the_float_model(cnn, method):
    compiled = rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], dtype="int8", int8_ops="all",
                                        calibration=_samples(CNN_SHAPE, 32), calibration_method=method)
    ops = _ops(compiled)
    # Every convolution, the residual add, the pools and the classifier run in int8: one
    # QuantizeLinear in, one DequantizeLinear out.
    assert ops.count("QConv") == 4 and ops.count("QAdd") == 1 and "QGemm" in ops
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    assert compiled.artifact.options.dtype == "int8"
    assert compiled.report.quantized.calibrated_samples == 32
    runtime = compiled.create_runtime()
    for x in _samples(CNN_SHAPE, 4, seed=7):
        reference = cnn(torch.from_numpy(x)).detach().numpy()
        assert _relative_l2(np.asarray(runtime.run(x)), reference) < 0.05


def test_int8_matmul_mlp_from_torch(tmp_path):
    torch.manual_seed(0)
    mlp = SmallMlp().eval()
    shape = (4, 12, 24)
    compiled = rblnc.compile_from_torch(mlp, [("x", list(shape), "float32")], dtype="int8", int8_ops="all",
                                        calibration=[{"x": s} for s in _samples(shape, 16)])
    assert _ops(compiled).count("QGemm") == 2
    x = _samples(shape, 1, seed=3)[0]
    reference = mlp(torch.from_numpy(x)).detach().numpy()
    assert _relative_l2(np.asarray(compiled.create_runtime().run(x)), reference) < 0.05


def test_int8_is_priced_at_the_int8_peak(cnn):
    """The int8 convolutions are modelled at the target's int8 peak: 4x the bf16 matrix rate on rbln-ca12."""
    from rblnc.cost_model import kernel_time_ns
    from rblnc.target import load_target

    compiled = rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], dtype="int8",
                                        int8_ops="all", calibration=_samples(CNN_SHAPE, 4))
    target = load_target(None)
    conv = next(c for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands
                if c.op_type == "QConv")
    int8_time, _ = kernel_time_ns(conv.flops, conv.sram_bytes, conv.dram_bytes, target, "int8", matrix=True)
    assert conv.est_time_ns == pytest.approx(int8_time)
    assert target.peak("int8") == 4 * target.peak("bf16")


def _compile(cnn, calibration, **options):
    return rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], dtype="int8",
                                    calibration=calibration, **{"int8_ops": "all", **options})


@pytest.mark.parametrize("calibration, message", [
    ([], "the calibration set is empty"),
    ([np.zeros((1, 3, 8, 8), np.float32)], "input 'x' has shape [1, 3, 8, 8], the model takes [1, 3, 16, 16]"),
    ([np.full(CNN_SHAPE, np.nan, np.float32)], "input 'x' holds NaN or infinite values"),
    ([np.zeros(CNN_SHAPE, np.int64)], "input 'x' is int64, the model takes float32"),
    ([{"y": np.zeros(CNN_SHAPE, np.float32), "z": 1}], "lacks input(s) 'x'"),
    (42, "calibration must be an iterable of samples"),
], ids=["empty", "shape", "nan", "dtype", "name", "not-iterable"])
def test_bad_calibration_data_is_a_clear_error(cnn, calibration, message):
    with pytest.raises(CalibrationError) as failure:
        _compile(cnn, calibration)
    assert message in str(failure.value)


def test_unknown_method_and_misplaced_calibration_are_errors(cnn):
    with pytest.raises(CalibrationError, match="calibration method 'kl' is unknown; choose one of "
                                               "minmax, percentile, entropy, mse"):
        _compile(cnn, _samples(CNN_SHAPE, 2), calibration_method="kl")
    with pytest.raises(CompileError, match="only used with dtype='int8'"):
        rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], calibration=_samples(CNN_SHAPE, 2))
    with pytest.raises(CompileError, match="dtype='int8' needs calibration data"):
        rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], dtype="int8")


def test_a_constant_sample_warns_naming_the_tensor(cnn):
    """All-zero input: its range is zero, so its scale cannot be measured; the warning names it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compile(cnn, [np.zeros(CNN_SHAPE, np.float32)] * 2)
    messages = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert any(m.startswith("tensor 'x' is 0 on every calibration sample") for m in messages), messages


def test_command_line_int8_with_npz_calibration(cnn, tmp_path):
    export_onnx(cnn, torch.randn(*CNN_SHAPE), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calibration.npz", x=np.stack(_samples(CNN_SHAPE, 8)))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rblnc.cli", *map(str, args)], capture_output=True, text=True)

    done = cli("compile", tmp_path / "cnn.onnx", "-o", tmp_path / "cnn.rbln", "--dtype", "int8",
               "--calibrate", tmp_path / "calibration.npz", "--calibration-method", "percentile",
               "--int8-ops", "all")
    assert done.returncode == 0, done.stderr
    assert "calibrated on 8/8 sample(s)" in done.stderr and "quantised" in done.stderr
    report = json.loads(cli("inspect", tmp_path / "cnn.rbln", "--json").stdout)
    assert report["options"]["dtype"] == "int8"
    # Every kernel but the two conversions at the float boundaries computes in int8.
    assert report["precision"]["conversion"]["commands"] == 2 and set(report["precision"]) == {"int8", "conversion"}
    assert "NPU commands by precision: Quantize/DequantizeLinear 2" in cli("inspect", tmp_path / "cnn.rbln").stdout
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    failed = cli("compile", tmp_path / "cnn.onnx", "-o", tmp_path / "bad.rbln", "--dtype", "int8",
                 "--calibrate", tmp_path / "wrong.npz")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: calibration sample 0: input 'x' has shape [3, 8, 8], the model takes [1, 3, 16, 16]")


def test_own_quantisation_matches_onnxruntime_within_one_lsb(cnn):
    """The same int8 model twice: once on the emulator's integer kernels, once with every int8 op on
    the host, where onnxruntime runs its QDQ decomposition (DequantizeLinear, the float op,
    QuantizeLinear): outputs agree within 1 LSB of the output scale on >= 99.9 % of elements."""
    options = dict(dtype="int8", int8_ops="all", calibration=_samples(CNN_SHAPE, 16))
    on_npu = rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], **options)
    on_host = rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")],
                                       host_ops="QConv,QAdd,QMaxPool,QGlobalAveragePool,QGemm", **options)
    assert [p.device.name for p in on_host.artifact.partitions] == ["NPU", "HOST", "NPU"]
    program = on_npu.artifact.partitions[0].npu_program
    dequantize = next(c for c in program.commands if c.op_type == "DequantizeLinear")
    lsb = float(program.tensors[dequantize.inputs[1]].data)
    npu_runtime, host_runtime = on_npu.create_runtime(), on_host.create_runtime()
    difference = np.concatenate([np.abs(npu_runtime.run(x) - host_runtime.run(x)).ravel()
                                 for x in _samples(CNN_SHAPE, 20, seed=100)])
    assert np.mean(difference <= lsb * 1.001) >= 0.999


def test_auto_keeps_in_bf16_what_int8_does_not_pay_for(cnn):
    """int8_ops="auto" (the default): on this 16x16 CNN every command is bound by the fixed command
    overhead, so int8 saves nothing a conversion would not cost back; the convolutions of a wide
    model at a real size save more than their conversions and go int8."""
    small = rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")], dtype="int8",
                                     calibration=_samples(CNN_SHAPE, 2))
    bf16 = rblnc.compile_from_torch(cnn, [("x", list(CNN_SHAPE), "float32")])

    def modelled(compiled):
        return sum(p.est_time_ns for p in compiled.artifact.partitions)

    assert "QConv" not in _ops(small) and modelled(small) <= modelled(bf16) * 1.001
    wide = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU()).eval()
    shape = (1, 64, 56, 56)
    int8 = rblnc.compile_from_torch(wide, [("x", list(shape), "float32")], dtype="int8",
                                    calibration=_samples(shape, 2))
    float_model = rblnc.compile_from_torch(wide, [("x", list(shape), "float32")])
    assert _ops(int8).count("QConv") == 2
    assert modelled(int8) < 0.6 * modelled(float_model)
    with pytest.raises(CompileError, match="int8_ops must be one of auto, all"):
        _compile(cnn, _samples(CNN_SHAPE, 2), int8_ops="some")
