"""The request engine: the chain planned from an artifact, pacing, lane order, device-side bound."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import conv_relu_model, mixed_model

import rblnc
from rblnc.runtime.engine import (
    Engine, Request, RequestState, Resource, Step, active_steps, modelled_ns_per_request, next_request_id,
    pace_scale_of, plan_steps, throughput_bounds,
)
from rblnc.runtime.executor import ModelExecutor

MS = 1e6  # ns


def set_estimates(artifact, *, npu_ms: float, dma_ms: float, host_ms: float = 0.0):
    """Hand-set modelled times: every NPU partition npu_ms, every transfer dma_ms, host host_ms.
    The compiler's per-command estimates are cleared, so all zeros means "not estimated"."""
    for partition in artifact.partitions:
        partition.est_time_ns = (npu_ms if partition.npu_program is not None else host_ms) * MS
        for command in partition.npu_program.commands if partition.npu_program is not None else []:
            command.est_time_ns = 0
        for transfer in partition.transfers:
            transfer.est_time_ns = dma_ms * MS
    return artifact


@pytest.fixture
def mixed():
    """A fresh compile per test: the tests set the artifact's times in place."""
    return rblnc.compile_from_onnx(mixed_model(), dtype="fp32")


def test_chain_follows_partitions_and_their_transfers(mixed):
    artifact = set_estimates(mixed.artifact, npu_ms=2, dma_ms=0.5, host_ms=1)
    steps = plan_steps(ModelExecutor(artifact))
    assert [(s.resource, s.name) for s in steps] == [
        (Resource.H2D, "p0_npu h2d"), (Resource.NPU, "p0_npu"), (Resource.D2H, "p0_npu d2h"),
        (Resource.HOST, "p1_host"),
        (Resource.H2D, "p2_npu h2d"), (Resource.NPU, "p2_npu"), (Resource.D2H, "p2_npu d2h"),
    ]
    # p0 copies x in and a out (the host reads it); p2 copies b in and y out.
    transfers = {p.name: [(t.direction.name, t.tensor) for t in p.transfers] for p in artifact.partitions}
    assert transfers["p0_npu"] == [("HOST_TO_DEVICE", "x"), ("DEVICE_TO_HOST", "a")]
    assert transfers["p2_npu"] == [("HOST_TO_DEVICE", "b"), ("DEVICE_TO_HOST", "y")]
    assert [s.est_ns for s in steps] == [0.5 * MS, 2 * MS, 0.5 * MS, 1 * MS, 0.5 * MS, 2 * MS, 0.5 * MS]
    assert modelled_ns_per_request(steps) == {Resource.HOST: 1 * MS, Resource.H2D: 1 * MS,
                                              Resource.NPU: 4 * MS, Resource.D2H: 1 * MS}
    # Values no later step reads are dropped after their last reader; the model output is kept.
    assert {s.name: s.release for s in steps if s.release} == {"p0_npu": ("x",), "p1_host": ("a",), "p2_npu": ("b",)}


def test_functional_runs_skip_dma_steps_paced_runs_keep_them(mixed):
    steps = plan_steps(ModelExecutor(set_estimates(mixed.artifact, npu_ms=1, dma_ms=1)))
    assert [s.name for s in active_steps(steps, 0.0)] == ["p0_npu", "p1_host", "p2_npu"]
    assert len(active_steps(steps, 1.0)) == 7


def test_npu_partition_time_falls_back_to_its_commands(mixed):
    artifact = set_estimates(mixed.artifact, npu_ms=0, dma_ms=0)
    for command in artifact.partitions[0].npu_program.commands:
        command.est_time_ns = 0.25 * MS
    steps = plan_steps(ModelExecutor(artifact))
    n = len(artifact.partitions[0].npu_program.commands)
    assert next(s for s in steps if s.name == "p0_npu").est_ns == pytest.approx(n * 0.25 * MS)


def test_bounds_are_busiest_resource_and_sum_of_steps(mixed):
    steps = plan_steps(ModelExecutor(set_estimates(mixed.artifact, npu_ms=2, dma_ms=0.5, host_ms=3)))
    bound, serial = throughput_bounds(steps, host_lanes=1)
    assert bound == pytest.approx(1e3 / 4) and serial == pytest.approx(1e3 / 9)
    bound_two_host_lanes, _ = throughput_bounds(steps, host_lanes=2)
    assert bound_two_host_lanes == pytest.approx(1e3 / 4)  # the NPU (4 ms) is then the busiest
    with pytest.raises(ValueError, match="no modelled time"):
        throughput_bounds(plan_steps(ModelExecutor(set_estimates(mixed.artifact, npu_ms=0, dma_ms=0))))


def test_pace_argument():
    assert pace_scale_of(False) == 0 and pace_scale_of(True) == 1 and pace_scale_of(20) == 20.0
    for bad in (-1, 0.0, "fast"):
        with pytest.raises(ValueError, match="pace must be"):
            pace_scale_of(bad)


