"""Fast paths of our fused ops (FusedConv, FusedGemm, SiLU, Gelu: rblnc/ir/fused_ops.py) against
their documented semantics computed in fp32 and rounded once, and the memory plan's in-place
rule for a fused convolution's addend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ml_dtypes import bfloat16

from rblnc.emulator import KERNELS, NpuProgramRunner
from rblnc.emulator.kernels import kernel
from rblnc.format.artifact import Command, MemoryRegion, NpuProgram, Tensor, TensorKind
from rblnc.lower.memory_plan import plan_model_memory
from rblnc.target import load_target

@pytest.fixture(autouse=True)
def torch_engine(monkeypatch):
    """These tests are about the command-by-command path (its fast paths, in-place rule and
    errors); tests/test_emulator_engines.py compares it with the whole-program onnxruntime one."""
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "torch")


ACTIVATIONS = {
    "": lambda x, p: x, "Relu": lambda x, p: torch.relu(x), "SiLU": lambda x, p: F.silu(x),
    "Clip": lambda x, p: torch.clamp(x, p[0], p[1]), "LeakyRelu": lambda x, p: F.leaky_relu(x, p[0]),
    "GeluTanh": lambda x, p: F.gelu(x, approximate="tanh"), "Sigmoid": lambda x, p: torch.sigmoid(x),
    "HardSigmoid": lambda x, p: torch.clamp(x * p[0] + p[1], 0.0, 1.0),
}


def _reference_fused_conv(inputs, attrs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    pads = attrs.get("pads", [0, 0, 0, 0])
    y = F.conv2d(x, w, b, attrs.get("strides", [1, 1]), pads[:2], 1, attrs.get("group", 1))
    if len(inputs) > 3 and inputs[3] is not None:
        y = y + inputs[3]
    return [ACTIVATIONS[attrs.get("activation", "")](y, attrs.get("activation_params", []))]


def _reference_fused_gemm(inputs, attrs):
    a, b, c = inputs
    y = a @ (b.t() if attrs.get("transB", 0) else b) + c
    return [ACTIVATIONS[attrs.get("activation", "")](y, attrs.get("activation_params", []))]


@pytest.fixture(autouse=True)
def fused_kernels():
    """The real kernels come with the fusion passes (rblnc/emulator/fused_kernels.py); where they
    are absent, stand-ins with the documented semantics let the fast paths be checked."""
    added = []
    for name, fn in [("ai.rblnc::FusedConv", _reference_fused_conv), ("ai.rblnc::FusedGemm", _reference_fused_gemm),
                     ("ai.rblnc::SiLU", lambda i, a: [F.silu(i[0])]),
                     ("ai.rblnc::Gelu", lambda i, a: [F.gelu(i[0], approximate=a.get("approximate", "none"))])]:
        if name not in KERNELS:
            kernel(name)(fn)
            added.append(name)
    yield
    for name in added:
        del KERNELS[name]


def _rounded(x: np.ndarray, dtype) -> np.ndarray:
    return np.asarray(x, np.float32).astype(dtype).astype(np.float32)


def _conv_program(dtype, activation: str, params: list[float], with_addend: bool = True) -> NpuProgram:
    """y = FusedConv(x, w, b, z) with z = Relu(r): z dies at the fused conv, so the plan may
    give y its bytes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32).astype(dtype)
    b = rng.standard_normal(8).astype(np.float32).astype(dtype)
    f = np.dtype(dtype)
    tensors = [Tensor("x", f, (1, 4, 6, 6), TensorKind.PROGRAM_INPUT),
               Tensor("r", f, (1, 8, 6, 6), TensorKind.PROGRAM_INPUT),
               Tensor("w", w.dtype, w.shape, TensorKind.CONSTANT, w),
               Tensor("b", b.dtype, b.shape, TensorKind.CONSTANT, b),
               Tensor("z", f, (1, 8, 6, 6), TensorKind.ACTIVATION, size=8 * 36 * f.itemsize),
               Tensor("y", f, (1, 8, 6, 6), TensorKind.ACTIVATION, size=8 * 36 * f.itemsize),
               Tensor("out", f, (1, 8, 6, 6), TensorKind.PROGRAM_OUTPUT, size=8 * 36 * f.itemsize)]
    for t in tensors[:2]:
        t.size = int(np.prod(t.shape)) * f.itemsize
    commands = [Command("Relu", [1], [4], "relu"),
                Command("FusedConv", [0, 2, 3, 4] if with_addend else [0, 2, 3], [5], "fused", domain="ai.rblnc",
                        attributes={"pads": [1, 1, 1, 1], "activation": activation, "activation_params": params}),
                Command("Sigmoid", [5], [6], "sigmoid")]
    program = NpuProgram(tensors, commands)
    plan_model_memory([("p0", program)], load_target())
    return program


