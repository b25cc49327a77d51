"""`rblnc run` with several requests: --async, --pace, --repeat, --trace, --plot and the summary."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from conftest import make_onnx, mixed_model
from onnx import helper
from test_cli import rblnc
from test_engine import set_estimates

import rblnc as lib


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("async_cli")
    onnx.save(mixed_model(), folder / "mixed.onnx")
    rblnc("compile", folder / "mixed.onnx", "-o", folder / "compiled.rbln")
    compiled = lib.RBLNCompiledModel(folder / "compiled.rbln")
    set_estimates(compiled.artifact, npu_ms=2, dma_ms=0.5, host_ms=1)
    compiled.save(folder / "timed.rbln")
    # As an artifact from a compiler that does not estimate times.
    set_estimates(compiled.artifact, npu_ms=0, dma_ms=0, host_ms=0)
    compiled.save(folder / "plain.rbln")
    np.savez(folder / "batch.npz", x=np.random.default_rng(0).standard_normal((5, 1, 3, 8, 8)).astype(np.float32))
    return folder


def test_estimates_survive_the_file(folder):
    artifact = lib.RBLNCompiledModel(folder / "timed.rbln").artifact
    assert [p.est_time_ns for p in artifact.partitions] == [2e6, 1e6, 2e6]
    assert all(t.est_time_ns == 0.5e6 for p in artifact.partitions for t in p.transfers)


def test_async_paced_run_of_a_batch_with_trace_and_plot(folder):
    result = rblnc("run", "--async", "--pace", folder / "timed.rbln", folder / "batch.npz", "--repeat", "2",
                   "-o", folder / "out.npz", "--trace", folder / "t.json", "--plot", folder / "t.png")
    out = result.stdout
    assert "y: float32[5x1x2x8x8]" in out
    assert re.search(r"requests: 10 \(async, paced, parallel \d+\)", out)
    assert re.search(r"throughput: [\d.]+ req/s \([\d.]+ s wall\)", out)
    assert re.search(r"latency: p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms", out)
    utilisation = float(re.search(r"modelled NPU utilisation: ([\d.]+)%", out).group(1))
    assert 0 < utilisation <= 100  # the NPU cannot be busier than the wall time
    runtime = lib.Runtime(folder / "plain.rbln")
    with np.load(folder / "batch.npz") as batch, np.load(folder / "out.npz") as results:
        assert results["y"].shape == (5, 1, 2, 8, 8)
        for x, y in zip(batch["x"], results["y"]):
            np.testing.assert_array_equal(y, runtime.run(x))
    trace = json.loads((folder / "t.json").read_text())
    assert sum(e["ph"] == "X" for e in trace["traceEvents"]) == 10 * 7
    assert (folder / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_sync_run_of_a_batch_paced_without_estimates(folder):
    result = rblnc("run", "--pace", folder / "plain.rbln", folder / "batch.npz", "-o", folder / "sync.npz",
                   "--trace", folder / "sync.json")
    assert "warning: " in result.stderr and "carries no timing estimates" in result.stderr
    assert "Traceback" not in result.stderr
    assert "requests: 5 (sync, paced)" in result.stdout
    assert "modelled NPU utilisation: n/a (the artifact carries no timing estimates)" in result.stdout
    runtime = lib.Runtime(folder / "plain.rbln")
    with np.load(folder / "batch.npz") as batch, np.load(folder / "sync.npz") as results:
        for x, y in zip(batch["x"], results["y"]):
            np.testing.assert_array_equal(y, runtime.run(x))
    slices = [e for e in json.loads((folder / "sync.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == 5 * 3  # no modelled time: the DMA steps move nothing and are not run


def test_requests_must_agree_on_their_number(tmp_path):
    model = make_onnx([helper.make_node("Add", ["a", "b"], ["y"])], [("a", [2, 3]), ("b", [2, 3])], [("y", [2, 3])])
    onnx.save(model, tmp_path / "add.onnx")
    rblnc("compile", tmp_path / "add.onnx", "-o", tmp_path / "add.rbln")
    np.savez(tmp_path / "shared.npz", a=np.ones((4, 2, 3), np.float32), b=np.full((2, 3), 2, np.float32))
    result = rblnc("run", "--async", tmp_path / "add.rbln", tmp_path / "shared.npz", "-o", tmp_path / "o.npz")
    assert "requests: 4" in result.stdout
    with np.load(tmp_path / "o.npz") as out:
        np.testing.assert_array_equal(out["y"], np.full((4, 2, 3), 3, np.float32))
    np.savez(tmp_path / "bad.npz", a=np.ones((4, 2, 3), np.float32), b=np.ones((3, 2, 3), np.float32))
    failed = rblnc("run", tmp_path / "add.rbln", tmp_path / "bad.npz", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "must agree on the number of requests ('a': 4, 'b': 3)" in failed.stderr


def test_parallel_needs_async(folder):
    result = rblnc("run", folder / "plain.rbln", folder / "batch.npz", "--parallel", "2", check=False)
    assert result.returncode == 2 and "--parallel applies to --async runs" in result.stderr
