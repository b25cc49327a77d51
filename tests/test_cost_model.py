"""The cost model: FLOPs per op, the roofline per command, DMA times, and the artifact's fields."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import conv_relu_model, make_onnx, mixed_model
from onnx import helper

import rblnc
from rblnc.cost_model import (
    OpShape, estimate_node, host_node_time_ns, kernel_time_ns, op_flops, runs_on_matrix_engine,
    transfer_time_ns,
)
from rblnc.format.artifact import CommandKind, Device
from rblnc.importers import import_onnx
from rblnc.target import load_target

TARGET = load_target()


def test_convolution_flops_count_every_multiply_add_and_the_bias():
    op = OpShape("Conv", "", {"pads": [1, 1, 1, 1]}, [(1, 3, 8, 8), (4, 3, 3, 3), (4,)], [(1, 4, 8, 8)])
    assert op_flops(op) == 2 * (4 * 8 * 8) * (3 * 3 * 3) + 4 * 8 * 8
    grouped = OpShape("Conv", "", {"group": 4}, [(1, 4, 8, 8), (4, 1, 3, 3), None], [(1, 4, 6, 6)])
    assert op_flops(grouped) == 2 * (4 * 6 * 6) * 9


def test_matrix_product_and_pooling_flops():
    assert op_flops(OpShape("Gemm", "", {"transB": 1}, [(2, 64), (10, 64), (10,)], [(2, 10)])) == 2 * 2 * 10 * 64 + 20
    assert op_flops(OpShape("MatMul", "", {}, [(3, 5, 7), (7, 11)], [(3, 5, 11)])) == 2 * 3 * 5 * 11 * 7
    assert op_flops(OpShape("MaxPool", "", {"kernel_shape": [3, 3]}, [(1, 2, 9, 9)], [(1, 2, 3, 3)])) == 18 * 9
    assert op_flops(OpShape("Reshape", "", {}, [(4, 4), (1,)], [(16,)])) == 0
    assert op_flops(OpShape("Sigmoid", "", {}, [(10,)], [(10,)])) == 40


def test_depthwise_convolution_runs_on_the_vector_units():
    dense = OpShape("Conv", "", {}, [(1, 32, 8, 8), (32, 32, 3, 3)], [(1, 32, 6, 6)])
    depthwise = OpShape("Conv", "", {"group": 32}, [(1, 32, 8, 8), (32, 1, 3, 3)], [(1, 32, 6, 6)])
    assert runs_on_matrix_engine(dense) and not runs_on_matrix_engine(depthwise)


def test_roofline_takes_the_slowest_of_compute_sram_and_dram_plus_overhead():
    flops = 10**12
    compute_ns = flops / (TARGET.peak("bf16") * TARGET.compute_efficiency) * 1e9
    time, bound = kernel_time_ns(flops, 0, 0, TARGET, "bf16", matrix=True)
    assert bound == "compute" and time == pytest.approx(TARGET.command_overhead_ns + compute_ns)
    time32, _ = kernel_time_ns(flops, 0, 0, TARGET, "fp32", matrix=True)
    assert time32 - TARGET.command_overhead_ns == pytest.approx(4 * compute_ns)  # fp32 at a quarter of the peak
    dram = 10**9
    time, bound = kernel_time_ns(1000, 10**6, dram, TARGET, "bf16", matrix=True)
    assert bound == "dram" and time == pytest.approx(TARGET.command_overhead_ns + dram / TARGET.dram_bandwidth * 1e9)
    time, bound = kernel_time_ns(10, 10, 10, TARGET, "bf16", matrix=False)
    assert bound == "overhead" and time == pytest.approx(TARGET.command_overhead_ns, rel=1e-3)


def test_host_link_transfer_is_latency_plus_bytes_over_bandwidth():
    assert transfer_time_ns(0, TARGET) == TARGET.host_link_latency_ns
    assert transfer_time_ns(50_000_000, TARGET) == pytest.approx(TARGET.host_link_latency_ns + 1e6)


def test_estimate_node_before_memory_is_planned():
    graph = import_onnx(conv_relu_model(channels=4, size=8))
    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    estimate = estimate_node(conv, graph, TARGET, "bf16")
    assert estimate.flops == 2 * (4 * 8 * 8) * 27 + 4 * 8 * 8
    assert estimate.input_bytes == 3 * 8 * 8 * 2 and estimate.output_bytes == 4 * 8 * 8 * 2
    assert estimate.weight_bytes == (4 * 27 + 4) * 2
    # Tiny: the command overhead dominates.
    assert estimate.bound == "overhead" and estimate.time_ns > TARGET.command_overhead_ns
    assert estimate_node(conv, graph, TARGET, "fp32").input_bytes == 3 * 8 * 8 * 4
    relu = next(n for n in graph.nodes if n.op_type == "Relu")
    assert host_node_time_ns(relu, graph, TARGET) == pytest.approx(
        TARGET.host_op_overhead_ns + 2 * 4 * 8 * 8 * 4 / TARGET.host_memory_bandwidth * 1e9)


def test_views_are_free():
    model = make_onnx([helper.make_node("Flatten", ["x"], ["y"])], [("x", [2, 3, 4])], [("y", [2, 12])])
    graph = import_onnx(model)
    estimate = estimate_node(next(iter(graph.nodes)), graph, TARGET)
    assert estimate.time_ns == 0 and estimate.bound == "free"


def test_the_artifact_carries_the_estimates_the_runtime_paces_by():
    artifact = rblnc.compile_from_onnx(mixed_model(), dtype="fp32").artifact
    for partition in artifact.partitions:
        assert partition.est_time_ns > 0
        for transfer in partition.transfers:
            assert transfer.est_time_ns == pytest.approx(transfer_time_ns(transfer.bytes, TARGET))
        if partition.device == Device.NPU:
            commands = partition.npu_program.commands
            assert all(c.est_time_ns > 0 and c.flops > 0 for c in commands if c.kind == CommandKind.KERNEL)
            assert partition.est_time_ns == pytest.approx(sum(c.est_time_ns for c in commands))
    conv = artifact.partitions[0].npu_program.commands[0]
    assert conv.flops == 2 * (4 * 8 * 8) * 27 and conv.dram_bytes == (3 * 64 + 4 * 64 + 4 * 27) * 4
    assert conv.sram_bytes == 0  # program inputs and outputs are in DRAM I/O buffers, weights in DRAM


def test_precision_halves_the_link_bytes_and_speeds_up_compute():
    model = conv_relu_model(channels=64, size=64)
    fp32 = rblnc.compile_from_onnx(model, dtype="fp32").artifact
    bf16 = rblnc.compile_from_onnx(model, dtype="bf16").artifact
    assert [t.bytes for t in bf16.partitions[0].transfers] == [t.bytes // 2 for t in fp32.partitions[0].transfers]
    assert bf16.partitions[0].est_time_ns < fp32.partitions[0].est_time_ns
    # Zeros in: the output is relu(bias), with the bias stored in bfloat16.
    x = np.zeros((1, 3, 64, 64), np.float32)
    from ml_dtypes import bfloat16

    expected = rblnc.Runtime(fp32).run(x).astype(bfloat16).astype(np.float32)
    assert np.array_equal(rblnc.Runtime(bf16).run(x), expected)


def test_cli_run_prints_the_modelled_time_beside_the_wall_time(tmp_path):
    import subprocess
    import sys

    import onnx

    onnx.save(mixed_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((1, 3, 8, 8), np.float32))
    cli = [sys.executable, "-m", "rblnc.cli"]
    subprocess.run(cli + ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.rbln")], check=True,
                   capture_output=True)
    out = subprocess.run(cli + ["run", str(tmp_path / "m.rbln"), str(tmp_path / "in.npz")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    artifact = rblnc.RBLNCompiledModel(tmp_path / "m.rbln").artifact
    from rblnc.report import format_time, modelled_time

    timing = modelled_time(artifact)
    assert timing["total"] == pytest.approx(sum(timing[s] for s in ("h2d", "npu", "host", "d2h")))
    wall = next(i for i, line in enumerate(out) if line.startswith("1 inference in "))
    assert " ms (wall" in out[wall]
    assert out[wall + 1] == (f"modelled time on rbln-ca12: {format_time(timing['total'])} per inference "
                             f"(h2d {format_time(timing['h2d'])}, npu {format_time(timing['npu'])}, "
                             f"host {format_time(timing['host'])}, d2h {format_time(timing['d2h'])})")