@pytest.mark.parametrize("with_addend", [True, False])
@pytest.mark.parametrize("precision, dtype", [("fp32", np.float32), ("bf16", bfloat16)])
@pytest.mark.parametrize("activation, params", [("", []), ("Relu", []), ("SiLU", []), ("Clip", [0.0, 6.0]),
                                                ("LeakyRelu", [0.1]), ("GeluTanh", []),
                                                ("HardSigmoid", [float(np.float32(1 / 6)), 0.5]),
                                                ("HardSigmoid", [0.2, 0.5])])
def test_fused_conv_is_one_convolution_with_post_ops(precision, dtype, activation, params, with_addend):
    program = _conv_program(dtype, activation, params, with_addend)
    tensors = {t.name: t for t in program.tensors}
    if with_addend:
        assert (tensors["y"].region, tensors["y"].offset) == (tensors["z"].region, tensors["z"].offset)  # in place
    runner = NpuProgramRunner(program)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    r = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    actual = runner.run({"x": x, "r": r})["out"]
    # The contract: fp32 arithmetic on the stored operands, the fused result rounded once.
    stored = [torch.from_numpy(_rounded(v, dtype)) for v in (x, tensors["w"].data, tensors["b"].data)]
    z = torch.relu(torch.from_numpy(_rounded(r, dtype)))
    fused = _reference_fused_conv([*stored, z] if with_addend else stored, program.commands[1].attributes)[0].numpy()
    expected = _rounded(1 / (1 + np.exp(-_rounded(fused, dtype).astype(np.float64))), dtype)
    step = np.abs(expected) * (1e-5 if precision == "fp32" else 2.0**-7) + 1e-6
    assert np.all(np.abs(actual - expected) <= step)
    fast = runner._steps[1][0]
    # oneDNN takes the addend with no activation or ReLU after it, and its hardsigmoid is only
    # PyTorch's (slope 1/6); the rest runs the kernel in fp32
    one_convolution = (activation in ("", "Relu") or not with_addend) and params != [0.2, 0.5]
    assert ("conv2d_closure" in fast.__qualname__) == one_convolution


@pytest.mark.parametrize("dtype", [np.float32, bfloat16])
def test_fused_gemm_silu_and_gelu(dtype):
    rng = np.random.default_rng(2)
    b = rng.standard_normal((10, 64)).astype(np.float32).astype(dtype)
    c = rng.standard_normal(10).astype(np.float32).astype(dtype)
    f = np.dtype(dtype)
    tensors = [Tensor("a", f, (3, 64), TensorKind.PROGRAM_INPUT, size=3 * 64 * f.itemsize),
               Tensor("b", b.dtype, b.shape, TensorKind.CONSTANT, b),
               Tensor("c", c.dtype, c.shape, TensorKind.CONSTANT, c),
               Tensor("g", f, (3, 10), TensorKind.ACTIVATION, size=30 * f.itemsize),
               Tensor("s", f, (3, 10), TensorKind.ACTIVATION, size=30 * f.itemsize),
               Tensor("y", f, (3, 10), TensorKind.PROGRAM_OUTPUT, size=30 * f.itemsize)]
    commands = [Command("FusedGemm", [0, 1, 2], [3], "gemm", domain="ai.rblnc",
                        attributes={"transB": 1, "activation": "LeakyRelu", "activation_params": [0.2]}),
                Command("SiLU", [3], [4], "silu", domain="ai.rblnc"),
                Command("Gelu", [4], [5], "gelu", domain="ai.rblnc", attributes={"approximate": "tanh"})]
    program = NpuProgram(tensors, commands)
    plan_model_memory([("p0", program)], load_target())
    a = rng.standard_normal((3, 64)).astype(np.float32)
    actual = NpuProgramRunner(program).run({"a": a})["y"]
    r = lambda v: torch.from_numpy(_rounded(v.numpy() if isinstance(v, torch.Tensor) else v, dtype))  # noqa: E731
    g = r(F.leaky_relu(r(a) @ r(b).t() + r(c), 0.2))
    s = r(F.silu(g))
    expected = r(F.gelu(s, approximate="tanh")).numpy()
    step = np.abs(expected) * (1e-5 if dtype == np.float32 else 2.0**-7) + 1e-6
    assert np.all(np.abs(actual - expected) <= step)


def test_cost_model_counts_the_fused_convolution_and_its_epilogue():
    from rblnc.cost_model import OpShape, op_flops, runs_on_matrix_engine

    op = OpShape("FusedConv", "ai.rblnc", {"activation": "Relu"},
                 [(1, 4, 6, 6), (8, 4, 3, 3), (8,), (1, 8, 6, 6)], [(1, 8, 6, 6)])
    conv = 2 * 8 * 36 * 4 * 9 + 8 * 36
    assert op_flops(op) == conv + 2 * 8 * 36 and runs_on_matrix_engine(op)
    assert math.isclose(op_flops(OpShape("SiLU", "ai.rblnc", {}, [(4, 5)], [(4, 5)])), 100)
