"""AsyncRuntime: per-request results under concurrency (asyncio, threads, several loops), errors
that reach only their own request, back-pressure, cancel and close, bounded threads and memory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import threading
import time
import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import make_onnx, mixed_model
from onnx import TensorProto, helper
from test_engine import set_estimates

import rblnc
from rblnc.errors import ExecutionError, InputNameError, InputShapeError, RuntimeClosedError
from rblnc.runtime import engine

X_SHAPE = (1, 3, 8, 8)


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *X_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def mixed_onnx():
    return mixed_model()


@pytest.fixture(scope="module")
def mixed(mixed_onnx, tmp_path_factory):
    """NPU -> host (Erf) -> NPU, saved to a file."""
    return rblnc.compile_from_onnx(mixed_onnx, dtype="fp32").save(tmp_path_factory.mktemp("async") / "mixed.rbln")


@pytest.fixture(scope="module")
def reference(mixed_onnx):
    session = ort.InferenceSession(mixed_onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def paced_model(npu_ms: float, dma_ms: float = 1.0, host_ms: float = 1.0):
    """The mixed model with hand-set modelled times, so requests stay in flight long enough to act on."""
    compiled = rblnc.compile_from_onnx(mixed_model(), dtype="fp32")
    set_estimates(compiled.artifact, npu_ms=npu_ms, dma_ms=dma_ms, host_ms=host_ms)
    return compiled


def gather_model():
    """x -> Relu (NPU) -> Cast int64, Gather from a 10-row table (host) -> Mul (NPU). A request
    whose x holds a value >= 10 indexes past the table: onnxruntime fails it in the host partition."""
    table = np.arange(10, dtype=np.float32) * 10
    return make_onnx(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Cast", ["r"], ["i"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "i"], ["g"], axis=0),
         helper.make_node("Mul", ["g", "two"], ["y"])],
        [("x", [1, 4])], [("y", [1, 4])], [("table", table), ("two", np.array(2, np.float32))],
    )


# -- results ------------------------------------------------------------------------------------

def test_thousand_concurrent_async_runs_each_get_their_own_result(mixed, reference):
    samples = _samples(1000)
    runtime = rblnc.AsyncRuntime(mixed)

    async def main():
        return await asyncio.gather(*(runtime.async_run(x) for x in samples))

    with runtime:
        outputs = asyncio.run(main())
    assert len(outputs) == 1000
    for x, y in zip(samples, outputs):
        np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-5)


def test_async_matches_the_sync_runtime_exactly(mixed):
    samples = _samples(20, seed=1)
    sync = rblnc.Runtime(mixed)
    with rblnc.AsyncRuntime(mixed) as runtime:
        tasks = [runtime.run(x) for x in samples]
        for x, task in zip(samples, tasks):
            np.testing.assert_array_equal(task.wait(), sync.run(x))
            assert task.done() and not task.cancelled() and task.latency > 0


def test_inputs_by_name_torch_and_pt_outputs_and_out(mixed, reference):
    x = _samples(1, seed=2)[0]
    with rblnc.AsyncRuntime(mixed, tensor_type="pt") as runtime:
        by_name = runtime.run(x=x).wait()
        from_torch = runtime.run(torch.from_numpy(x)).wait()
    assert isinstance(by_name, torch.Tensor)
    np.testing.assert_allclose(by_name.numpy(), reference(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(by_name, from_torch)
    out = np.empty((1, 2, 8, 8), np.float32)
    with rblnc.AsyncRuntime(mixed) as runtime:
        assert runtime.run(x, out=out).wait() is out
    np.testing.assert_allclose(out, reference(x), rtol=1e-4, atol=1e-5)


def test_tensorflow_tensor_input(mixed, reference):
    tf = pytest.importorskip("tensorflow")
    x = _samples(1, seed=9)[0]

    async def main(runtime):
        return await runtime.async_run(tf.constant(x))

    with rblnc.AsyncRuntime(mixed) as runtime:
        np.testing.assert_allclose(asyncio.run(main(runtime)), reference(x), rtol=1e-4, atol=1e-5)


def test_input_buffers_may_be_reused_once_submitted(mixed, reference):
    x = _samples(1, seed=3)[0]
    expected = reference(x.copy())
    with rblnc.AsyncRuntime(paced_model(npu_ms=20), pace=True) as runtime:
        task = runtime.run(x)
        x[...] = 0  # the caller refills its buffer while the request is in flight
        np.testing.assert_allclose(task.wait(), expected, rtol=1e-4, atol=1e-5)


def test_compiled_model_creates_an_async_runtime(mixed):
    compiled = rblnc.RBLNCompiledModel(mixed)
    with compiled.create_async_runtime(parallel=2, max_inflight=8) as runtime:
        assert isinstance(runtime, rblnc.AsyncRuntime) and runtime.parallel == 2 and runtime.max_inflight == 8
        x = _samples(1)[0]
        np.testing.assert_array_equal(runtime.run(x).wait(), compiled.create_runtime().run(x))


def test_input_errors_are_raised_at_the_call(mixed):
    with rblnc.AsyncRuntime(mixed) as runtime:
        with pytest.raises(InputShapeError, match=r"input 'x': expected shape \[1, 3, 8, 8\], got \[1, 3, 8, 7\]"):
            runtime.run(np.zeros((1, 3, 8, 7), np.float32))
        with pytest.raises(InputNameError, match="unknown input 'image'"):
            asyncio.run(runtime.async_run(image=np.zeros(X_SHAPE, np.float32)))
        assert runtime.stats()["completed"] == 0


# -- concurrency ----------------------------------------------------------------------------------

def test_run_and_wait_from_eight_threads_at_once(mixed, reference):
    samples = _samples(8 * 25, seed=4).reshape(8, 25, *X_SHAPE)
    results: dict[int, list] = {}
    barrier = threading.Barrier(8)
    with rblnc.AsyncRuntime(mixed, max_inflight=16) as runtime:
        def worker(index: int) -> None:
            barrier.wait()
            tasks = [runtime.run(x) for x in samples[index]]
            results[index] = [t.wait(timeout=60) for t in tasks]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(results) == list(range(8))
    for index in range(8):
        for x, y in zip(samples[index], results[index]):
            np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-5)


def test_several_event_loops_share_one_runtime(mixed, reference):
    samples = _samples(2 * 30, seed=5).reshape(2, 30, *X_SHAPE)
    results: dict[int, list] = {}
    with rblnc.AsyncRuntime(mixed, max_inflight=8) as runtime:
        def loop_thread(index: int) -> None:
            async def main():
                return await asyncio.gather(*(runtime.async_run(x) for x in samples[index]))

            results[index] = asyncio.run(main())

        threads = [threading.Thread(target=loop_thread, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        loop_thread_main = asyncio.run(asyncio.wait_for(runtime.async_run(samples[0][0]), timeout=60))
        for thread in threads:
            thread.join(timeout=120)
    np.testing.assert_allclose(loop_thread_main, reference(samples[0][0]), rtol=1e-4, atol=1e-5)
    for index in range(2):
        for x, y in zip(samples[index], results[index]):
            np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-5)


def test_ten_thousand_pending_calls_use_bounded_threads_and_flat_memory():
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    samples = np.random.default_rng(6).standard_normal((10_000, 1, 4)).astype(np.float32)
    runtime = rblnc.AsyncRuntime(compiled, max_inflight=64)
    threads_before = threading.active_count()
    seen_threads = []

    async def run_all(xs):
        calls = [asyncio.ensure_future(runtime.async_run(x)) for x in xs]
        await asyncio.sleep(0.05)  # every call has started and most wait for admission
        seen_threads.append(threading.active_count())
        return await asyncio.gather(*calls)

    with runtime:
        warm = asyncio.run(run_all(samples[:1000]))
        del warm
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            outputs = asyncio.run(run_all(samples))
            assert all(np.array_equal(y, np.maximum(x, 0)) for x, y in zip(samples, outputs))
            del outputs
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    # No thread per pending call: only the runtime's own, started before any request.
    assert max(seen_threads) <= threads_before
    # asyncio's own registry of tasks keeps the capacity it grew to for 10,000 tasks: not ours.
    # Nor onnxruntime's binding, which runs every program on the onnxruntime engine: its
    # InferenceSession.run keeps ~100-byte objects of its own (41 KiB over the first 10,000
    # requests, 5 KiB over the next 10,000: a cache filling, not a leak per request).
    ignore = [tracemalloc.Filter(False, "*/asyncio/*"), tracemalloc.Filter(False, "*/_weakrefset.py"),
              tracemalloc.Filter(False, "*/onnxruntime/*"), tracemalloc.Filter(False, tracemalloc.__file__)]
    growth = sum(s.size_diff for s in after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename"))
    assert growth < 64 * 1024, f"memory grew by {growth} bytes over 10,000 requests"


def test_back_pressure_holds_at_most_max_inflight(mixed):
    x = _samples(1)[0]
    with rblnc.AsyncRuntime(paced_model(npu_ms=15), pace=True, max_inflight=3) as runtime:
        submitted = []
        producer = threading.Thread(target=lambda: submitted.extend(runtime.run(x) for _ in range(8)))
        producer.start()
        peak = 0
        while producer.is_alive():
            peak = max(peak, runtime.inflight())
            time.sleep(0.002)
        producer.join()
        results = [t.wait(timeout=30) for t in submitted]
    assert len(results) == 8 and peak <= 3


# -- errors -------------------------------------------------------------------------------------

def test_a_failing_host_partition_fails_only_its_own_request():
    compiled = rblnc.compile_from_onnx(gather_model(), dtype="fp32")
    assert [p.device.name for p in compiled.artifact.partitions] == ["NPU", "HOST", "NPU"]
    samples = [np.array([[i % 10, 1, 2, 3]], np.float32) for i in range(30)]
    bad = {4, 17, 25}
    for i in bad:
        samples[i] = np.array([[1, 12.5, 2, 3]], np.float32)
    with rblnc.AsyncRuntime(compiled) as runtime:
        tasks = [runtime.run(x) for x in samples]
        for i, (x, task) in enumerate(zip(samples, tasks)):
            if i in bad:
                with pytest.raises(ExecutionError, match=r"partition p1_host \(host\) failed") as info:
                    task.wait()
                assert info.value.request_id == task.request_id
                assert f"rblnc request {task.request_id} failed at step p1_host (host)" in info.value.__notes__
            else:
                np.testing.assert_array_equal(task.wait(), np.floor(x) * 10 * 2)
        assert runtime.stats()["failed"] == 3 and runtime.stats()["completed"] == 27

    async def main(runtime):
        return await asyncio.gather(*(runtime.async_run(x) for x in samples), return_exceptions=True)

    with rblnc.AsyncRuntime(compiled) as runtime:
        outcomes = asyncio.run(main(runtime))
    assert [i for i, o in enumerate(outcomes) if isinstance(o, ExecutionError)] == sorted(bad)
    # The same exception type and message the synchronous Runtime raises.
    with pytest.raises(ExecutionError) as sync_error:
        rblnc.Runtime(compiled).run(samples[4])
    assert str(sync_error.value) == str(outcomes[4])


def test_wait_timeout_leaves_the_request_running():
    with rblnc.AsyncRuntime(paced_model(npu_ms=100), pace=True) as runtime:
        task = runtime.run(_samples(1)[0])
        with pytest.raises(TimeoutError, match=f"request {task.request_id} did not finish within 0.01 s"):
            task.wait(timeout=0.01)
        assert task.wait(timeout=30).shape == (1, 2, 8, 8)


# -- cancel and close ----------------------------------------------------------------------------

def test_cancel_a_queued_request():
    samples = _samples(5, seed=7)
    with rblnc.AsyncRuntime(paced_model(npu_ms=100), pace=True, parallel=1) as runtime:
        tasks = [runtime.run(x) for x in samples]
        last = tasks[-1]
        assert last.cancel() is True and last.cancelled() and last.done()
        with pytest.raises(concurrent.futures.CancelledError, match=f"request {last.request_id} was cancelled"):
            last.wait(timeout=1)
        first = tasks[0].wait(timeout=30)
        assert tasks[0].cancel() is False  # already finished
        assert first.shape == (1, 2, 8, 8)
        runtime.close(cancel=True)
    assert all(t.done() for t in tasks)
    assert runtime.stats()["cancelled"] >= 1


def test_cancelling_the_awaiting_coroutine_cancels_the_request():
    with rblnc.AsyncRuntime(paced_model(npu_ms=200), pace=True) as runtime:
        async def main():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(runtime.async_run(_samples(1)[0]), timeout=0.02)

        asyncio.run(main())
        deadline = time.monotonic() + 5
        while runtime.inflight() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runtime.inflight() == 0 and runtime.stats()["cancelled"] == 1


def test_close_finishes_what_is_in_flight(mixed, reference):
    samples = _samples(6, seed=8)
    runtime = rblnc.AsyncRuntime(paced_model(npu_ms=5), pace=True)
    tasks = [runtime.run(x) for x in samples]
    runtime.close()
    assert all(t.done() and not t.cancelled() for t in tasks)
    for x, t in zip(samples, tasks):
        np.testing.assert_allclose(t.wait(), reference(x), rtol=1e-4, atol=1e-5)
    assert runtime.closed and runtime.inflight() == 0


def test_close_with_cancel_stops_what_is_in_flight():
    runtime = rblnc.AsyncRuntime(paced_model(npu_ms=200), pace=True, parallel=1)
    tasks = [runtime.run(x) for x in _samples(6)]
    runtime.close(cancel=True)
    assert all(t.done() for t in tasks) and sum(t.cancelled() for t in tasks) >= 5


def test_calls_after_close_and_calls_waiting_for_admission_get_a_clear_error(mixed):
    runtime = rblnc.AsyncRuntime(paced_model(npu_ms=100), pace=True, max_inflight=1)
    x = _samples(1)[0]
    first = runtime.run(x)
    errors = []

    def blocked() -> None:
        try:
            runtime.run(x)
        except RuntimeClosedError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    deadline = time.monotonic() + 10
    while runtime.waiting() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert runtime.waiting() == 1  # the second call waits for admission
    runtime.close(cancel=True)
    waiter.join(timeout=10)
    assert len(errors) == 1 and "closed while this request waited" in str(errors[0])
    assert first.done()
    with pytest.raises(RuntimeClosedError, match=r"AsyncRuntime for .* is closed"):
        runtime.run(x)
    with pytest.raises(RuntimeClosedError, match="is closed"):
        asyncio.run(runtime.async_run(x))
    runtime.close()  # a second close does nothing


def test_context_managers_close(mixed):
    x = _samples(1)[0]
    with rblnc.AsyncRuntime(mixed) as runtime:
        task = runtime.run(x)
    assert runtime.closed and task.done()

    async def main():
        async with rblnc.AsyncRuntime(mixed) as runtime:
            y = await runtime.async_run(x)
        return runtime, y

    runtime, y = asyncio.run(main())
    assert runtime.closed and y.shape == (1, 2, 8, 8)


def test_bad_options():
    compiled = rblnc.compile_from_onnx(mixed_model(), dtype="fp32")
    with pytest.raises(ValueError, match="max_inflight must be at least 1"):
        rblnc.AsyncRuntime(compiled, max_inflight=0)
    with pytest.raises(ValueError, match="parallel must be at least 1"):
        rblnc.AsyncRuntime(compiled, parallel=0)
    with pytest.raises(ValueError, match="device 1 does not exist"):
        rblnc.AsyncRuntime(compiled, device=1)


def test_a_raising_callback_is_logged_and_the_runtime_goes_on(mixed, reference, caplog):
    samples = _samples(5, seed=10)
    with rblnc.AsyncRuntime(mixed) as runtime:
        first = runtime.run(samples[0])
        first.add_done_callback(lambda task: 1 / 0)
        first.wait(timeout=30)
        rest = [runtime.run(x).wait(timeout=30) for x in samples[1:]]
    for x, y in zip(samples[1:], rest):
        np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-5)
    assert any(f"completion callback of request {first.request_id} raised" in r.getMessage() for r in caplog.records)


def test_close_from_a_completion_callback_is_refused():
    errors = []
    # Paced, so the callback is registered long before the request ends and runs on an engine thread.
    with rblnc.AsyncRuntime(paced_model(npu_ms=50), pace=True) as runtime:
        def close_inside(_task) -> None:
            try:
                runtime.close()
            except RuntimeError as exc:
                errors.append(exc)

        task = runtime.run(_samples(1)[0])
        task.add_done_callback(close_inside)
        task.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not runtime.closed
    assert len(errors) == 1 and "from a completion callback" in str(errors[0]) and runtime.closed


# -- a request run whole on the calling thread (Engine.run_inline) --------------------------------

@pytest.fixture
def always_inline(monkeypatch):
    """Hand-offs priced so high that, once the chain was measured on the lanes (INLINE_WARMUP
    requests), every request submitted while nothing else is in flight runs on the caller's thread."""
    monkeypatch.setattr(engine, "HOP_COST_S", 1e3)