def test_paced_sync_steps_last_their_modelled_time_in_chain_order(mixed):
    artifact = set_estimates(mixed.artifact, npu_ms=3, dma_ms=1, host_ms=2)
    runtime = rblnc.Runtime(artifact, pace=True, trace=True)
    x = np.ones((1, 3, 8, 8), np.float32)
    expected = rblnc.Runtime(artifact).run(x)
    for _ in range(3):
        np.testing.assert_array_equal(runtime.run(x), expected)
    records = runtime.timeline()
    assert len(records) == 3 * 7
    for record in records:
        # A paced step never ends before its modelled time (it may last longer if the emulator is slower).
        assert record.end - record.start >= record.modelled_ns * 1e-9 - 1e-9
    for request in {r.request for r in records}:
        chain = [r for r in records if r.request == request]
        assert [r.step for r in chain] == [s.name for s in runtime.steps]
        assert all(b.start >= a.end for a, b in zip(chain, chain[1:]))


def test_slow_motion_scales_modelled_time(mixed):
    artifact = set_estimates(mixed.artifact, npu_ms=0.5, dma_ms=0.25, host_ms=0.25)
    runtime = rblnc.Runtime(artifact, pace=4, trace=True)
    runtime.run(np.ones((1, 3, 8, 8), np.float32))
    npu = [r for r in runtime.timeline() if r.resource is Resource.NPU]
    assert all(r.modelled_ns == 2 * MS and r.end - r.start >= 2e-3 - 1e-9 for r in npu)


def test_pacing_without_estimates_warns(mixed):
    artifact = set_estimates(mixed.artifact, npu_ms=0, dma_ms=0)
    with pytest.warns(RuntimeWarning, match="no timing estimates"):
        rblnc.Runtime(artifact, pace=True)


def test_async_lanes_serve_in_order_and_device_side_holds_at_most_parallel(mixed):
    artifact = set_estimates(mixed.artifact, npu_ms=2, dma_ms=1, host_ms=1)
    x = np.ones((1, 3, 8, 8), np.float32)
    with rblnc.AsyncRuntime(artifact, pace=True, parallel=2, trace=True) as runtime:
        tasks = [runtime.run(x) for _ in range(8)]
        ids = [t.request_id for t in tasks]
        results = [t.wait() for t in tasks]
        records = runtime.timeline()
    expected = rblnc.Runtime(artifact).run(x)
    assert all(np.array_equal(r, expected) for r in results)
    assert len(records) == 8 * 7
    for lane in {r.lane for r in records}:
        on_lane = sorted((r for r in records if r.lane == lane), key=lambda r: r.start)
        assert all(b.start >= a.end for a, b in zip(on_lane, on_lane[1:])), f"steps overlap on {lane}"
    # The first step of every request is served in submission order.
    first = sorted((r for r in records if r.step == "p0_npu h2d"), key=lambda r: r.start)
    assert [r.request for r in first] == ids
    # From its first device step to its last, a request holds a device slot: never more than 2.
    spans = {}
    for r in records:
        if r.resource.on_device:
            start, end = spans.get(r.request, (r.start, r.end))
            spans[r.request] = (min(start, r.start), max(end, r.end))
    for start, _ in spans.values():
        holding = sum(1 for s, e in spans.values() if s <= start < e)
        assert holding <= 2
    # Steps of different requests did overlap (the point of the engine).
    assert any(s2 < e1 and s1 < e2 for (s1, e1) in spans.values() for (s2, e2) in spans.values() if (s1, e1) != (s2, e2))


def test_conv_only_model_has_no_host_step():
    compiled = rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32")
    steps = plan_steps(ModelExecutor(compiled.artifact))
    assert [s.resource for s in steps] == [Resource.H2D, Resource.NPU, Resource.D2H]


def test_steps_slower_than_the_model_are_counted_as_overruns(mixed):
    # 1 ns for an NPU partition: the emulator cannot keep to that, the step lasts what it computes.
    artifact = set_estimates(mixed.artifact, npu_ms=1e-6, dma_ms=20, host_ms=50)
    x = np.ones((1, 3, 8, 8), np.float32)
    sync = rblnc.Runtime(artifact, pace=True, trace=True)
    sync.run(x)
    overran = [r.step for r in sync.timeline() if r.overran]
    assert overran == ["p0_npu", "p2_npu"] and sync.overruns == 2
    with rblnc.AsyncRuntime(artifact, pace=True) as runtime:
        runtime.run(x).wait()
        assert runtime.overruns == 2 and runtime.stats()["overruns"] == 2


def test_paced_steps_each_run_on_their_own_lanes_thread(mixed):
    """Pacing keeps every step on its lane's timeline: no request is run through by one thread."""
    artifact = set_estimates(mixed.artifact, npu_ms=2, dma_ms=1, host_ms=1)
    x = np.ones((1, 3, 8, 8), np.float32)
    with rblnc.AsyncRuntime(artifact, pace=True, trace=True) as runtime:
        for task in [runtime.run(x) for _ in range(6)]:
            task.wait(timeout=30)
        records = runtime.timeline()
    assert len(records) == 6 * 7
    assert all(r.thread == "rblnc-" + r.lane.replace(" ", "-").lower() for r in records)


