"""The emulator's profile: time per command and op type beside the modelled time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import mixed_model

import rblnc
from rblnc.format.artifact import CommandKind, Device


@pytest.fixture(scope="module")
def compiled():
    return rblnc.compile_from_onnx(mixed_model(), dtype="fp32")


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_profile_lists_every_command_of_the_program_with_its_modelled_time(compiled, monkeypatch):
    runtime = compiled.create_runtime(profile=True)
    default = rblnc.Runtime(compiled).run(_x())
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "torch")
    expected = rblnc.Runtime(compiled).run(_x())
    for seed in range(3):
        y = runtime.run(_x(seed))
    # Profiled, a program runs command by command on torch (rblnc/emulator/npu.py): the torch
    # engine's result exactly, the default engine's within fp32 accumulation-order noise.
    profiled = runtime.run(_x())
    np.testing.assert_array_equal(profiled, expected)
    np.testing.assert_allclose(profiled, default, rtol=1e-5, atol=1e-6)
    profile = runtime.profile()
    expected_rows = []  # (partition, name, op type, modelled ns), in the order of the partitions
    for partition in compiled.artifact.partitions:
        if partition.device == Device.HOST:
            expected_rows.append((partition.name, partition.name, "host partition (onnxruntime)",
                                  partition.est_time_ns))
            continue
        for command in partition.npu_program.commands:
            qualified = f"{command.domain}::{command.op_type}" if command.domain else command.op_type
            if command.kind == CommandKind.DMA:
                qualified = f"DMA {command.op_type}"
            expected_rows.append((partition.name, command.name, qualified, command.est_time_ns))
    assert [(r.partition, r.name, r.op_type, r.est_ns) for r in profile.rows] == expected_rows
    assert all(row.calls == 4 and row.seconds > 0 for row in profile.rows)
    assert set(profile.runs.values()) == {4}
    counts = {}
    for _, _, op_type, _ in expected_rows:
        counts[op_type] = counts.get(op_type, 0) + 1
    assert {e["op_type"]: e["commands"] for e in profile.per_op_type()} == counts
    table = profile.table()
    assert "emulator profile: 4 run(s)" in table
    for op_type in counts:
        assert op_type in table
    profile.reset()
    assert all(row.calls == 0 and row.seconds == 0 for row in profile.rows)
    assert y.shape == (1, 2, 8, 8)


def test_a_command_applied_by_the_convolution_before_it_is_listed_as_such():
    from onnx import helper

    from conftest import make_onnx

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c"], ["y"])],
                      [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], [("w", w)])
    runtime = rblnc.compile_from_onnx(model, dtype="bf16", opt_level=0).create_runtime(profile=True)
    runtime.run(_x())
    rows = {row.op_type: row for row in runtime.profile().rows}
    assert rows["Relu"].applied_by == rows["Conv"].name
    assert "1 applied by the command before" in runtime.profile().table()


def test_a_runtime_without_profile_says_so(compiled):
    with pytest.raises(RuntimeError, match="created without profile=True"):
        compiled.create_runtime().profile()


def test_async_runtime_profiles_too(compiled):
    with compiled.create_async_runtime(profile=True) as runtime:
        for _ in range(3):
            runtime.run(_x()).wait()
        assert set(runtime.profile().runs.values()) == {3}


def test_cli_run_profile_prints_the_table(compiled, tmp_path):
    compiled.save(tmp_path / "m.rbln")
    np.savez(tmp_path / "in.npz", x=_x())
    result = subprocess.run([sys.executable, "-m", "rblnc.cli", "run", str(tmp_path / "m.rbln"), str(tmp_path / "in.npz"),
                             "--profile", "--repeat", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "emulator profile: 2 run(s)" in result.stdout
    assert "slowest commands" in result.stdout and "Conv" in result.stdout
    assert "host partition (onnxruntime)" in result.stdout
