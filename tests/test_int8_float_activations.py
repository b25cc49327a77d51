"""int8_ops="all": a Conv / MatMul fused with an activation int8 cannot keep exact (HardSwish, SiLU,
HardSigmoid, GELU) runs in int8 with the activation in float between Dequantize and Quantize, as
onnxruntime's QDQ files do; int8_ops="auto" leaves such ops as they were (docs/precision.md)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import export_onnx

import rblnc

SHAPE = (1, 3, 16, 16)


class MobileBlock(torch.nn.Module):
    """Convolutions with HardSwish and SiLU, a squeeze-excitation gate (HardSigmoid), a GELU MLP."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.squeeze = torch.nn.Conv2d(16, 16, 1)
        self.project = torch.nn.Conv2d(16, 24, 1)
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = torch.nn.functional.hardswish(self.stem(x))
        x = torch.nn.functional.silu(self.depthwise(x))
        x = x * torch.nn.functional.hardsigmoid(self.squeeze(x.mean((2, 3), keepdim=True)))
        x = torch.nn.functional.hardswish(self.project(x)).mean((2, 3))
        return torch.nn.functional.gelu(self.fc(x))


@pytest.fixture(scope="module")
def block_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("block") / "block.onnx"
    export_onnx(MobileBlock().eval(), torch.randn(*SHAPE), path)
    return path


def _ops(compiled):
    return [c.op_type for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]


def test_all_runs_convolutions_with_float_activations_in_int8(block_onnx):
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(16)]
    compiled = rblnc.compile_from_onnx(str(block_onnx), dtype="int8", int8_ops="all", calibration=samples)
    ops = _ops(compiled)
    # Every convolution and the classifier run in int8; their activations stay float.
    assert ops.count("QConv") == 4 and ops.count("QGemm") == 1
    assert "FusedConv" not in ops and {"HardSwish", "SiLU"} <= set(ops)
    session = ort.InferenceSession(str(block_onnx), providers=["CPUExecutionProvider"])
    runtime = compiled.create_runtime()
    for _ in range(4):
        x = rng.standard_normal(SHAPE).astype(np.float32)
        reference = session.run(None, {"x": x})[0]
        error = np.linalg.norm(np.asarray(runtime.run(x)) - reference) / np.linalg.norm(reference)
        assert error < 0.05
    # "auto" does not split them: at this size no int8 region pays for its conversions.
    auto = rblnc.compile_from_onnx(str(block_onnx), dtype="int8", calibration=samples[:2])
    assert "QConv" not in _ops(auto) and "FusedConv" in _ops(auto)
