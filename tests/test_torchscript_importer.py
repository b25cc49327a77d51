"""The TorchScript importer's behaviour: inputs and names, outputs, scripted control flow,
source locations, and its errors (unsupported ops, data-dependent control flow, bad input)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from torch import nn

import rblnc
from rblnc.errors import DataDependentError, DynamicShapeError, ModelImportError, UnsupportedOpError
from rblnc.importers.torchscript import import_torchscript, supported_ops_markdown

# Tracing and scripting are what these tests exercise; torch's deprecation notices and the
# tracer's warnings about Python values are expected here.
pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

HERE = os.path.relpath(__file__)  # as the importer shows paths: relative to the working directory
DOCS = Path(__file__).parent.parent / "docs" / "torch_ops.md"


def _line_of(fn, text: str) -> int:
    """The line number of `text` in fn's source file (for checking reported locations)."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _traced(module: nn.Module, *inputs: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad():
        return torch.jit.trace(module.eval(), inputs, check_trace=False)


def _run(compiled, *inputs: np.ndarray):
    return compiled.create_runtime().run(*inputs)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = Block(), Block()

    def forward(self, x):
        y = self.first(x)
        return self.second(y) + y


# ----------------------------------------------------------------------------- source locations


def test_nodes_carry_module_scope_and_source_line():
    graph = import_torchscript(_traced(TwoBlocks(), torch.rand(2, 4)))
    by_name = {n.name: n for n in graph.nodes}
    gemm = by_name["second.fc/linear"]
    assert gemm.op_type == "Gemm" and gemm.source_ops == ["aten::linear"]
    assert gemm.source_location == f"second.fc (Linear), {HERE}:{_line_of(Block.forward, 'self.fc(x)')}"
    relu = by_name["first/relu"]
    assert relu.source_location == f"first (Block), {HERE}:{_line_of(Block.forward, 'torch.relu')}"
    add = by_name["add"]  # top-level code: no module path, only the line
    assert add.source_location == f"{HERE}:{_line_of(TwoBlocks.forward, 'self.second(y) + y')}"


def test_inspect_names_the_users_layer(tmp_path):
    compiled = rblnc.compile_from_torchscript(_traced(TwoBlocks(), torch.rand(2, 4)), dtype="fp32")
    commands = [c for p in compiled.artifact.partitions if p.npu_program for c in p.npu_program.commands]
    locations = {c.name: c.source_location for c in commands}
    assert locations["first.fc/linear"].startswith("first.fc (Linear), ")
    saved = rblnc.RBLNCompiledModel(compiled.save(tmp_path / "m.rbln"))
    reread = [c for p in saved.artifact.partitions if p.npu_program for c in p.npu_program.commands]
    assert [c.source_location for c in reread] == [c.source_location for c in commands]


# ----------------------------------------------------------------------------- unsupported ops


class Unsupported(nn.Module):
    def forward(self, x):
        y = torch.fft.rfft(x).abs()
        z = torch.bucketize(x, torch.tensor([0.2, 0.5]))
        return y.sum(-1) + z.sum(-1)


def test_unsupported_ops_are_reported_together_with_their_locations():
    with pytest.raises(UnsupportedOpError) as caught:
        import_torchscript(_traced(Unsupported(), torch.rand(2, 8)))
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "2 op(s) cannot be imported (aten::bucketize, aten::fft_rfft)" in message
    assert f"aten::fft_rfft at {HERE}:{_line_of(Unsupported.forward, 'torch.fft.rfft')}" in message
    assert f"aten::bucketize at {HERE}:{_line_of(Unsupported.forward, 'torch.bucketize')}" in message
    assert "docs/torch_ops.md" in message
    # The ops downstream of an unsupported one are not reported again.
    assert "aten::abs" not in message and "aten::sum" not in message


def test_unsupported_argument_is_reported_with_the_reason():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"))
    with pytest.raises(UnsupportedOpError, match=r"aten::pad at 0 \(Conv2d\).*padding mode 'circular'"):
        import_torchscript(_traced(model, torch.rand(1, 3, 8, 8)))


# ----------------------------------------------------------------------------- scripted control flow


