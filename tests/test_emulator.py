"""The NPU program runner: kernel contract, precision rule, in-place safety, errors, threads."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import make_onnx
from ml_dtypes import bfloat16
from onnx import helper

import rblnc
from rblnc.emulator import KERNELS, EmulatorError, NpuProgramRunner
from rblnc.emulator.kernels import kernel
from rblnc.format.artifact import Command, NpuProgram, Tensor, TensorKind


@pytest.fixture(autouse=True)
def torch_engine(monkeypatch):
    """These tests are about the command-by-command path (its fast paths, in-place rule and
    errors); tests/test_emulator_engines.py compares it with the whole-program onnxruntime one."""
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "torch")


def _reference(model, **feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def scale_kernel():
    """A kernel of our own domain, registered the way the fusion passes register theirs."""
    seen = []

    @kernel("ai.rblnc::TestScale")
    def test_scale(inputs, attrs):
        seen.append(inputs[0].dtype)
        return [inputs[0] * attrs["factor"]]

    yield seen
    del KERNELS["ai.rblnc::TestScale"]


def _scale_program(dtype) -> NpuProgram:
    tensors = [Tensor("x", np.dtype(dtype), (4,), TensorKind.PROGRAM_INPUT),
               Tensor("y", np.dtype(dtype), (4,), TensorKind.PROGRAM_OUTPUT)]
    command = Command("TestScale", [0], [1], "scale", {"factor": 1.0 / 3.0}, domain="ai.rblnc")
    return NpuProgram(tensors, [command])


def test_own_domain_kernels_run_in_fp32_and_their_result_is_rounded(scale_kernel):
    x = np.array([1.0, 2.0, 3.0, 1000.0], np.float32)
    fp32 = NpuProgramRunner(_scale_program(np.float32)).run({"x": x})["y"]
    np.testing.assert_allclose(fp32, x / 3, rtol=1e-7)
    bf16 = NpuProgramRunner(_scale_program(bfloat16)).run({"x": x})["y"]
    assert scale_kernel == [torch.float32, torch.float32]  # the kernel computed in fp32 both times
    expected = (x.astype(bfloat16).astype(np.float32) / np.float32(3)).astype(bfloat16).astype(np.float32)
    assert bf16.dtype == np.float32 and np.array_equal(bf16, expected)


def test_a_command_without_a_kernel_is_refused_when_the_program_is_prepared():
    program = _scale_program(np.float32)
    program.commands[0].op_type = "NoSuchOp"
    with pytest.raises(EmulatorError, match=r"npu: no emulator kernel for ai.rblnc::NoSuchOp \(command scale\)"):
        NpuProgramRunner(program)


def test_a_failing_command_is_named_in_the_error(scale_kernel):
    program = _scale_program(np.float32)
    program.commands[0].attributes = {}  # the kernel reads attrs["factor"]
    runner = NpuProgramRunner(program, "p7_npu")
    with pytest.raises(EmulatorError, match=r"p7_npu: command scale \(TestScale\) failed: 'factor'"):
        runner.run({"x": np.zeros(4, np.float32)})


def test_in_place_updates_never_touch_the_callers_arrays_or_values_still_needed():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    bias = rng.standard_normal((8, 1, 1)).astype(np.float32)
    model = make_onnx(
        [helper.make_node("Relu", ["x"], ["r"]),                 # x is the caller's array
         helper.make_node("Conv", ["r", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["c_relu"]),            # in place on c (fused post-op)
         helper.make_node("Add", ["c_relu", "bias"], ["a"]),     # in place, broadcast operand
         helper.make_node("Sigmoid", ["a"], ["s"]),
         helper.make_node("Mul", ["s", "a"], ["m"]),             # a is still needed here
         helper.make_node("Add", ["m", "a"], ["y0"]),            # ... and here
         helper.make_node("Clip", ["y0", "lo", "hi"], ["y"])],   # relu6
        [("x", [2, 4, 6, 6])], [("y", [2, 8, 6, 6])],
        [("w", w), ("bias", bias), ("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32))],
    )
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    original = x.copy()
    runtime = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=0).create_runtime()  # the commands as written
    placed = {t.name: t.offset for t in runtime.artifact.partitions[0].npu_program.tensors}
    assert placed["c_relu"] == placed["c"] == placed["a"]    # the plan chains them in place...
    assert placed["m"] == placed["s"] != placed["a"]         # ...but not over a value read later
    first = runtime.run(x)
    np.testing.assert_allclose(first, _reference(model, x=x)[0], rtol=1e-5, atol=1e-5)
    assert np.array_equal(x, original)
    assert np.array_equal(runtime.run(x), first)  # constants and state untouched between requests


def test_relu_applied_as_a_post_op_gives_the_same_bits_in_bf16():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    fused = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c"], ["y"]),
                       helper.make_node("Sigmoid", ["y"], ["z"])],
                      [("x", [1, 8, 10, 10])], [("z", [1, 16, 10, 10])], [("w", w)])
    separate = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                          helper.make_node("Relu", ["c"], ["y"]),
                          helper.make_node("Sigmoid", ["y"], ["z"])],
                         [("x", [1, 8, 10, 10])], [("z", [1, 16, 10, 10]), ("c", [1, 16, 10, 10])], [("w", w)])
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    a = rblnc.compile_from_onnx(fused, dtype="bf16", opt_level=0).create_runtime().run(x)
    b, _ = rblnc.compile_from_onnx(separate, dtype="bf16", opt_level=0).create_runtime().run(x)  # c is an output
    assert np.array_equal(a, b)


def test_concurrent_requests_get_their_own_results():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    model = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"])],
                      [("x", [1, 3, 16, 16])], [("y", [1, 8, 16, 16])], [("w", w)])
    runtime = rblnc.compile_from_onnx(model, dtype="bf16").create_runtime()
    inputs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    expected = [runtime.run(x) for x in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i):
        for _ in range(5):
            results[i] = runtime.run(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(results[i], expected[i]) for i in range(8))


def test_spill_and_reload_commands_pass_values_through(tmp_path):
    tensors = [Tensor("x", np.dtype(np.float32), (4,), TensorKind.PROGRAM_INPUT),
               Tensor("a", np.dtype(np.float32), (4,), TensorKind.ACTIVATION),
               Tensor("a@dram", np.dtype(np.float32), (4,), TensorKind.ACTIVATION),
               Tensor("a@reload1", np.dtype(np.float32), (4,), TensorKind.ACTIVATION),
               Tensor("y", np.dtype(np.float32), (4,), TensorKind.PROGRAM_OUTPUT)]
    from rblnc.format.artifact import CommandKind

    commands = [Command("Relu", [0], [1], "relu"),
                Command("Spill", [1], [2], "spill:a", kind=CommandKind.DMA),
                Command("Reload", [2], [3], "reload1:a", kind=CommandKind.DMA),
                Command("Sigmoid", [3], [4], "sigmoid")]
    x = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)
    y = NpuProgramRunner(NpuProgram(tensors, commands)).run({"x": x})["y"]
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)


@pytest.mark.parametrize("residual_used_later", [False, True])
def test_fp32_conv_epilogue_folds_batch_norm_and_residual_exactly(residual_used_later):
    """A ResNet block tail, Conv -> BatchNormalization -> Add(residual) -> Relu, runs as one oneDNN
    convolution in fp32 (the runner skips the three others) and matches onnxruntime."""
    rng = np.random.default_rng(4)
    c = 8
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.2
    bn = [rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
          rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)]
    nodes = [helper.make_node("Sigmoid", ["x"], ["res"]),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Add", ["n", "res"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    outputs = [("y", [1, c, 6, 6])]
    if residual_used_later:
        nodes.append(helper.make_node("Mul", ["y", "res"], ["z"]))
        outputs = [("z", [1, c, 6, 6])]
    model = make_onnx(nodes, [("x", [1, c, 6, 6])], outputs,
                      [("w", w), ("s", bn[0]), ("b", bn[1]), ("m", bn[2]), ("v", bn[3])])
    runtime = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=0).create_runtime()  # unfused commands
    x = rng.standard_normal((1, c, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(runtime.run(x), _reference(model, x=x)[0], rtol=1e-5, atol=1e-5)
    runner = runtime._executor.stages[0][1]
    skipped = [cmd.op_type for (fn, *_), cmd in zip(runner._steps, runner._commands)
               if getattr(fn, "__qualname__", "").startswith("_pass_on")]
    assert skipped == ["BatchNormalization", "Add", "Relu"]
    bf16 = rblnc.compile_from_onnx(model, dtype="bf16", opt_level=0).create_runtime()._executor.stages[0][1]
    assert not any(getattr(fn, "__qualname__", "").startswith("_pass_on") for fn, *_ in bf16._steps)


def test_fp32_conv_epilogue_applies_silu():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3
    bn = [rng.standard_normal(8).astype(np.float32) for _ in range(3)] + [rng.uniform(0.5, 2, 8).astype(np.float32)]
    model = make_onnx(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
         helper.make_node("Sigmoid", ["n"], ["g"]), helper.make_node("Mul", ["g", "n"], ["y"])],
        [("x", [1, 4, 6, 6])], [("y", [1, 8, 6, 6])],
        [("w", w), ("s", bn[0]), ("b", bn[1]), ("m", bn[2]), ("v", bn[3])],
    )
    runtime = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=0).create_runtime()  # unfused commands
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(runtime.run(x), _reference(model, x=x)[0], rtol=1e-5, atol=1e-5)
    runner = runtime._executor.stages[0][1]
    skipped = [cmd.op_type for (fn, *_), cmd in zip(runner._steps, runner._commands)
               if getattr(fn, "__qualname__", "").startswith("_pass_on")]
    assert skipped == ["BatchNormalization", "Sigmoid", "Mul"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scalars_stay_scalars(precision):
    # A scalar index (ViT's class token) and a scalar input: no axis may appear or vanish.
    model = make_onnx(
        [helper.make_node("Gather", ["x", "index"], ["g"], axis=1),
         helper.make_node("Mul", ["g", "s"], ["y"])],
        [("x", [1, 5, 3]), ("s", [])], [("y", [1, 3])], [("index", np.array(0, np.int64))],
    )
    compiled = rblnc.compile_from_onnx(model, dtype=precision)
    assert [p.device.name for p in compiled.artifact.partitions] == ["NPU"]
    x = np.arange(15, dtype=np.float32).reshape(1, 5, 3)
    y = compiled.create_runtime().run(x, np.array(2, np.float32))
    assert y.shape == (1, 3) and np.array_equal(y, x[:, 0] * 2)


def test_a_fast_path_that_cannot_be_built_leaves_the_kernel_to_fail_naming_the_command():
    # A weight that contradicts the convolution (3 input channels declared, 5 stored): oneDNN
    # refuses to reorder it; the plain kernel then fails at run time, and the error says where.
    tensors = [Tensor("x", np.dtype(np.float32), (1, 3, 4, 4), TensorKind.PROGRAM_INPUT),
               Tensor("w", np.dtype(np.float32), (2, 5, 1, 1), TensorKind.CONSTANT, np.ones((2, 5, 1, 1), np.float32)),
               Tensor("y", np.dtype(np.float32), (1, 2, 4, 4), TensorKind.PROGRAM_OUTPUT)]
    runner = NpuProgramRunner(NpuProgram(tensors, [Command("Conv", [0, 1], [2], "conv7")]), "p0_npu")
    with pytest.raises(EmulatorError, match=r"p0_npu: command conv7 \(Conv\) failed"):
        runner.run({"x": np.ones((1, 3, 4, 4), np.float32)})
