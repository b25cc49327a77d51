"""The emulator's two engines (rblnc/emulator/npu.py): command by command on torch, and the whole
program as one onnxruntime session with a rounding after every command
(rblnc/emulator/onnx_program.py). Same numerics: equal outputs within accumulation-order noise,
results rounded to the program's precision, and the roundings survive onnxruntime's optimizer."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import LIGHT_DIR, make_onnx, relative_errors
from ml_dtypes import bfloat16
from onnx import TensorProto, helper

import rblnc
from rblnc import zoo
from rblnc.emulator import EmulatorError, NpuProgramRunner
from rblnc.emulator.onnx_program import UnsupportedProgram, program_to_onnx
from rblnc.format.artifact import Command, Device, NpuProgram, Tensor, TensorKind

# torch's oneDNN and onnxruntime's MLAS sum in different orders: in fp32 the outputs differ by
# fp32 noise; in bf16/fp16 a sum that lands near a rounding boundary may round the other way,
# and that step travels on through later commands. Measured (max |diff| / max |torch|, then
# the l2 ratio): fp32 at most 6e-7, bf16 1.6e-3 and 3.3e-4, fp16 7.8e-4 and 7.0e-4
# (MobileNetV3-small; the other cases agree exactly in bf16 and fp16).
ENGINE_BOUNDS = {"fp32": (1e-5, 1e-5), "fp16": (1e-2, 5e-3), "bf16": (2e-2, 1e-2)}
STORAGE = {"bf16": bfloat16, "fp16": np.float16}


def mixed_ops_model() -> onnx.ModelProto:
    """Conv, BatchNorm, Relu, HardSwish, SiLU, a residual Add, MaxPool, linear Resize, Concat,
    a Transpose, MatMuls, LayerNormalization, Gelu, Softmax, GlobalAveragePool and ReduceMean."""
    rng = np.random.default_rng(0)
    f = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(np.float32)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("HardSwish", ["r"], ["hs"]),
        helper.make_node("Conv", ["hs", "w2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["sg"]),
        helper.make_node("Mul", ["c2", "sg"], ["silu"]),
        helper.make_node("Add", ["silu", "r"], ["res"]),
        helper.make_node("MaxPool", ["res"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["mp", "", "scales"], ["up"], mode="linear"),
        helper.make_node("Concat", ["up", "res"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["pooled"]),
        helper.make_node("Reshape", ["cat", "shape"], ["seq"]),
        helper.make_node("Transpose", ["seq"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "wq"], ["q"]),
        helper.make_node("LayerNormalization", ["q", "g", "beta"], ["ln"], axis=-1),
        helper.make_node("Div", ["ln", "sqrt2"], ["ln_s"]),
        helper.make_node("Erf", ["ln_s"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["ln", "erf1"], ["gx"]),
        helper.make_node("Mul", ["gx", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "wk"], ["k"]),
        helper.make_node("Softmax", ["k"], ["sm"], axis=-1),
        helper.make_node("ReduceMean", ["sm"], ["y"], axes=[1], keepdims=0),
    ]
    initializers = [
        ("w1", f(8, 3, 3, 3, scale=0.5)), ("b1", f(8)), ("s", f(8)), ("bb", f(8)), ("m", f(8, scale=0.1)),
        ("v", np.abs(f(8)) + 0.5), ("w2", f(8, 8, 1, 1, scale=0.4)),
        ("scales", np.array([1, 1, 2, 2], np.float32)), ("shape", np.array([1, 16, 256], np.int64)),
        ("wq", f(16, 16, scale=0.3)), ("g", f(16)), ("beta", f(16)), ("sqrt2", np.array(np.sqrt(2), np.float32)),
        ("one", np.array(1, np.float32)), ("half", np.array(0.5, np.float32)), ("wk", f(16, 16, scale=0.5)),
    ]
    return make_onnx(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 16]), ("pooled", [1, 16, 1, 1])], initializers)


def _runtime(model, precision, engine, monkeypatch):
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", engine)
    runtime = rblnc.compile_from_onnx(model, dtype=precision).create_runtime()
    npu = [runner for partition, runner in runtime._executor.stages if partition.device == Device.NPU]
    assert npu and all(runner.engine == engine for runner in npu), [r.engine_reason for r in npu]
    return runtime


def _both(model, precision, inputs, monkeypatch):
    results = {}
    for engine in ("torch", "onnxruntime"):
        outputs = _runtime(model, precision, engine, monkeypatch).run(*inputs)
        results[engine] = outputs if isinstance(outputs, list) else [outputs]
    return results["torch"], results["onnxruntime"]


def _light(name: str):
    model = onnx.load(str(LIGHT_DIR / f"{name}.onnx"))
    from onnx.backend.test.runner import Runner

    initializers = {i.name for i in model.graph.initializer}
    return model, [Runner.generate_dummy_data(v, seed=0, random=False)  # as test_precision.py feeds it
                   for v in model.graph.input if v.name not in initializers]


def _cases():
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    return {"mixed_ops": lambda: (mixed_ops_model(), [x]),
            "light_squeezenet": lambda: _light("light_squeezenet"),
            "light_shufflenet": lambda: _light("light_shufflenet"),
            "mobilenet_v3_small": lambda: (None, None)}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(_cases()))
def test_the_engines_agree(name, precision, monkeypatch, tmp_path):
    if precision == "fp16" and name == "light_squeezenet":
        pytest.skip("its activations overflow fp16 (test_precision.py's FP16_OVERFLOWS)")
    model, inputs = _cases()[name]()
    if model is None:  # a zoo model: exported to ONNX, with its example inputs
        path = tmp_path / f"{name}.onnx"
        zoo.export_onnx(name, path)
        model, inputs = onnx.load(str(path)), list(zoo.get(name).example_inputs())
    torch_outputs, ort_outputs = _both(model, precision, inputs, monkeypatch)
    worst_bound, l2_bound = ENGINE_BOUNDS[precision]
    for expected, actual in zip(torch_outputs, ort_outputs):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        worst, l2 = relative_errors(actual, expected)
        assert worst <= worst_bound and l2 <= l2_bound, f"{name} {precision}: max {worst:.2e}, l2 {l2:.2e}"
        if precision != "fp32":  # every output went through the program's rounding
            assert np.array_equal(actual, actual.astype(STORAGE[precision]).astype(np.float32))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_computed_result_is_rounded_and_onnxruntime_keeps_the_roundings(precision, tmp_path):
    """Each command that computes a float result is followed by Cast to the precision and back,
    and onnxruntime's optimizer (all levels, as the engine runs it) removes none of them: the
    optimised model still has both Casts of every rounding, and every intermediate the program
    names is representable in the precision."""
    model = mixed_ops_model()
    compiled = rblnc.compile_from_onnx(model, dtype=precision)
    program = compiled.artifact.partitions[0].npu_program
    built = program_to_onnx(program, compiled.artifact.opset)
    narrow = {"bf16": TensorProto.BFLOAT16, "fp16": TensorProto.FLOAT16}[precision]
    roundings = [n for n in built.graph.node if n.op_type == "Cast"
                 and helper.get_attribute_value(n.attribute[0]) == narrow]
    value_preserving = {"Reshape", "Transpose", "Concat", "MaxPool", "Relu"}
    computed = [c for c in program.commands if c.op_type not in value_preserving]
    assert len(roundings) == len(computed) + 1  # and the input, rounded on entry
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(built.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimised = onnx.load(str(tmp_path / "optimised.onnx"))
    casts = [n for n in optimised.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 * len(roundings)
    # Every tensor of the program, read out of the session: representable in the precision.
    names = [f"t{i}" for i, t in enumerate(program.tensors)
             if t.kind in (TensorKind.ACTIVATION, TensorKind.PROGRAM_OUTPUT) and np.dtype(t.dtype).kind != "i"]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(built)
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names
                                if n not in {o.name for o in built.graph.output})
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32) * 3
    values = session.run(names, {session.get_inputs()[0].name: x})
    assert len(values) > 15
    for name, value in zip(names, values):
        assert np.array_equal(value, value.astype(STORAGE[precision]).astype(np.float32)), name


def test_onnxruntime_rounds_to_nearest_even_as_torch_does():
    """Cast float -> bfloat16 in onnxruntime against torch's .to(bfloat16): ties, the values
    just either side of them, the largest finite value (rounds to infinity), subnormals."""
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF, 0x00008000,
                     0x80018000, 0x3F80C000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF], np.uint32)
    rng = np.random.default_rng(0)
    spread = rng.standard_normal(20000) * 10.0 ** rng.uniform(-38, 38, 20000)
    x = np.concatenate([bits.view(np.float32), spread.astype(np.float32)])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["n"], to=TensorProto.BFLOAT16),
         helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)], "round",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(y.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("op_type", ["Sigmoid", "SiLU", "HardSwish", "Tanh", "Exp"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_transcendental_ops_are_as_accurate_as_torchs(op_type, precision, monkeypatch):
    """Where onnxruntime's own kernel loses the tails (Sigmoid: relative error 6.5 at x = -18;
    HardSwish near x = -3) the program uses an exact form: in fp32 every op is within 3e-7 of
    float64, in bf16 every result is the exact value rounded once. SiLU is x * sigmoid(x) in
    the source model, one rblnc SiLU command in the program."""
    x = np.concatenate([np.linspace(-20, 20, 4001), -np.geomspace(1e-6, 20, 500), np.geomspace(1e-6, 20, 500)])
    x = x.astype(np.float32).reshape(1, -1)
    if precision == "bf16":
        x = x.astype(bfloat16).astype(np.float32)
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])] \
        if op_type == "SiLU" else [helper.make_node(op_type, ["x"], ["y"])]
    model = make_onnx(nodes, [("x", list(x.shape))], [("y", list(x.shape))])
    actual = _runtime(model, precision, "onnxruntime", monkeypatch).run(x)
    exact = {"Sigmoid": torch.sigmoid, "SiLU": torch.nn.functional.silu, "HardSwish": torch.nn.functional.hardswish,
             "Tanh": torch.tanh, "Exp": torch.exp}[op_type](torch.from_numpy(x).double()).numpy()
    if precision == "fp32":
        tiny = np.abs(exact) > 1e-30
        assert np.max(np.abs(actual - exact)[tiny] / np.abs(exact)[tiny]) < 3e-7
    else:  # the exact value rounded once, or its neighbour where the fp32 value sits on a boundary
        step = np.abs(exact) * 2.0**-8 + 1e-38
        assert np.all(np.abs(actual - exact) <= step)


def test_convolution_gates_run_negated_with_the_four_pass_values():
    """A convolution feeding sigmoid or SiLU is built with negated weight and bias (so exp(-x)
    needs no Neg pass): the engine's values equal, bit for bit, those of the plain forms
    1 / (1 + exp(-x)) and x / (1 + exp(-x)) after the same convolution, run by onnxruntime."""
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    w2, b2 = rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.3, rng.standard_normal(16).astype(np.float32)
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "one": np.array(1.0, np.float32)}
    source = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["c1"], ["s1"]), helper.make_node("Mul", ["c1", "s1"], ["silu"]),
              helper.make_node("Conv", ["silu", "w2", "b2"], ["c2"]), helper.make_node("Sigmoid", ["c2"], ["y"])]
    shape = [1, 8, 12, 12]
    model = make_onnx(source, [("x", shape)], [("y", [1, 16, 12, 12])],
                      [(k, v) for k, v in weights.items() if k != "one"])
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    program = compiled.artifact.partitions[0].npu_program
    built = program_to_onnx(program, compiled.artifact.opset)
    ops = [n.op_type for n in built.graph.node]
    assert ops.count("Conv") == 2 and "Neg" not in ops and "Sigmoid" not in ops and "Reciprocal" not in ops
    plain = [source[0],
             helper.make_node("Neg", ["c1"], ["n1"]), helper.make_node("Exp", ["n1"], ["e1"]),
             helper.make_node("Add", ["e1", "one"], ["d1"]), helper.make_node("Div", ["c1", "d1"], ["silu"]),
             source[3],
             helper.make_node("Neg", ["c2"], ["n2"]), helper.make_node("Exp", ["n2"], ["e2"]),
             helper.make_node("Add", ["e2", "one"], ["d2"]), helper.make_node("Reciprocal", ["d2"], ["y"])]
    reference = make_onnx(plain, [("x", shape)], [("y", [1, 16, 12, 12])], list(weights.items()))
    reference = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    runner = NpuProgramRunner(program, engine="onnxruntime")
    assert runner.engine == "onnxruntime"
    for scale in (1.0, 10.0):  # 10: the sigmoid's far tails, where onnxruntime's own is off
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        expected = reference.run(None, {"x": x})[0]
        actual = runner.run({program.tensors[0].name: x})[program.tensors[-1].name]
        assert np.array_equal(actual.view(np.uint32), expected.view(np.uint32))


def test_the_engine_is_chosen_per_program(monkeypatch):
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], [("y", [4])])
    monkeypatch.delenv("RBLNC_EMULATOR_ENGINE", raising=False)
    program = rblnc.compile_from_onnx(model, dtype="fp32").artifact.partitions[0].npu_program
    runner = NpuProgramRunner(program)
    assert (runner.engine, runner.engine_reason) == ("onnxruntime", "fp32 program")
    assert NpuProgramRunner(program, engine="torch").engine == "torch"
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "torch")
    assert NpuProgramRunner(program).engine == "torch"
    assert NpuProgramRunner(program, engine="onnxruntime").engine == "onnxruntime"  # the argument wins
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "tensorrt")
    with pytest.raises(ValueError, match=r"npu: unknown emulator engine 'tensorrt' \(from RBLNC_EMULATOR_ENGINE\); "
                                         r"known: auto, torch, onnxruntime"):
        NpuProgramRunner(program)


def test_programs_onnxruntime_cannot_run_exactly_keep_the_torch_path():
    """Elu: onnxruntime computes exp(x) - 1, which loses small negative x; ONNX has no expm1."""
    model = make_onnx([helper.make_node("Elu", ["x"], ["y"])], [("x", [4])], [("y", [4])])
    program = rblnc.compile_from_onnx(model, dtype="fp32").artifact.partitions[0].npu_program
    with pytest.raises(UnsupportedProgram, match=r"\(Elu\): onnxruntime computes exp\(x\) - 1"):
        program_to_onnx(program, 17)
    runner = NpuProgramRunner(program, engine="onnxruntime")
    assert runner.engine == "torch" and "no onnxruntime program" in runner.engine_reason
    x = -np.geomspace(1e-8, 1e-3, 4).astype(np.float32)
    np.testing.assert_allclose(runner.run({runner.program.tensors[0].name: x})["y"], np.expm1(x), rtol=1e-6)


def test_profiling_switches_a_runner_to_the_torch_path():
    from rblnc.emulator.profile import Profile

    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], [("y", [4])])
    program = rblnc.compile_from_onnx(model, dtype="fp32").artifact.partitions[0].npu_program
    runner = NpuProgramRunner(program, engine="onnxruntime")
    profile = Profile()
    runner.profile_into(profile)
    assert runner.engine == "torch" and runner.engine_reason.startswith("profiled")
    x = np.array([-1, 2, -3, 4], np.float32)
    assert np.array_equal(runner.run({"x": x})["y"], np.maximum(x, 0))
    assert len(profile.per_op_type()) == 1


def test_a_failing_command_is_named_in_the_error():
    # A weight that contradicts the convolution (3 input channels declared, 5 stored).
    tensors = [Tensor("x", np.dtype(np.float32), (1, 3, 4, 4), TensorKind.PROGRAM_INPUT),
               Tensor("w", np.dtype(np.float32), (2, 5, 1, 1), TensorKind.CONSTANT, np.ones((2, 5, 1, 1), np.float32)),
               Tensor("y", np.dtype(np.float32), (1, 2, 4, 4), TensorKind.PROGRAM_OUTPUT)]
    runner = NpuProgramRunner(NpuProgram(tensors, [Command("Conv", [0, 1], [2], "conv7")]), "p0_npu",
                              engine="onnxruntime")
    assert runner.engine == "onnxruntime"
    with pytest.raises(EmulatorError, match=r"p0_npu: command conv7 \(Conv\) failed: .*kernel channels"):
        runner.run({"x": np.ones((1, 3, 4, 4), np.float32)})


def test_concurrent_runs_of_one_session_give_each_request_its_own_result(monkeypatch):
    """The async runtime's lanes call one runner from several threads."""
    runtime = _runtime(mixed_ops_model(), "bf16", "onnxruntime", monkeypatch)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(6)]
    expected = [runtime.run(x) for x in inputs]
    results: dict[int, list] = {}

    def worker(k):
        results[k] = [runtime.run(inputs[(k + i) % len(inputs)]) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, outputs in results.items():
        for i, out in enumerate(outputs):
            for a, b in zip(out, expected[(k + i) % len(inputs)]):
                assert np.array_equal(a, b)
