"""rblnc's own int8 quantisation exported as a QDQ ONNX file (rblnc/quantize/qdq_export.py):
a valid ONNX file in onnxruntime's QDQ format, onnxruntime's outputs on it equal rblnc's within
1 LSB, and importing it back gives the same scales (docs/precision.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import export_onnx
from onnx import numpy_helper
from test_int8 import SmallCnn, SmallMlp, assert_within_one_lsb

import rblnc
from rblnc.errors import CompileError
from rblnc.format.artifact import TensorKind

CNN_SHAPE, MLP_SHAPE = (2, 3, 16, 16), (4, 12, 24)


def _samples(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def _compile(module, shape, **options):
    torch.manual_seed(0)
    module = module.eval()
    options = {"dtype": "int8", "int8_ops": "all", "calibration": _samples(shape, 16), **options}
    return rblnc.compile_from_torch(module, [("x", list(shape), "float32")], **options)


def _ops(compiled):
    return [c.op_type for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]


def _quantised_tensors(compiled):
    """{activation name: params} and a sorted list of (params, values) of the quantised constants
    (weights, biases), whose names depend on how the graph was built."""
    activations, constants = {}, []
    for partition in compiled.artifact.partitions:
        for tensor in partition.npu_program.tensors if partition.npu_program else []:
            q = tensor.quantization
            if q is None:
                continue
            if tensor.kind == TensorKind.CONSTANT:
                constants.append((q.scale.tobytes(), q.zero_point.tobytes(), q.axis, tensor.dtype.name,
                                  np.asarray(tensor.data).tobytes()))
            else:
                activations[tensor.name] = q
    return activations, sorted(constants)


def _initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("module, shape, matrix_ops", [(SmallCnn(), CNN_SHAPE, 5), (SmallMlp(), MLP_SHAPE, 2)],
                         ids=["conv-net", "matmul-gemm"])
def test_exported_qdq_file_matches_onnxruntime_and_round_trips(tmp_path, module, shape, matrix_ops):
    compiled = _compile(module, shape)
    path = compiled.export_qdq(tmp_path / "rblnc_qdq.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert not any(n.domain for n in model.graph.node)  # standard ONNX: no ai.rblnc op left
    initializers = _initializers(model)
    # Weights: int8 initializers, symmetric, one scale per output channel (DequantizeLinear with axis).
    dequantised_weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                           and n.input[0] in initializers and initializers[n.input[0]].dtype == np.int8]
    assert len(dequantised_weights) == matrix_ops
    for node in dequantised_weights:
        scale, zero = initializers[node.input[1]], initializers[node.input[2]]
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert scale.shape == (initializers[node.input[0]].shape[axis],) and not zero.any()
        assert np.abs(initializers[node.input[0]]).max() == 127
    # Biases: int32 at input scale x weight scale; activations: one QuantizeLinear per int8 tensor.
    biases = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in initializers and initializers[n.input[0]].dtype == np.int32]
    assert len(biases) == matrix_ops
    assert all(initializers[n.input[1]].shape == () for n in model.graph.node if n.op_type == "QuantizeLinear")

    # onnxruntime on the exported file against rblnc's own compile, and against rblnc's compile of the file.
    assert_within_one_lsb(path, shape, compiled=compiled)
    reimported = assert_within_one_lsb(path, shape)
    assert _ops(reimported) == _ops(compiled)
    # Round trip: the same scales and zero points, the same int8 weights and int32 biases.
    assert _quantised_tensors(reimported) == _quantised_tensors(compiled)
    x = _samples(shape, 1, seed=9)[0]
    np.testing.assert_array_equal(reimported.create_runtime().run(x), compiled.create_runtime().run(x))


def test_ops_kept_in_float_stay_float_in_the_file(tmp_path):
    compiled = _compile(SmallCnn(), CNN_SHAPE, keep_float=["Gemm"])
    assert "QGemm" not in _ops(compiled) and _ops(compiled).count("QConv") == 4
    model = onnx.load(str(compiled.export_qdq(tmp_path / "kept.onnx")))
    onnx.checker.check_model(model, full_check=True)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    initializers = _initializers(model)
    assert initializers[gemm.input[1]].dtype == np.float32  # the float weight, no DequantizeLinear
    assert model.graph.node[-1].op_type == "Gemm"  # the output is float
    x = _samples(CNN_SHAPE, 1, seed=3)[0]
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = compiled.create_runtime().run(x)
    # The Gemm runs in bf16 in rblnc, fp32 in onnxruntime.
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-2


def test_export_needs_rblncs_own_quantisation(tmp_path):
    float_model = rblnc.compile_from_torch(SmallMlp().eval(), [("x", list(MLP_SHAPE), "float32")])
    with pytest.raises(CompileError, match="export_qdq needs the model as compiled with dtype='int8' and "
                                           "calibration data; this one was compiled without"):
        float_model.export_qdq(tmp_path / "x.onnx")
    compiled = _compile(SmallMlp(), MLP_SHAPE)
    saved = compiled.save(tmp_path / "m.rbln")
    with pytest.raises(CompileError, match=r"this one was loaded from '.*m\.rbln'"):
        rblnc.RBLNCompiledModel(saved).export_qdq(tmp_path / "x.onnx")
    with pytest.raises(CompileError, match="export_qdq: the folder of '.*missing/x.onnx' does not exist"):
        compiled.export_qdq(tmp_path / "missing" / "x.onnx")


def test_command_line_export_qdq(tmp_path):
    torch.manual_seed(0)
    float_path = tmp_path / "mlp.onnx"
    export_onnx(SmallMlp().eval(), torch.randn(*MLP_SHAPE), float_path)
    np.savez(tmp_path / "data.npz", x=np.stack(_samples(MLP_SHAPE, 8)))
    command = [sys.executable, "-m", "rblnc.cli", "compile", str(float_path), "-o", str(tmp_path / "m.rbln"),
               "--dtype", "int8", "--calibrate", str(tmp_path / "data.npz"), "--int8-ops", "all"]
    done = subprocess.run(command + ["--export-qdq", str(tmp_path / "q.onnx")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"wrote QDQ ONNX {tmp_path / 'q.onnx'}" in done.stderr
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")), full_check=True)
    assert_within_one_lsb(tmp_path / "q.onnx", MLP_SHAPE)
    usage = subprocess.run(command[:7] + ["--export-qdq", str(tmp_path / "r.onnx")], capture_output=True, text=True)
    assert usage.returncode == 2 and "--export-qdq needs --dtype int8 --calibrate DATA" in usage.stderr


def test_symmetric_activations_from_the_target_spec(tmp_path):
    """A target whose [int8] activations are "symmetric": every activation calibrated by rblnc
    gets zero point 0 and scale max|x| / 127 (weights are symmetric either way), and the model
    still equals onnxruntime's QDQ reference on its exported file within 1 LSB. A scheme the spec
    does not know is an error naming the file and key."""
    import tomllib

    from rblnc.target import TargetSpecError, load_target

    preset = Path(rblnc.__file__).parent / "targets" / "rbln-ca12.toml"
    symmetric = tmp_path / "symmetric.toml"
    symmetric.write_text(preset.read_text() + '\n[int8]\nactivations = "symmetric"\n')
    assert tomllib.loads(symmetric.read_text())["int8"] == {"activations": "symmetric"}
    compiled = _compile(SmallCnn(), CNN_SHAPE, target=str(symmetric))
    asymmetric = _compile(SmallCnn(), CNN_SHAPE)
    activations, _ = _quantised_tensors(compiled)
    assert activations and all(not q.zero_point.any() for q in activations.values())
    assert any(q.zero_point.any() for q in _quantised_tensors(asymmetric)[0].values())
    ranges = compiled.report.quantized.ranges
    checked = [name for name in ranges if f"{name}_quantized" in activations]  # the int8 copy of `name`
    assert len(checked) >= 5
    for name in checked:
        low, high = ranges[name]
        assert activations[f"{name}_quantized"].scale[0] == np.float32(max(-min(low, 0.0), max(high, 0.0)) / 127.0)
    assert_within_one_lsb(compiled.export_qdq(tmp_path / "symmetric.onnx"), CNN_SHAPE, compiled=compiled)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(preset.read_text() + '\n[int8]\nactivations = "per-channel"\n')
    with pytest.raises(TargetSpecError, match=r"wrong\.toml: \[int8\] activations must be one of asymmetric, "
                                              r"symmetric, got 'per-channel'"):
        load_target(wrong)