def test_a_request_run_inline_delivers_its_result_error_and_statistics(always_inline):
    compiled = rblnc.compile_from_onnx(gather_model(), dtype="fp32")
    good = [np.array([[i, 1, 2, 3]], np.float32) for i in range(4)]
    bad = np.array([[1, 12.5, 2, 3]], np.float32)
    threads = []

    def preprocess(x):
        threads.append(threading.get_ident())
        return x

    with rblnc.AsyncRuntime(compiled, preprocess=preprocess) as runtime:
        for x in good[:engine.INLINE_WARMUP]:
            np.testing.assert_array_equal(runtime.run(x).wait(timeout=30), np.floor(x) * 20)
        assert threading.get_ident() not in threads  # measured on the lanes first
        threads.clear()
        task = runtime.run(bad)
        assert task.done() and task.cancel() is False  # it ran in the call
        with pytest.raises(ExecutionError, match=r"partition p1_host \(host\) failed") as info:
            task.wait()
        assert info.value.request_id == task.request_id
        assert info.value.__notes__ == [f"rblnc request {task.request_id} failed at step p1_host (host)"]

        async def main():
            with pytest.raises(ExecutionError, match=r"partition p1_host \(host\) failed") as info:
                await runtime.async_run(bad)
            return await runtime.async_run(good[3]), info.value

        result, error = asyncio.run(main())
        np.testing.assert_array_equal(result, np.floor(good[3]) * 20)
        assert error.__notes__ == [f"rblnc request {error.request_id} failed at step p1_host (host)"]
        assert error.request_id != task.request_id
        assert threads == [threading.get_ident()] * 3  # all three on this thread
        stats = runtime.stats()
    assert stats["completed"] == engine.INLINE_WARMUP + 1 and stats["failed"] == 2 and stats["cancelled"] == 0
    assert set(stats["busy_s"]) == {"host", "NPU"} and all(s > 0 for s in stats["busy_s"].values())