class StaticControlFlow(nn.Module):
    """Branches on shapes and loops over constants: static once the input shape is fixed."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))

    def forward(self, x, bias: Optional[torch.Tensor] = None):
        if x.dim() == 3:
            x = x.flatten(0, 1)
        outputs: List[torch.Tensor] = []
        for layer in self.layers:
            x = torch.relu(layer(x))
            outputs.append(x)
        for i in range(2):
            x = x + float(i)
        if bias is not None:
            x = x + bias
        halves = list(x.chunk(2, 1))
        halves.append(halves[-1] * 2.0)
        extra = halves + [outputs[0][:, :3]]
        x = torch.cat(extra[1:], 1) if len(extra) == 4 else x
        return x, torch.stack(outputs, 0).sum(0)


def test_scripted_module_with_static_control_flow_matches_torch():
    scripted = torch.jit.script(StaticControlFlow().eval())
    x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
    compiled = rblnc.compile_from_torchscript(scripted, input_info=[("tokens", [2, 3, 6], "float32")], dtype="fp32")
    assert compiled.input_names == ["tokens"] and compiled.output_names == ["output0", "output1"]
    actual = _run(compiled, x)
    with torch.no_grad():
        expected = scripted(torch.from_numpy(x))
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e.numpy(), rtol=1e-5, atol=1e-6)
    # The optional argument can be given too (the second input_info entry binds it).
    bias = np.ones(6, dtype=np.float32)
    compiled = rblnc.compile_from_torchscript(scripted, input_info=[("x", [2, 3, 6], "float32"),
                                                                    ("bias", [6], "float32")], dtype="fp32")
    with torch.no_grad():
        expected = scripted(torch.from_numpy(x), torch.from_numpy(bias))
    np.testing.assert_allclose(_run(compiled, x, bias)[0], expected[0].numpy(), rtol=1e-5, atol=1e-6)


class BranchOnData(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return x


class LoopOnData(nn.Module):
    def forward(self, x):
        for _ in range(int(x.max())):
            x = x + 1
        return x


class SizeFromData(nn.Module):
    def forward(self, x):
        return x[:, : int(x[0, 0])]


@pytest.mark.parametrize("model, where, says", [
    (BranchOnData, "if x.sum() > 0", "prim::If at {}: branches on a value computed from the inputs at run time: "
                                     "the value of a tensor computed from the inputs is read as a Python number "
                                     "(aten::Bool at {})"),
    (LoopOnData, "int(x.max())", "prim::Loop at {}: loops a number of times computed from the inputs at run time"),
    (SizeFromData, "int(x[0, 0])", "aten::slice at {}: the value of a tensor computed from the inputs is read as "
                                   "a Python number (aten::Int at {})"),
])
def test_control_flow_on_data_is_refused_clearly(model, where, says):
    scripted = torch.jit.script(model())
    with pytest.raises(DataDependentError) as caught:
        import_torchscript(scripted, [("x", [2, 4], "float32")])
    message = str(caught.value)
    assert isinstance(caught.value, ModelImportError)
    assert "depend on input values, so it has no static graph" in message
    location = f"{HERE}:{_line_of(model.forward, where)}"
    assert says.format(location, location) in message
    assert message.count("\n  ") == 1  # one problem: the consumers of the bad value stay silent


class ChecksItsInput(nn.Module):
    def forward(self, x):
        if x.shape[1] != 4:
            raise ValueError("expected 4 features")
        return x * 2


def test_a_model_that_raises_for_the_given_shapes_says_so():
    scripted = torch.jit.script(ChecksItsInput())
    graph = import_torchscript(scripted, [("x", [2, 4], "float32")])
    assert [n.op_type for n in graph.nodes] == ["Mul"]
    location = f"{HERE}:{_line_of(ChecksItsInput.forward, 'raise ValueError')}"
    with pytest.raises(ModelImportError, match=f"ChecksItsInput: the model raises .*expected 4 features.* at {location}"):
        import_torchscript(scripted, [("x", [2, 3], "float32")])


def test_trace_of_data_dependent_code_is_static_and_compiles():
    """Tracing records the branch taken: the importer compiles what was traced."""
    traced = _traced(BranchOnData(), torch.ones(2, 4))
    compiled = rblnc.compile_from_torchscript(traced, dtype="fp32")
    np.testing.assert_array_equal(_run(compiled, -np.ones((2, 4), np.float32)), -2 * np.ones((2, 4), np.float32))


# ----------------------------------------------------------------------------- inputs and outputs


class TwoInputs(nn.Module):
    def forward(self, image, scale):
        return image * scale, (image.mean((2, 3)), image + 1)


def test_traced_module_gets_names_from_forward_and_shapes_from_the_trace():
    traced = _traced(TwoInputs(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 1, 1))
    graph = import_torchscript(traced)
    assert graph.inputs == ["image", "scale"]
    assert [graph.tensors[i].shape for i in graph.inputs] == [(1, 3, 4, 4), (1, 3, 1, 1)]
    assert graph.outputs == ["output0", "output1", "output2"]  # nested tuples are flattened
    renamed = import_torchscript(traced, input_names=["a", "b"])
    assert renamed.inputs == ["a", "b"]


def test_input_info_gives_names_shapes_and_another_size():
    traced = _traced(TwoInputs(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 1, 1))
    compiled = rblnc.compile_from_torchscript(
        traced, input_info=[("img", [2, 3, 6, 6], np.float32), ("s", [1, 3, 1, 1], "float32")], dtype="fp32")
    assert compiled.input_names == ["img", "s"]
    image, scale = np.random.default_rng(0).random((2, 3, 6, 6), np.float32), np.full((1, 3, 1, 1), 3, np.float32)
    outputs = _run(compiled, image, scale)
    np.testing.assert_allclose(outputs[0], image * 3, rtol=1e-6)
    np.testing.assert_allclose(outputs[1], image.mean((2, 3)), rtol=1e-5)


def test_input_info_of_the_wrong_length_names_the_arguments():
    traced = _traced(TwoInputs(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 1, 1))
    with pytest.raises(ModelImportError, match=r"input_info has 1 entries, but forward takes 2 tensor argument\(s\): "
                                               r"image, scale"):
        import_torchscript(traced, [("x", [1, 3, 4, 4], "float32")])


def test_input_info_dtype_must_match_the_trace():
    traced = _traced(TwoInputs(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 1, 1))
    with pytest.raises(ModelImportError, match="input 'a' was traced as float32, input_info says float16"):
        import_torchscript(traced, [("a", [1, 3, 4, 4], "float16"), ("b", [1, 3, 1, 1], "float32")])


def test_input_names_that_disagree_with_input_info_are_refused():
    traced = _traced(TwoInputs(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 1, 1))
    with pytest.raises(ModelImportError, match="disagree"):
        import_torchscript(traced, [("a", [1, 3, 4, 4], "float32"), ("b", [1, 3, 1, 1], "float32")], ["x", "y"])


def test_scripted_module_without_input_info_says_how_to_give_it():
    with pytest.raises(DynamicShapeError) as caught:
        import_torchscript(torch.jit.script(BranchOnData()))
    message = str(caught.value)
    assert "input_info=[('x', [1, 3, 224, 224], 'float32')]" in message and "--input x:1x3x224x224:float32" in message


def test_saved_module_loads_from_a_path_and_keeps_its_numbers(tmp_path):
    model = TwoBlocks().eval()
    _traced(model, torch.rand(2, 4)).save(str(tmp_path / "blocks.pt"))
    compiled = rblnc.compile_from_torchscript(str(tmp_path / "blocks.pt"), input_info=[("x", [3, 4], "float32")],
                                              dtype="fp32")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(compiled, x), expected, rtol=1e-5, atol=1e-6)


def test_outputs_that_are_inputs_or_constants_still_come_out():
    class PassThrough(nn.Module):
        def forward(self, x):
            doubled = x * 2
            return x, torch.ones(2), x, doubled, doubled + 1, doubled

    compiled = rblnc.compile_from_torchscript(_traced(PassThrough(), torch.rand(2)), dtype="fp32")
    assert compiled.output_names == [f"output{i}" for i in range(6)]
    x = np.array([1.5, -2.0], np.float32)
    first, constant, again, doubled, plus_one, doubled_again = _run(compiled, x)
    np.testing.assert_array_equal(first, x)
    np.testing.assert_array_equal(constant, np.ones(2, np.float32))
    np.testing.assert_array_equal(again, x)
    np.testing.assert_array_equal(doubled, 2 * x)
    np.testing.assert_array_equal(plus_one, 2 * x + 1)
    np.testing.assert_array_equal(doubled_again, 2 * x)


def test_training_mode_module_is_compiled_for_inference_and_left_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    traced = _traced(model, torch.rand(1, 3, 6, 6))
    traced.train()
    compiled = rblnc.compile_from_torchscript(traced, dtype="fp32")
    assert traced.training
    x = np.random.default_rng(0).random((1, 3, 6, 6), np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(compiled, x), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad arguments


def test_plain_module_is_pointed_to_compile_from_torch():
    with pytest.raises(ModelImportError, match=r"plain nn.Module.*compile_from_torch"):
        rblnc.compile_from_torchscript(TwoBlocks(), dtype="fp32")


def test_compile_from_torch_traces_for_the_user():
    model = TwoBlocks().eval()
    compiled = rblnc.compile_from_torch(model, [("features", [5, 4], "float32")], dtype="fp32")
    assert compiled.input_names == ["features"]
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(compiled, x), expected, rtol=1e-5, atol=1e-6)
    assert not model.training
    with pytest.raises(ModelImportError, match=r"tracing needs the input shapes"):
        rblnc.compile_from_torch(model, [], dtype="fp32")
    with pytest.raises(ModelImportError, match=r"TwoBlocks: torch.jit.trace failed"):
        rblnc.compile_from_torch(model, [("x", [5, 3], "float32")], dtype="fp32")


def test_files_that_are_not_torchscript_are_refused(tmp_path):
    with pytest.raises(ModelImportError, match="no such file"):
        import_torchscript(tmp_path / "missing.pt")
    torch.save(TwoBlocks().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelImportError, match=r"weights.pt: not a TorchScript module .*torch.jit.trace"):
        import_torchscript(tmp_path / "weights.pt")
    with pytest.raises(TypeError, match="unknown option"):
        rblnc.compile_from_torchscript(tmp_path / "weights.pt", precision="fp32")


# ----------------------------------------------------------------------------- docs


def test_supported_ops_doc_is_current():
    """Regenerate with: python -m rblnc.importers.torchscript > docs/torch_ops.md"""
    assert DOCS.read_text() == supported_ops_markdown()


# ----------------------------------------------------------------------------- constant arguments


class SampleRateFrontEnd(nn.Module):
    """forward(x, sr: int) branching on the sample rate, as silero-vad's does."""

    def forward(self, x, sr: int):
        if sr == 16000:
            return torch.tanh(x[:, ::2]) * 2.0
        return torch.sigmoid(x)


