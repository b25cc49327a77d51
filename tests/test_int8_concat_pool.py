"""int8 Concat (QConcat) and AveragePool (QAveragePool): from onnxruntime's `quantize_static` QDQ
files and from rblnc's own calibrated quantisation, within 1 LSB of onnxruntime's QDQ reference
(tests/test_int8.py's assert_within_one_lsb), the torch and onnxruntime engines bit-equal on every
integer tensor (tests/test_int8_onnx_engine.py), and rblnc's quantisation exported as QDQ and
imported back to the same int8 ops and scales (docs/precision.md)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization import QuantType
from test_int8 import _samples, assert_within_one_lsb, quantize_with_onnxruntime
from test_int8_onnx_engine import _npu_program, _ops, assert_engines_equal
from test_int8_qdq_export import _quantised_tensors

import rblnc
from rblnc.cost_model import OpShape, command_precision, op_flops
from rblnc.ir.graph import RBLNC_DOMAIN

SHAPE = (2, 3, 16, 16)


class TinyUnet(torch.nn.Module):
    """An encoder level, a nearest upsampling and two torch.cat skip connections, as a UNet's."""

    def __init__(self):
        super().__init__()
        self.e1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.e2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.d1 = torch.nn.Conv2d(24, 8, 3, padding=1)
        self.side = torch.nn.Conv2d(3, 8, 1)
        self.out = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = torch.relu(self.e1(x))
        b = torch.relu(self.e2(torch.nn.functional.max_pool2d(a, 2)))
        c = torch.relu(self.d1(torch.cat([a, self.up(b)], 1)))
        return self.out(torch.cat([c, self.side(x)], 1))


def _all_int8(module, shape=SHAPE, **options):
    torch.manual_seed(0)
    options = {"dtype": "int8", "int8_ops": "all", "calibration": _samples(shape, 16), **options}
    return rblnc.compile_from_torch(module.eval(), [("x", list(shape), "float32")], **options)


def _commands(program, op_type):
    return [c for c in program.commands if c.op_type == op_type]


@pytest.mark.parametrize("activation_type", [QuantType.QInt8, QuantType.QUInt8], ids=["int8", "uint8"])
def test_qdq_concat_from_onnxruntime(tmp_path, activation_type):
    """Both Concats of onnxruntime's QDQ file become QConcat; onnxruntime gives its inputs their own
    scales, so some are requantised and some copied. The nearest upsampling runs on the integers:
    the only conversions left are the model's input and output."""
    path = quantize_with_onnxruntime(TinyUnet(), SHAPE, tmp_path, activation_type)
    compiled = assert_within_one_lsb(path, SHAPE)
    program = _npu_program(compiled)
    concats = _commands(program, "QConcat")
    assert len(concats) == 2 and "Concat" not in _ops(program)
    assert Counter(_ops(program))["QuantizeLinear"] == 1 and Counter(_ops(program))["DequantizeLinear"] == 1
    same = [program.tensors[i].quantization.same_as(program.tensors[c.outputs[0]].quantization)
            for c in concats for i in c.inputs]
    assert any(same) and not all(same)  # both the copy and the requantisation are exercised
    assert assert_engines_equal(program, _samples(SHAPE, 3, seed=7)) >= 8


