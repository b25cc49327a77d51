"""Bad inputs at every door: interrupted writes, malformed ONNX and input_info, files that are
not TorchScript, NaN/Inf inputs, non-contiguous and wrong-dtype arrays. Each either works
correctly (checked against onnxruntime) or fails with rblnc's own error in one line naming the
problem and where."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rblnc
from conftest import conv_relu_model, mixed_model
from rblnc.errors import (
    ExecutionError, InputDtypeError, InputShapeError, ModelImportError, NonFiniteWarning, OutputArrayError,
    RBLNError, UnsupportedOpError,
)
from rblnc.format import writer
from rblnc.format.reader import load_artifact


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rblnc.cli", *args], capture_output=True, text=True)


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("  ") and "compiling" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
# Writing: an interrupted save leaves the old file or nothing, and no temporary


@pytest.fixture(scope="module")
def compiled():
    return rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32")


def _interrupt_after(nbytes: int, error: BaseException):
    """A writer._write that writes `nbytes` for real, then raises `error` (as Ctrl-C would)."""
    real_write = writer._write

    def write(f, flatbuffer, blobs):
        class Cut:
            written = 0

            def write(self, data):
                data = bytes(data)
                room = nbytes - Cut.written
                if room <= 0:
                    raise error
                f.write(data[:room])
                Cut.written += min(len(data), room)
                if len(data) > room:
                    raise error

        real_write(Cut(), flatbuffer, blobs)
    return write


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device"), MemoryError()])
@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_save_never_leaves_a_partial_file(tmp_path, monkeypatch, compiled, error, existing):
    target = tmp_path / "model.rbln"
    if existing:
        target.write_bytes(b"the previous model")
    monkeypatch.setattr(writer, "_write", _interrupt_after(1000, error))
    with pytest.raises(type(error)):
        compiled.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model.rbln"] if existing else [])
    if existing:
        assert target.read_bytes() == b"the previous model"
    monkeypatch.undo()
    compiled.save(target)  # and the next save works
    assert load_artifact(target).inputs[0].name == "x"


@pytest.mark.parametrize("stage", ["fsync", "replace"])
def test_save_failing_at_fsync_or_rename(tmp_path, monkeypatch, compiled, stage):
    target = tmp_path / "model.rbln"
    target.write_bytes(b"the previous model")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.os, stage, fail)
    with pytest.raises(KeyboardInterrupt):
        compiled.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.rbln"]
    assert target.read_bytes() == b"the previous model"


def test_cli_compile_killed_mid_write_leaves_nothing(tmp_path):
    """A real process killed by SIGKILL while writing: only the temporary can be left, never a
    partial file under the target name."""
    model = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(channels=64, size=64), model)
    script = (
        "import os, sys, signal\n"
        "from rblnc.format import writer\n"
        "real = writer._write\n"
        "def write(f, fb, blobs):\n"
        "    f.write(fb[:100]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "writer._write = write\n"
        "from rblnc.cli import main\n"
        f"sys.argv = ['rblnc', 'compile', {str(model)!r}, '-o', {str(tmp_path / 'm.rbln')!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -9
    assert not (tmp_path / "m.rbln").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("m.onnx",)]
    assert all(name.startswith(".m.rbln.") and name.endswith(".tmp") for name in leftovers), leftovers


# --------------------------------------------------------------------------------------------
# Malformed ONNX and input_info


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, n) for n, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _with_opset(model, domain: str):
    model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def _bytes(model) -> bytes:
    return model.SerializeToString()


GOOD = _bytes(conv_relu_model())

MALFORMED_ONNX = {
    "garbage bytes": (b"\x00\xffgarbage" * 10, ModelImportError, "not a readable ONNX model (Error parsing"),
    "empty file": (b"", ModelImportError, "not an ONNX model (it has no graph)"),
    "truncated protobuf": (GOOD[: len(GOOD) // 2], ModelImportError, "not a readable ONNX model"),
    "text file": (b"this is not a model\n", ModelImportError, "not a readable ONNX model"),
    "undefined tensor": (
        _bytes(_model([helper.make_node("Relu", ["nowhere"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])),
        ModelImportError, "reads 'nowhere', which no input, initializer or earlier node defines"),
    "graph not sorted": (
        _bytes(_model([helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["a"])],
                      [("x", [1, 4])], [("y", [1, 4])])),
        ModelImportError, "a later node produces (the graph is not topologically sorted or has a cycle)"),
    "cycle": (
        _bytes(_model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                      [("x", [1, 4])], [("b", [1, 4])])),
        ModelImportError, "reads 'b', which a later node produces"),
    "value defined twice": (
        _bytes(_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])],
                      [("x", [1, 4])], [("y", [1, 4])])),
        ModelImportError, "defines 'y', which is already defined"),
    "undefined graph output": (
        _bytes(_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("z", [1, 4])])),
        ModelImportError, "graph output 'z' is never defined"),
    "unknown operator": (
        _bytes(_model([helper.make_node("Frobnicate", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])),
        UnsupportedOpError, "'Frobnicate' is not an ONNX operator"),
    # an op outside the standard that neither ONNX nor onnxruntime knows, with no value_info
    "custom op without types": (
        _bytes(_with_opset(_model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example"),
                                   helper.make_node("Relu", ["y"], ["z"])],
                                  [("x", [1, 4])], [("z", [1, 4])]), "com.example")),
        ModelImportError, "(com.example::Frobnicate): type of 'y' unknown: ONNX has no shape rule for "
                          "this op outside the standard and the model gives no value_info for its outputs"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ONNX))
def test_malformed_onnx_api(tmp_path, case):
    data, error, fragment = MALFORMED_ONNX[case]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(error) as info:
        rblnc.compile_from_onnx(path, dtype="fp32")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message, message
    assert isinstance(info.value, ValueError)
    with pytest.raises(error):  # from bytes too
        rblnc.compile_from_onnx(data, dtype="fp32")


@pytest.mark.parametrize("case", ["garbage bytes", "cycle", "unknown operator"])
def test_malformed_onnx_cli(tmp_path, case):
    data, _, fragment = MALFORMED_ONNX[case]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    result = _cli("compile", str(path), "-o", str(tmp_path / "out.rbln"))
    _one_line_error(result, str(path), fragment)
    assert not (tmp_path / "out.rbln").exists()


def test_onnx_path_that_is_a_directory(tmp_path):
    with pytest.raises(ModelImportError, match="is a directory, not an ONNX file"):
        rblnc.compile_from_onnx(tmp_path, dtype="fp32")


def test_inconsistent_weights_fail_at_run_naming_the_command():
    """ONNX's own shape inference does not check Conv channels against the weights (nor does
    onnxruntime at session creation); the emulator says which command and why."""
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", [1, 3, 8, 8])], [("y", None)],
                   [("w", np.ones((4, 5, 3, 3), np.float32))])
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime()
    with pytest.raises(ExecutionError, match=r"command Conv_0 \(Conv\) failed: .*channels"):
        runtime.run(np.ones((1, 3, 8, 8), np.float32))


BAD_INPUT_INFO = {
    "unknown name": ([("nope", [1, 3, 8, 8], np.float32)], "input_info names 'nope', but the model's inputs are 'x'"),
    "wrong rank": ([("x", [1, 3, 8], np.float32)], "has shape [1, 3, 8, 8] in the model, input_info gives [1, 3, 8]"),
    "wrong dims": ([("x", [1, 3, 9, 9], np.float32)], "input_info gives [1, 3, 9, 9]"),
    "wrong dtype": ([("x", [1, 3, 8, 8], np.int64)], "input 'x' is float32 in the model, input_info says int64"),
    "negative dim": ([("x", [1, -3, 8, 8], np.float32)], "negative dimension"),
    "two fields": ([("x", [1, 3, 8, 8])], "must be (name, shape, dtype)"),
    "shape not ints": ([("x", "1x3", np.float32)], "shape must be a list of integers"),
    "unknown dtype": ([("x", [1, 3, 8, 8], "floaty")], "unknown element type 'floaty'"),
    "not a list": (5, "input_info must be a list of (name, shape, dtype), got int"),
    "a bare string": ("x:1x3x8x8", "input_info must be a list of (name, shape, dtype), got str"),
    "named twice": ([("x", [1, 3, 8, 8], np.float32)] * 2, "names an input twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_INFO))
def test_wrong_input_info(case):
    input_info, fragment = BAD_INPUT_INFO[case]
    with pytest.raises(ModelImportError) as info:
        rblnc.compile_from_onnx(conv_relu_model(), input_info, dtype="fp32")
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("option, fragment", [
    ("y:1x4x8x8", "input_info names 'y'"),
    ("x:1x3x8", "input_info gives [1, 3, 8]"),
    ("x:1xAx8x8:float32", "expected NAME:DIMxDIM"),
])
def test_wrong_input_option_cli(tmp_path, option, fragment):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    _one_line_error(_cli("compile", str(path), "-o", str(tmp_path / "m.rbln"), "--input", option), fragment)


# --------------------------------------------------------------------------------------------
# TorchScript files that are not one: refused in one line, and nothing in them is executed


class _RunsACommand:
    """Unpickling this would run a shell command that creates the file `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _traced(tmp_path: Path) -> Path:
    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    path = tmp_path / "good.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.trace
        torch.jit.trace(Double(), torch.zeros(1, 4)).save(str(path))
    return path


def _rewrite_archive(source: Path, target: Path, replace) -> Path:
    """A copy of a TorchScript zip archive with some members' bytes replaced."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, replace(name, src.read(name)))
    return target


def _not_torchscript(kind: str, tmp_path: Path, sentinel: Path) -> Path:
    """A file named .pt that is not a TorchScript module, of the given kind."""
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("hello, this is not a model\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/data.pkl", b"not a pickle")
    elif kind == "state_dict":
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "truncated":
        data = _traced(tmp_path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled_command":  # torch.save of an object that runs a command when unpickled
        torch.save(_RunsACommand(sentinel), path)
    elif kind == "archive_with_command":  # a real TorchScript archive whose pickles run a command
        import pickle

        evil = pickle.dumps(_RunsACommand(sentinel), protocol=2)
        _rewrite_archive(_traced(tmp_path), path, lambda name, data: evil if name.endswith(".pkl") else data)
    elif kind == "code_with_command":  # its TorchScript code calls os.system
        forward = b"return torch.mul(x, CONSTANTS.c0)"
        rewritten = []

        def replace(name, data):
            if "/code/__torch__" in name and name.endswith(".py") and forward in data:
                rewritten.append(name)
                return data.replace(forward, f"__import__('os').system('touch {sentinel}')\n    return x".encode())
            return data
        _rewrite_archive(_traced(tmp_path), path, replace)
        assert len(rewritten) == 1, "the traced module's code is not where this test expects it"
    return path


NOT_TORCHSCRIPT = ["text", "random", "empty", "zip", "state_dict", "tensor", "truncated", "pickled_command",
                   "archive_with_command", "code_with_command"]
CLI_KINDS = {"text", "state_dict", "archive_with_command"}


@pytest.mark.parametrize("kind", NOT_TORCHSCRIPT)
def test_a_file_that_is_not_torchscript_is_refused_in_one_line(tmp_path, kind):
    sentinel = tmp_path / "command-ran"
    path = _not_torchscript(kind, tmp_path, sentinel)
    with pytest.raises(ModelImportError) as info:
        rblnc.compile_from_torchscript(str(path), input_info=[("x", [1, 4], "float32")], dtype="fp32")
    message = str(info.value)
    assert message.startswith(f"{path}: not a TorchScript module (")
    assert message.endswith("; save one with torch.jit.trace(model, example_inputs).save(path)")
    assert "\n" not in message and info.value.__cause__ is None
    if kind in CLI_KINDS:  # a few through the command line too (each start imports torch: seconds)
        _one_line_error(_cli("compile", str(path), "-o", str(tmp_path / "out.rbln")),
                        f"{path}: not a TorchScript module (")
        assert not (tmp_path / "out.rbln").exists()
    assert not sentinel.exists(), "loading the file ran the command stored in it"


def test_the_good_torchscript_file_those_are_made_from_compiles(tmp_path):
    """The forged files above are refused for what they are, not because the original was bad."""
    path = _traced(tmp_path)
    compiled = rblnc.compile_from_torchscript(str(path), input_info=[("x", [1, 4], "float32")], dtype="fp32")
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(compiled.create_runtime().run(x), x * 2)


# --------------------------------------------------------------------------------------------
# NaN and infinity: they run, and check_finite says where they are


@pytest.fixture(scope="module")
def mixed():
    """NPU -> host (Erf) -> NPU, with onnxruntime on the source model as the reference."""
    model = mixed_model()
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime(check_finite=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return runtime, session


def _with_non_finite() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 2, 3] = np.inf
    x[0, 2, 7, 7] = -np.inf
    return x


def test_non_finite_inputs_run_and_match_onnxruntime(mixed):
    runtime, session = mixed
    x = _with_non_finite()
    with pytest.warns(NonFiniteWarning) as caught:
        y = runtime.run(x)
    (expected,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert np.isnan(expected).any()  # the NaN did propagate, in both
    message = str(caught[0].message)
    assert "input 'x': 1 NaN, 1 +inf, 1 -inf of 192 values (first at index (0, 0, 0, 0))" in message
    assert "output 'y':" in message and "NaN" in message


_ISSUE_4 = pytest.mark.xfail(strict=True, reason=(
    "emulator (issue 4), torch engine: the oneDNN ReLU/ReLU6 post-op fused into a convolution maps NaN "
    "to 0 (onnxruntime and torch.relu keep NaN; bf16 computes in fp32 without AVX-512, so fails alike); "
    "with AVX-512 a lone bf16 Conv also spreads the NaN to 12 positions a channel instead of 9. Remove "
    "the mark once fixed."))


@pytest.mark.parametrize("dtype, engine", [
    pytest.param("fp32", "torch", marks=_ISSUE_4), pytest.param("bf16", "torch", marks=_ISSUE_4),
    ("fp32", "onnxruntime"), ("bf16", "onnxruntime")])
def test_nan_through_conv_relu_stays_nan_as_in_onnxruntime(dtype, engine, monkeypatch):
    """A NaN input must not be turned into finite numbers: Conv -> Relu on onnxruntime gives NaN
    at the 4 channels x 9 positions the NaN reaches (any precision: NaN is NaN)."""
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", engine)
    model = conv_relu_model(seed=3)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    x[0, 0, 3, 3] = np.nan
    (expected,) = session.run(None, {"x": x})
    y = rblnc.compile_from_onnx(model, dtype=dtype, opt_level=0).create_runtime().run(x)
    assert np.isnan(expected).sum() == 4 * 9
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))


def test_non_finite_outputs_from_finite_inputs(conv):
    runtime = rblnc.Runtime(conv.artifact, check_finite=True)
    x = np.full((1, 3, 8, 8), 3e38, np.float32)  # finite, but the convolution overflows
    with pytest.warns(NonFiniteWarning) as caught:
        runtime.run(x)
    message = str(caught[0].message)
    assert "input" not in message and "output 'y':" in message


def test_finite_run_and_check_off_say_nothing(mixed):
    runtime, _ = mixed
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        runtime.run(np.ones((1, 3, 8, 8), np.float32))
        quiet = rblnc.Runtime(runtime.artifact)  # check_finite defaults to off
        quiet.run(_with_non_finite())


def test_check_finite_cli(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(mixed_model(), model)
    artifact = tmp_path / "m.rbln"
    assert _cli("compile", str(model), "-o", str(artifact)).returncode == 0
    np.savez(tmp_path / "in.npz", x=_with_non_finite())
    checked = _cli("run", str(artifact), str(tmp_path / "in.npz"), "--check-finite", "-o", str(tmp_path / "out.npz"))
    assert checked.returncode == 0, checked.stderr
    warning_lines = [line for line in checked.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "input 'x': 1 NaN, 1 +inf, 1 -inf" in warning_lines[0]
    assert (tmp_path / "out.npz").exists()
    plain = _cli("run", str(artifact), str(tmp_path / "in.npz"))
    assert plain.returncode == 0 and "warning" not in plain.stderr


# --------------------------------------------------------------------------------------------
# Array layouts and element types: converted exactly, or refused with a message


@pytest.fixture(scope="module")
def conv():
    model = conv_relu_model(seed=3)
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime()
    return runtime


def _base() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)


LAYOUTS = {
    "transposed view": lambda x: np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
    "strided slice": lambda x: np.repeat(x, 2, axis=3)[..., ::2],
    "negative strides": lambda x: np.ascontiguousarray(x[..., ::-1])[..., ::-1],
    "fortran order": lambda x: np.asfortranarray(x),
    "big endian": lambda x: x.astype(">f4"),
    "unaligned": lambda x: np.frombuffer(b"\0" + x.tobytes(), dtype=np.float32, offset=1).reshape(x.shape),
    "torch permuted": lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2),
    "torch requires_grad": lambda x: torch.from_numpy(x.copy()).requires_grad_(True),
    "masked, nothing masked": lambda x: np.ma.masked_array(x, mask=False),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_give_the_same_result(conv, layout):
    x = _base()
    value = LAYOUTS[layout](x)
    if isinstance(value, np.ndarray) and layout not in ("fortran order", "big endian", "masked, nothing masked"):
        assert not value.flags.c_contiguous or not value.flags.aligned
    np.testing.assert_array_equal(conv.run(value), conv.run(x))


def test_safe_dtype_is_converted_exactly(conv):
    x16 = _base().astype(np.float16)
    np.testing.assert_array_equal(conv.run(x16), conv.run(x16.astype(np.float32)))


@pytest.mark.parametrize("value, got", [
    (_base().astype(np.float64), "got float64 (convert it, e.g. x.astype(np.float32))"),
    (_base().astype(np.int64), "got int64"),
    (_base().astype(np.int32), "got int32"),
    (_base().astype(np.complex64), "got complex64"),
    (_base().tolist(), "got float64"),
    (torch.from_numpy(_base()).double(), "got float64"),
])
def test_unsafe_dtype_is_refused(conv, value, got):
    with pytest.raises(InputDtypeError) as info:
        conv.run(value)
    assert str(info.value).startswith("input 'x': expected float32, ") and got in str(info.value)
    assert isinstance(info.value, TypeError)


def test_masked_values_are_refused(conv):
    x = np.ma.masked_array(_base(), mask=_base() > 1.5)
    with pytest.raises(InputDtypeError, match=r"input 'x': a masked array with \d+ masked value\(s\)"):
        conv.run(x)


def test_dict_given_by_position(conv):
    with pytest.raises(InputDtypeError, match=r"got a dict; pass named inputs as keywords"):
        conv.run({"x": _base()})


@pytest.mark.parametrize("value, expected", [
    (np.ones((1, 3, 8), np.float32), "expected shape [1, 3, 8, 8], got [1, 3, 8]"),
    (np.float32(1.0), "expected shape [1, 3, 8, 8], got []"),
    (np.ones((2, 3, 8, 8), np.float32), "got [2, 3, 8, 8]"),
])
def test_wrong_shapes(conv, value, expected):
    with pytest.raises(InputShapeError) as info:
        conv.run(value)
    assert expected in str(info.value)


def test_out_arrays_non_contiguous_and_read_only(conv):
    x = _base()
    expected = conv.run(x)
    target = np.zeros((1, 4, 8, 8), np.float32, order="F")
    conv.run(x, out=target)
    np.testing.assert_array_equal(target, expected)
    strided = np.zeros((1, 4, 8, 16), np.float32)[..., ::2]
    conv.run(x, out=strided)
    np.testing.assert_array_equal(strided, expected)
    frozen = np.zeros((1, 4, 8, 8), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(OutputArrayError, match="out= for output 'y' is read-only"):
        conv.run(x, out=frozen)
    with pytest.raises(InputShapeError, match="expected float32"):
        conv.run(x, out=np.zeros((1, 4, 8, 8), np.float64))


def test_errors_are_rblnc_errors():
    for error in (InputDtypeError, InputShapeError, OutputArrayError, ModelImportError, UnsupportedOpError):
        assert issubclass(error, RBLNError)