# -- functional schedules: whole chains or the pipeline (Engine._run_through, _choose_schedule) ----

def sleeping_steps(npu_s: float, host_s: float) -> list[Step]:
    """NPU -> host -> NPU steps that last about the given times (sleeping frees the GIL, so the
    measured costs are the times asked for, whatever else this machine runs)."""

    def sleep_for(seconds):
        return lambda values: time.sleep(seconds) if seconds else None

    return [Step(Resource.NPU, "a", "a", 0.0, sleep_for(npu_s)), Step(Resource.HOST, "h", "h", 0.0, sleep_for(host_s)),
            Step(Resource.NPU, "b", "b", 0.0, sleep_for(npu_s))]


def run_requests(engine: Engine, count: int) -> list[Request]:
    requests = [Request(next_request_id(), {}, lambda values: None) for _ in range(count)]
    for request in requests:
        engine.submit(request)
    for request in requests:
        assert request.wait(timeout=30) and request.state is RequestState.DONE
    return requests


def threads_per_request(engine: Engine, requests: list[Request]) -> dict[int, list[str]]:
    ids = {r.id for r in requests}
    threads: dict[int, list[str]] = {}
    for record in engine.timeline:
        if record.request in ids:
            threads.setdefault(record.request, []).append(record.thread)
    assert all(len(chain) == 3 for chain in threads.values()) and len(threads) == len(ids)
    return threads


@pytest.mark.parametrize("npu_s, host_s, whole", [
    (0.005, 0.0, True),    # the NPU's steps are all there is: handing the host step on gains nothing
    (0.0, 0.02, False),    # the host step dominates and has 2 lanes: pipelining halves a request's share
])
def test_one_starting_thread_runs_whole_chains_unless_pipelining_pays(npu_s, host_s, whole):
    engine = Engine(sleeping_steps(npu_s, host_s), parallel=4, host_lanes=2, npu_lanes=1, trace_capacity=1000,
                    name="sched")
    try:
        assert not engine.whole_chain  # nothing measured yet: the pipeline
        run_requests(engine, 4)
        assert engine.whole_chain is whole
        threads = threads_per_request(engine, run_requests(engine, 8))
    finally:
        engine.shutdown()
    if whole:
        # Each request's three steps all ran on the NPU lane's thread, which took it.
        assert all(chain == ["sched-npu"] * 3 for chain in threads.values())
    else:
        # The host steps went to the host lanes' threads while the NPU lane took the next requests
        # (the last ones may finish on the thread they are on, once nothing else is in flight).
        handed_on = [chain for chain in threads.values() if chain[0] == "sched-npu" and chain[1].startswith("sched-host-")]
        assert len(handed_on) >= len(threads) // 2


def test_two_starting_threads_each_run_whole_requests_on_two_lanes():
    # The host step is no part of the chain's time: handing it on would gain nothing.
    engine = Engine(sleeping_steps(0.002, 0.0), parallel=4, host_lanes=2, npu_lanes=2, trace_capacity=1000,
                    name="two")
    try:
        assert engine.whole_chain  # two NPU lanes take requests: they overlap whole ones
        requests = run_requests(engine, 12)
        assert engine.whole_chain
        threads = threads_per_request(engine, requests)
        records = list(engine.timeline)
    finally:
        engine.shutdown()
    assert all(len(set(chain)) == 1 and chain[0] in {"two-npu-0", "two-npu-1"} for chain in threads.values())
    # A step of each resource holds one of its lanes: at most 2 NPU steps at once, never one lane twice.
    for lane in {r.lane for r in records}:
        on_lane = sorted((r for r in records if r.lane == lane), key=lambda r: r.start)
        assert all(b.start >= a.end for a, b in zip(on_lane, on_lane[1:])), f"steps overlap on {lane}"
    assert {r.lane for r in records if r.resource is Resource.NPU} <= {"NPU 0", "NPU 1"}



def test_two_starting_threads_pipeline_a_chain_whose_host_step_would_leave_the_npu_lanes_idle():
    # NPU 2 + 2 ms on 2 lanes, host 2 ms on 2 lanes: whole chains make a request per 3 ms (each of
    # the 2 NPU lanes' threads runs 6 ms chains), the pipeline one per 2 ms (the NPU's 4 ms per lane).
    engine = Engine(sleeping_steps(0.002, 0.002), parallel=4, host_lanes=2, npu_lanes=2, trace_capacity=1000,
                    name="mix")
    try:
        assert engine.whole_chain  # nothing measured yet
        run_requests(engine, 4)
        assert not engine.whole_chain
        threads = threads_per_request(engine, run_requests(engine, 12))
    finally:
        engine.shutdown()
    handed_on = [chain for chain in threads.values() if chain[0].startswith("mix-npu") and chain[1].startswith("mix-host-")]
    assert len(handed_on) >= len(threads) // 2