def test_a_chain_never_measured_within_the_budget_never_runs_inline(monkeypatch):
    """Every chain is slower than hand-offs priced at a nanosecond: however many requests were
    measured, none runs on the caller's thread (it did, once INLINE_WARMUP were measured, until
    INLINE_WINDOW slow ones in a row had been counted: whole ~10 ms inferences on the event loop)."""
    monkeypatch.setattr(engine, "HOP_COST_S", 1e-9)
    compiled = rblnc.compile_from_onnx(gather_model(), dtype="fp32")
    x = np.array([[1, 2, 3, 4]], np.float32)
    threads = []

    def preprocess(x):
        threads.append(threading.get_ident())
        return x

    with rblnc.AsyncRuntime(compiled, preprocess=preprocess) as runtime:
        for _ in range(engine.INLINE_WARMUP + 2):
            np.testing.assert_array_equal(runtime.run(x).wait(timeout=30), x * 20)
    assert len(threads) == engine.INLINE_WARMUP + 2 and threading.get_ident() not in threads


def test_close_from_a_step_running_inline_is_refused(always_inline):
    compiled = rblnc.compile_from_onnx(gather_model(), dtype="fp32")
    x = np.array([[1, 2, 3, 4]], np.float32)
    with rblnc.AsyncRuntime(compiled, postprocess=lambda y: runtime.close() if y[0, 0] == 0 else y) as runtime:
        for _ in range(engine.INLINE_WARMUP):
            runtime.run(x).wait(timeout=30)
        with pytest.raises(RuntimeError, match="close\\(\\) was called from a completion callback"):
            runtime.run(0 * x).wait(timeout=30)
        assert not runtime.closed
        np.testing.assert_array_equal(runtime.run(x).wait(timeout=30), x * 20)
    assert runtime.closed