def test_own_quantisation_makes_concat_a_copy(tmp_path):
    """rblnc's quantisation gives a Concat's inputs its result's range (the union of theirs, through
    the nearest upsampling): both QConcats copy, and the whole UNet is one int8 region. The QDQ
    export is standard ONNX and imports back to the same int8 ops and scales."""
    compiled = _all_int8(TinyUnet())
    program = _npu_program(compiled)
    concats = _commands(program, "QConcat")
    assert len(concats) == 2 and "Concat" not in _ops(program)
    assert Counter(_ops(program))["QuantizeLinear"] == 1 and Counter(_ops(program))["DequantizeLinear"] == 1
    for concat in concats:
        out = program.tensors[concat.outputs[0]].quantization
        assert all(program.tensors[i].quantization.same_as(out) for i in concat.inputs)
    concat_layers = [layer for layer in compiled.report.quantized.layers if layer.op_type == "Concat"]
    assert len(concat_layers) == 2 and all(layer.int8 for layer in concat_layers)
    assert assert_engines_equal(program, _samples(SHAPE, 3, seed=7)) >= 8

    path = compiled.export_qdq(tmp_path / "unet_qdq.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(n.domain for n in model.graph.node)
    assert_within_one_lsb(path, SHAPE, compiled=compiled)
    reimported = assert_within_one_lsb(path, SHAPE)
    assert Counter(_ops(_npu_program(reimported))) == Counter(_ops(program))
    assert _quantised_tensors(reimported) == _quantised_tensors(compiled)
    x = _samples(SHAPE, 1, seed=9)[0]
    np.testing.assert_array_equal(reimported.create_runtime().run(x), compiled.create_runtime().run(x))


class AveragePools(torch.nn.Module):
    """AveragePool without and with the padding counted, and with ceil_mode's partial windows."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.p1 = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.p2 = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.p3 = torch.nn.AvgPool2d(3, stride=2, ceil_mode=True)

    def forward(self, x):
        y = self.p1(torch.relu(self.c1(x)))
        y = self.p2(self.c2(y))
        return self.p3(self.c3(y))


def _pool_attributes(program):
    return [(c.attributes.get("count_include_pad", 0), c.attributes.get("ceil_mode", 0))
            for c in _commands(program, "QAveragePool")]


@pytest.mark.parametrize("activation_type", [QuantType.QInt8, QuantType.QUInt8], ids=["int8", "uint8"])
def test_qdq_average_pool_from_onnxruntime(tmp_path, activation_type):
    path = quantize_with_onnxruntime(AveragePools(), SHAPE, tmp_path, activation_type)
    compiled = assert_within_one_lsb(path, SHAPE)
    program = _npu_program(compiled)
    assert _pool_attributes(program) == [(0, 0), (1, 0), (1, 1)] and "AveragePool" not in _ops(program)
    assert assert_engines_equal(program, _samples(SHAPE, 3, seed=7)) >= 6


def test_own_quantisation_of_average_pool(tmp_path):
    compiled = _all_int8(AveragePools())
    program = _npu_program(compiled)
    # (the last pool has no padding: the torch importer sets count_include_pad only with padding)
    assert _pool_attributes(program)[:2] == [(0, 0), (1, 0)] and _pool_attributes(program)[2][1] == 1
    assert assert_engines_equal(program, _samples(SHAPE, 3, seed=7)) >= 6
    path = compiled.export_qdq(tmp_path / "pools_qdq.onnx")
    assert not any(n.domain for n in onnx.load(str(path)).graph.node)
    assert_within_one_lsb(path, SHAPE, compiled=compiled)
    reimported = assert_within_one_lsb(path, SHAPE)
    assert _ops(_npu_program(reimported)) == _ops(program)
    assert _quantised_tensors(reimported) == _quantised_tensors(compiled)


def test_qconcat_is_priced_as_a_cheap_int8_command():
    shape = OpShape("QConcat", RBLNC_DOMAIN, {"axis": 1}, [(1, 8, 16, 16), (1, 8, 16, 16)], [(1, 16, 16, 16)])
    assert command_precision("QConcat", RBLNC_DOMAIN, "bf16") == "int8"
    assert op_flops(shape) == 16 * 16 * 16  # one operation per element moved
    pool = OpShape("QAveragePool", RBLNC_DOMAIN, {"kernel_shape": [3, 3]}, [(1, 8, 16, 16)], [(1, 8, 8, 8)])
    assert command_precision("QAveragePool", RBLNC_DOMAIN, "bf16") == "int8"
    assert op_flops(pool) == 8 * 8 * 8 * (9 + 2)  # the window sums, then a multiply and a round each