def test_non_tensor_argument_without_a_value_names_constant_args():
    with pytest.raises(ModelImportError, match=r"forward argument 'sr' is a int.*constant_args=\{'sr': \.\.\.\} \(--const sr=VALUE\)"):
        import_torchscript(torch.jit.script(SampleRateFrontEnd()), [("x", [1, 64], "float32")])


@pytest.mark.parametrize("sr", [16000, 8000])
def test_constant_args_bind_a_scripted_int_argument_and_fold_its_branch(sr):
    model = SampleRateFrontEnd()
    x = torch.rand(1, 64)
    compiled = rblnc.compile_from_torchscript(torch.jit.script(model), input_info=[("x", [1, 64], "float32")],
                                              constant_args={"sr": sr}, dtype="fp32")
    assert compiled.input_names == ["x"]
    np.testing.assert_allclose(_run(compiled, x.numpy()), model(x, sr).numpy(), rtol=1e-6, atol=1e-6)


def test_constant_args_for_compile_from_torch_are_passed_when_tracing():
    model = SampleRateFrontEnd()
    x = torch.rand(1, 64)
    compiled = rblnc.compile_from_torch(model, [("x", [1, 64], "float32")], constant_args={"sr": 16000}, dtype="fp32")
    np.testing.assert_allclose(_run(compiled, x.numpy()), model(x, 16000).numpy(), rtol=1e-6, atol=1e-6)


def test_constant_args_errors_name_the_argument():
    scripted = torch.jit.script(SampleRateFrontEnd())
    with pytest.raises(ModelImportError, match=r"constant_args names 'rate', but forward's arguments are 'x', 'sr'"):
        import_torchscript(scripted, [("x", [1, 64], "float32")], constant_args={"rate": 16000})
    with pytest.raises(ModelImportError, match=r"constant_args\['sr'\] is '16k', but forward's 'sr' is a int"):
        import_torchscript(scripted, [("x", [1, 64], "float32")], constant_args={"sr": "16k"})
    with pytest.raises(ModelImportError, match=r"constant_args names 'rate', but forward's arguments are 'x', 'sr'"):
        rblnc.compile_from_torch(SampleRateFrontEnd(), [("x", [1, 64], "float32")], constant_args={"rate": 1})
