"""The memory plan: no two live tensors share bytes, in place where legal, spills, out of memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import conv_relu_model, make_onnx
from onnx import helper

import rblnc
from rblnc import zoo
from rblnc.errors import DeviceMemoryError
from rblnc.format.artifact import CommandKind, MemoryRegion, TensorKind
from rblnc.lower.memory_plan import INPLACE_OPS, RELOAD, SPILL, VIEW_OPS, aligned
from rblnc.target import load_target


def small_target(tmp_path: Path, sram: int, dram: int) -> str:
    spec = json.loads(json.dumps({
        "name": "tiny",
        "memory": {"sram_bytes": sram, "dram_bytes": dram, "dram_bandwidth": 1e10, "sram_bandwidth": 1e11},
        "host_link": {"bandwidth": 1e9, "latency_ns": 1000},
        "compute": {"command_overhead_ns": 100, "efficiency": 0.5,
                    "peak_flops": {"fp32": 1e12, "fp16": 4e12, "bf16": 4e12}},
        "ops": {"supported": list(load_target().supported_ops)},
    }))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    return str(path)


def check_plan(artifact, sram_capacity: int) -> None:
    """Every tensor fits its region; tensors live at the same time never share bytes, except an
    output that takes a dying input's bytes at an in-place op or a view."""
    for partition in artifact.partitions:
        program = partition.npu_program
        if program is None:
            continue
        tensors, commands = program.tensors, program.commands
        first, last = {}, {}
        for k, command in enumerate(commands):
            for i in command.outputs:
                first.setdefault(i, k)
                last[i] = max(last.get(i, k), k)
            for i in command.inputs:
                if i >= 0:
                    first.setdefault(i, -1 if tensors[i].kind == TensorKind.PROGRAM_INPUT else k)
                    last[i] = k
        for i, t in enumerate(tensors):
            if t.kind == TensorKind.PROGRAM_OUTPUT:
                last[i] = len(commands)
            if t.region == MemoryRegion.SRAM:
                assert t.kind == TensorKind.ACTIVATION and t.offset + t.size <= sram_capacity
        assert program.peak_sram_bytes <= sram_capacity
        live = [i for i, t in enumerate(tensors) if t.kind != TensorKind.CONSTANT and i in first]
        for a in live:
            for b in live:
                ta, tb = tensors[a], tensors[b]
                if a >= b or ta.region != tb.region:
                    continue
                if ta.offset >= tb.offset + aligned(tb.size) or tb.offset >= ta.offset + aligned(ta.size):
                    continue  # disjoint bytes
                if last[a] < first[b] or last[b] < first[a]:
                    continue  # disjoint lifetimes
                handoff = last[a] == first[b] and commands[first[b]].op_type in INPLACE_OPS | VIEW_OPS
                handoff |= last[b] == first[a] and commands[first[a]].op_type in INPLACE_OPS | VIEW_OPS
                assert handoff, f"{ta.name} and {tb.name} share bytes while both live"
        for command in commands:
            if command.kind == CommandKind.DMA:
                source, target = tensors[command.inputs[0]], tensors[command.outputs[0]]
                assert (source.region, target.region) == ((MemoryRegion.SRAM, MemoryRegion.DRAM) if command.op_type == SPILL
                                                          else (MemoryRegion.DRAM, MemoryRegion.SRAM))
                assert command.op_type in (SPILL, RELOAD) and source.size == target.size


@pytest.fixture(scope="module")
def unet_small(tmp_path_factory):
    return zoo.export_onnx("unet", tmp_path_factory.mktemp("unet") / "unet.onnx", small=True)


def test_default_target_keeps_activations_in_sram_and_reuses_bytes(unet_small):
    artifact = rblnc.compile_from_onnx(str(unet_small), dtype="bf16").artifact
    check_plan(artifact, load_target().sram_bytes)
    program = artifact.partitions[0].npu_program
    activations = [t for t in program.tensors if t.kind == TensorKind.ACTIVATION]
    assert all(t.region == MemoryRegion.SRAM for t in activations)
    assert not any(c.kind == CommandKind.DMA for c in program.commands)
    # Liveness reuse: the peak is well below the sum of all activations.
    assert program.peak_sram_bytes < 0.5 * sum(aligned(t.size) for t in activations)
    assert program.weight_bytes == sum(t.data.nbytes for t in program.tensors if t.kind == TensorKind.CONSTANT)


