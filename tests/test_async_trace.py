"""Runtime timelines: the Chrome-trace / Perfetto JSON structure and the Gantt PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import mixed_model
from test_engine import set_estimates

import rblnc
from rblnc.runtime.trace import chrome_trace, plot_timeline, write_chrome_trace

TRACKS = ["host 0", "host 1", "H2D DMA", "NPU", "D2H DMA"]


@pytest.fixture(scope="module")
def records():
    compiled = rblnc.compile_from_onnx(mixed_model(), dtype="fp32")
    set_estimates(compiled.artifact, npu_ms=2, dma_ms=1, host_ms=2)
    with rblnc.AsyncRuntime(compiled, pace=True, trace=True, host_workers=2) as runtime:
        tasks = [runtime.run(np.ones((1, 3, 8, 8), np.float32)) for _ in range(6)]
        ids = [t.request_id for t in tasks]
        for task in tasks:
            task.wait()
        return runtime.timeline(), ids


def test_chrome_trace_structure(records, tmp_path):
    timeline, ids = records
    path = write_chrome_trace(timeline, tmp_path / "trace.json", title="mixed")
    trace = json.loads(path.read_text())
    assert set(trace) == {"traceEvents", "displayTimeUnit", "otherData"}
    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    slices = [e for e in events if e["ph"] == "X"]
    flows = [e for e in events if e["ph"] in ("s", "f")]
    assert {"ph", "name", "pid", "tid", "args"} <= set(meta[0]) and meta[0]["args"]["name"] == "mixed"
    names = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    order = {e["tid"]: e["args"]["sort_index"] for e in meta if e["name"] == "thread_sort_index"}
    # A track per resource lane, host first, then the device's engines in chain order.
    used = sorted({e["tid"] for e in slices}, key=order.get)
    assert [names[t] for t in used] == [t for t in TRACKS if t in {names[u] for u in used}]
    assert {"H2D DMA", "NPU", "D2H DMA"} <= set(names.values()) and "host 0" in names.values()
    # A slice per step, named by its request, with non-negative microsecond times.
    assert len(slices) == len(timeline) == 6 * 7
    for e in slices:
        assert set(e) == {"ph", "name", "cat", "pid", "tid", "ts", "dur", "args"}
        assert e["args"].get("compute_us", 0) <= e["dur"] + 1e-3
        assert e["ts"] >= 0 and e["dur"] >= 0 and e["tid"] in names
        assert e["name"] == f"req {e['args']['request']}" and e["args"]["request"] in ids
        assert e["cat"] in {"host", "h2d", "npu", "d2h"}
        assert e["args"]["modelled_us"] == {"host": 2000, "npu": 2000}.get(e["cat"], 1000)
    per_request = {i: sorted((e for e in slices if e["args"]["request"] == i), key=lambda e: e["ts"]) for i in ids}
    for chain in per_request.values():
        assert [e["args"]["step"] for e in chain] == ["p0_npu h2d", "p0_npu", "p0_npu d2h", "p1_host",
                                                    "p2_npu h2d", "p2_npu", "p2_npu d2h"]
    # Flow arrows join consecutive steps of a request: one start and one end per id.
    assert len(flows) == 2 * 6 * 6
    by_id: dict[int, list[str]] = {}
    for e in flows:
        by_id.setdefault(e["id"], []).append(e["ph"])
    assert all(sorted(phases) == ["f", "s"] for phases in by_id.values())
    assert min(e["ts"] for e in slices) == 0


def test_empty_timeline_is_a_valid_trace():
    trace = chrome_trace([])
    assert [e["ph"] for e in trace["traceEvents"]] == ["M"]


def test_gantt_chart_is_a_png(records, tmp_path):
    timeline, _ = records
    path = plot_timeline(timeline, tmp_path / "timeline.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
