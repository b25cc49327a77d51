"""Support check and partitioning: reasons, partition order, DMA transfers."""

from __future__ import annotations

import numpy as np
from conftest import make_onnx, mixed_model
from onnx import helper

import rblnc
from rblnc.format.artifact import Device, TransferDirection
from rblnc.importers import import_onnx
from rblnc.partition import check_npu_support, partition_graph
from rblnc.target import load_target


def test_unsupported_op_reason_names_op_and_target():
    graph = import_onnx(mixed_model())
    erf = next(n for n in graph.nodes if n.op_type == "Erf")
    verdict = check_npu_support(erf, graph, load_target())
    assert not verdict.supported and verdict.reason.startswith("op type Erf is not supported by the NPU (rbln-ca12); it runs on the host")


def test_integer_tensors_stay_on_host():
    model = make_onnx([helper.make_node("Add", ["a", "b"], ["y"])], [("a", [4], 7), ("b", [4], 7)], [("y", [4], 7)])
    graph = import_onnx(model)
    verdict = check_npu_support(next(iter(graph.nodes)), graph, load_target())
    assert "int64" in verdict.reason


def test_partitions_and_transfers_of_a_mixed_model():
    artifact = rblnc.compile_from_onnx(mixed_model(), dtype="fp32").artifact
    npu0, host, npu1 = artifact.partitions
    assert [p.device for p in artifact.partitions] == [Device.NPU, Device.HOST, Device.NPU]
    activation = 1 * 4 * 8 * 8 * 4
    assert [(t.direction, t.tensor, t.bytes) for t in npu0.transfers] == [
        (TransferDirection.HOST_TO_DEVICE, "x", 1 * 3 * 8 * 8 * 4),
        (TransferDirection.DEVICE_TO_HOST, "a", activation),
    ]
    assert host.transfers == []
    assert [(t.direction, t.tensor, t.bytes) for t in npu1.transfers] == [
        (TransferDirection.HOST_TO_DEVICE, "b", activation),
        (TransferDirection.DEVICE_TO_HOST, "y", 1 * 2 * 8 * 8 * 4),
    ]


def test_greedy_grouping_keeps_independent_npu_ops_together():
    # x -> Erf (host) ; x -> Relu -> Sigmoid (npu): the two NPU ops form one partition.
    model = make_onnx(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Erf", ["x"], ["e"]),
         helper.make_node("Sigmoid", ["r"], ["s"]), helper.make_node("Add", ["s", "e"], ["y"])],
        [("x", [4])], [("y", [4])],
    )
    graph = import_onnx(model)
    plan = partition_graph(graph, load_target())
    assert [(p.device, [n.op_type for n in p.nodes]) for p in plan] == [
        (Device.NPU, ["Relu", "Sigmoid"]), (Device.HOST, ["Erf"]), (Device.NPU, ["Add"]),
    ]
    runtime = rblnc.compile_from_onnx(model, dtype="fp32").create_runtime()
    x = np.linspace(-2, 2, 4).astype(np.float32)
    from math import erf

    expected = 1 / (1 + np.exp(-np.maximum(x, 0))) + np.array([erf(v) for v in x], np.float32)
    np.testing.assert_allclose(runtime.run(x), expected, rtol=1e-5)