def test_elementwise_ops_write_over_a_dying_input():
    # x -> Conv -> c -> Relu -> r -> Add(r, c2) ; c2 = Conv(x): the Relu takes c's bytes, the Add one input's.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = make_onnx(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["r", "c2"], ["s"]),
         helper.make_node("Sigmoid", ["s"], ["y"])],
        [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], [("w", w)],
    )
    artifact = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=0).artifact  # the commands as written
    check_plan(artifact, load_target().sram_bytes)
    tensors = {t.name: t for t in artifact.partitions[0].npu_program.tensors}
    assert tensors["r"].offset == tensors["c"].offset
    assert tensors["s"].offset in (tensors["r"].offset, tensors["c2"].offset)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(rblnc.Runtime(artifact).run(x), expected, rtol=1e-5, atol=1e-6)


def test_an_input_still_needed_later_is_not_overwritten():
    model = make_onnx(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["y"])],
        [("x", [2, 8])], [("y", [2, 8])],
    )
    artifact = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=0).artifact
    tensors = {t.name: t for t in artifact.partitions[0].npu_program.tensors}
    assert tensors["b"].offset != tensors["a"].offset  # a is read again by the Add
    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(2, 8)
    a = np.maximum(x, 0)
    np.testing.assert_allclose(rblnc.Runtime(artifact).run(x), a + 1 / (1 + np.exp(-a)), rtol=1e-6)


def test_small_sram_spills_with_dma_and_computes_the_same_values(tmp_path, unet_small, monkeypatch):
    # Bit-equal results need one kernel per command: the torch engine. The onnxruntime engine
    # optimises the spilled and unspilled programs differently (another accumulation order).
    monkeypatch.setenv("RBLNC_EMULATOR_ENGINE", "torch")
    target = small_target(tmp_path, sram=96 * 1024, dram=64 << 20)
    spilled = rblnc.compile_from_onnx(str(unet_small), dtype="bf16", target=target).artifact
    check_plan(spilled, 96 * 1024)
    program = spilled.partitions[0].npu_program
    kinds = [c.op_type for c in program.commands if c.kind == CommandKind.DMA]
    assert kinds.count(SPILL) > 0 and kinds.count(RELOAD) >= kinds.count(SPILL)
    assert any(t.region == MemoryRegion.DRAM for t in program.tensors if t.kind == TensorKind.ACTIVATION)
    roomy = rblnc.compile_from_onnx(str(unet_small), dtype="bf16").artifact
    (x,) = zoo.get("unet").example_inputs(small=True)
    # Where a value lives changes its cost, never its value.
    assert np.array_equal(rblnc.Runtime(spilled).run(x), rblnc.Runtime(roomy).run(x))
    spill_time = sum(c.est_time_ns for c in program.commands if c.kind == CommandKind.DMA)
    assert spill_time > 0 and spilled.partitions[0].est_time_ns > roomy.partitions[0].est_time_ns


def test_a_model_larger_than_the_device_is_a_compile_error_saying_by_how_much(tmp_path):
    model = conv_relu_model(channels=64, size=32)  # its 256 KiB output alone exceeds the 64 KiB of DRAM
    target = small_target(tmp_path, sram=4096, dram=64 * 1024)
    with pytest.raises(DeviceMemoryError) as info:
        rblnc.compile_from_onnx(model, dtype="fp32", target=target)
    error = info.value
    assert error.needed > error.available == 64 * 1024 and error.shortfall == error.needed - error.available
    assert "does not fit the device memory of tiny" in str(error)
    assert f"{error.shortfall / 2**20:.2f} MiB short" in str(error)
    assert isinstance(error, rblnc.CompileError)


def test_edge_preset_spills_in_inspect_or_fails_with_the_clear_message(tmp_path):
    """The 1 MiB SRAM / 64 MiB DRAM preset: a ResNet-50 in bf16 fits with spills, in fp32 it does not."""
    path = zoo.export_onnx("resnet50", tmp_path / "r50.onnx", small=True)
    cli = [sys.executable, "-m", "rblnc.cli"]
    ok = subprocess.run(cli + ["compile", str(path), "-o", str(tmp_path / "r.rbln"), "--target", "edge-tiny"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(subprocess.run(cli + ["inspect", str(tmp_path / "r.rbln"), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    memory = report["memory"]
    assert memory["dram_capacity"] == 64 << 20 and memory["sram_capacity"] == 1 << 20
    assert memory["peak_sram_bytes"] <= 1 << 20 and memory["weight_bytes"] > 40 << 20
    text = subprocess.run(cli + ["inspect", str(tmp_path / "r.rbln")], capture_output=True, text=True).stdout
    assert f"spills {memory['spills']} (" in text and "SRAM peak activations" in text
    failed = subprocess.run(cli + ["compile", str(path), "-o", str(tmp_path / "f.rbln"), "--target", "edge-tiny",
                                   "--dtype", "fp32"], capture_output=True, text=True)
    assert failed.returncode == 1 and not (tmp_path / "f.rbln").exists()
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the model does not fit the device memory of edge-tiny") and "MiB short" in last