# -- several NPU lanes (functional) ---------------------------------------------------------------

def test_two_npu_lanes_compute_two_requests_at_once_and_each_exactly(monkeypatch, mixed):
    """The first two NPU steps wait for each other at a barrier: they pass only if two lanes
    compute at once (one lane would time the barrier out and fail both)."""
    from rblnc.emulator import NpuProgramRunner

    barrier = threading.Barrier(2, timeout=30)
    real_run = NpuProgramRunner.run
    calls = iter(range(10**9))

    def meeting(self, inputs):
        if next(calls) < 2:
            barrier.wait()
        return real_run(self, inputs)

    monkeypatch.setattr(NpuProgramRunner, "run", meeting)
    samples = _samples(100, seed=11)
    with rblnc.AsyncRuntime(mixed, npu_lanes=2, trace=True) as runtime:
        assert runtime.thread_count == 2 + runtime.host_workers

        async def main():
            return await asyncio.gather(*(runtime.async_run(x) for x in samples))

        outputs = asyncio.run(main())
        npu_tracks = {r.lane for r in runtime.timeline() if r.resource.value == "NPU"}
    assert npu_tracks == {"NPU 0", "NPU 1"}
    monkeypatch.setattr(NpuProgramRunner, "run", real_run)
    sync = rblnc.Runtime(mixed)
    for x, y in zip(samples, outputs):
        np.testing.assert_array_equal(y, sync.run(x))


def test_npu_lanes_option(mixed):
    with pytest.raises(ValueError, match="npu_lanes must be at least 1"):
        rblnc.AsyncRuntime(mixed, npu_lanes=0)
    with pytest.raises(ValueError, match="paced: 1, the modelled NPU"):
        rblnc.AsyncRuntime(paced_model(npu_ms=1), pace=True, npu_lanes=2)
    with rblnc.AsyncRuntime(paced_model(npu_ms=1), pace=True) as runtime:
        assert runtime.npu_lanes == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # lanes compute with their creator's count: one per core fits
        with rblnc.AsyncRuntime(mixed) as runtime:
            assert runtime.npu_lanes == min(runtime.parallel, len(os.sched_getaffinity(0)))
    finally:
        torch.set_num_threads(threads)
