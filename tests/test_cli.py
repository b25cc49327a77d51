"""The command line: compile, inspect (text and JSON), run, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import LIGHT_DIR, conv_relu_model, make_onnx, mixed_model
from onnx import helper


def rblnc(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "rblnc.cli", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"rblnc {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    onnx.save(mixed_model(), folder / "mixed.onnx")
    rblnc("compile", folder / "mixed.onnx", "-o", folder / "mixed.rbln", "--dtype", "fp32")
    return folder


def test_inspect_json_has_the_documented_keys(mixed):
    report = json.loads(rblnc("inspect", mixed / "mixed.rbln", "--json").stdout)
    assert report["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32", "layout": ""}]
    assert report["outputs"][0]["name"] == "y" and report["outputs"][0]["shape"] == [1, 2, 8, 8]
    devices = [p["device"] for p in report["partitions"]]
    assert devices == ["npu", "host", "npu"]
    host_ops = report["partitions"][1]["ops"]
    assert host_ops == [{"name": "Erf_1", "op_type": "Erf", "est_saving_ns": 0.0,
                         "reason": "op type Erf is not supported by the NPU (rbln-ca12); it runs on the host "
                                   "(the target spec's [ops] supported lists what rbln-ca12 runs)"}]
    assert [o["op_type"] for o in report["partitions"][0]["ops"]] == ["Conv"]
    assert all({"name", "op_type"} <= set(o) for p in report["partitions"] for o in p["ops"])


def test_inspect_text(mixed):
    text = rblnc("inspect", mixed / "mixed.rbln").stdout
    assert "partitions (3)" in text and "host fallbacks (1)" in text and "Erf" in text


def test_run_writes_outputs_matching_the_runtime(mixed):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(mixed / "in.npz", x=x)
    result = rblnc("run", mixed / "mixed.rbln", mixed / "in.npz", "-o", mixed / "out.npz")
    assert "y: float32[1x2x8x8]" in result.stdout
    import rblnc as lib

    expected = lib.Runtime(mixed / "mixed.rbln").run(x)
    with np.load(mixed / "out.npz") as out:
        np.testing.assert_array_equal(out["y"], expected)


def test_run_with_wrong_input_name_is_one_line_exit_1(mixed):
    np.savez(mixed / "bad.npz", image=np.zeros((1, 3, 8, 8), np.float32))
    result = rblnc("run", mixed / "mixed.rbln", mixed / "bad.npz", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "arrays 'image' match no input; the model's inputs are 'x'" in result.stderr


def test_run_with_wrong_shape(mixed):
    np.savez(mixed / "shape.npz", x=np.zeros((1, 3, 8, 7), np.float32))
    result = rblnc("run", mixed / "mixed.rbln", mixed / "shape.npz", check=False)
    assert result.returncode == 1
    assert "input 'x': expected shape [1, 3, 8, 8], got [1, 3, 8, 7]" in result.stderr


def test_compile_with_input_option_and_pass_stats(tmp_path):
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", ["n", 4])], [("y", ["n", 4])])
    onnx.save(model, tmp_path / "dyn.onnx")
    failed = rblnc("compile", tmp_path / "dyn.onnx", "-o", tmp_path / "dyn.rbln", check=False)
    assert failed.returncode == 1 and "dynamic dimension 'n'" in failed.stderr
    assert not (tmp_path / "dyn.rbln").exists()
    ok = rblnc("compile", tmp_path / "dyn.onnx", "-o", tmp_path / "dyn.rbln", "--input", "x:3x4:float32", "--pass-stats")
    assert "fold_constants" in ok.stdout
    report = json.loads(rblnc("inspect", tmp_path / "dyn.rbln", "--json").stdout)
    assert report["inputs"][0]["shape"] == [3, 4]


def test_compile_light_model_from_the_command_line(tmp_path):
    rblnc("compile", LIGHT_DIR / "light_squeezenet.onnx", "-o", tmp_path / "sq.rbln")
    report = json.loads(rblnc("inspect", tmp_path / "sq.rbln", "--json").stdout)
    assert report["nodes_before_passes"] > report["nodes_after_passes"]
    assert report["constant_bytes"] > 1_000_000


def test_unknown_model_kind_is_a_usage_error(tmp_path):
    (tmp_path / "model.xyz").write_text("?")
    result = rblnc("compile", tmp_path / "model.xyz", "-o", tmp_path / "m.rbln", check=False)
    assert result.returncode == 2 and "cannot tell the model's framework" in result.stderr


def test_conv_model_compiles_with_dtype_flag(tmp_path):
    onnx.save(conv_relu_model(), tmp_path / "c.onnx")
    rblnc("compile", tmp_path / "c.onnx", "-o", tmp_path / "c.rbln", "--dtype", "fp32")
    bad = rblnc("compile", tmp_path / "c.onnx", "-o", tmp_path / "d.rbln", "--dtype", "int4", check=False)
    assert bad.returncode == 1 and "dtype 'int4' is unknown" in bad.stderr


def test_compile_into_a_missing_folder_is_one_line(tmp_path):
    onnx.save(conv_relu_model(), tmp_path / "m.onnx")
    result = rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "no" / "such" / "m.rbln", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: cannot write {tmp_path}/no/such/m.rbln: the folder {tmp_path}/no/such does not exist"


def test_compile_with_const_binds_an_input(tmp_path):
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [1, 4])])
    model = make_onnx([helper.make_node("Equal", ["sr", "rate"], ["cond"]),
                       helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
                      [("x", [1, 4]), ("sr", [], onnx.TensorProto.INT64)], [("y", [1, 4])], [("rate", np.int64(16000))])
    onnx.save(model, tmp_path / "m.onnx")
    rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.rbln", "--const", "sr=16000", "--dtype", "fp32")
    report = json.loads(rblnc("inspect", tmp_path / "m.rbln", "--json").stdout)
    assert [i["name"] for i in report["inputs"]] == ["x"]
    x = np.array([[1, -2, 3, -4]], np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rblnc("run", tmp_path / "m.rbln", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["y"], np.maximum(x, 0))
    bad = rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.rbln", "--const", "sr", check=False)
    assert bad.returncode == 2 and "expected NAME=VALUE" in bad.stderr
