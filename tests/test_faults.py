"""AsyncRuntime under faults: steps that raise, requests cancelled mid-step, close with 1,000
requests in flight, event loops closed under pending calls, raising callbacks, Ctrl-C in a
waiting thread, expiring waits, many event loops at once. Each ends with every request either
completed correctly (compared with the synchronous Runtime and onnxruntime) or failed with a
clear error, and with no thread left behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref

import numpy as np
import onnxruntime as ort
import pytest
from conftest import mixed_model
from test_async_runtime import gather_model, paced_model

import rblnc
from rblnc.emulator import NpuProgramRunner
from rblnc.errors import ExecutionError, RuntimeClosedError
from rblnc.runtime import engine
from rblnc.runtime.engine import Resource
from rblnc.runtime.host import HostSubgraphRunner

X_SHAPE = (1, 3, 8, 8)


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *X_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def mixed():
    """NPU -> host (Erf) -> NPU, unpaced."""
    return rblnc.compile_from_onnx(mixed_model(), dtype="fp32")


@pytest.fixture(scope="module")
def sync(mixed):
    """The synchronous Runtime every completed request is compared with, bit for bit."""
    runtime = rblnc.Runtime(mixed)
    return runtime.run


@contextlib.contextmanager
def no_thread_left():
    """Asserts that the block ends with exactly the Python threads it started with: the runtime's
    lanes are joined by close(), and a test's own helper threads are joined by the test."""
    before = set(threading.enumerate())
    yield
    left = set(threading.enumerate()) - before
    assert not left, f"threads left behind: {sorted(t.name for t in left)}"


def _assert_each_completed_or_cancelled(samples, outcomes, sync) -> tuple[int, int]:
    """Every outcome is the sync Runtime's exact result or a cancellation; returns (completed, cancelled)."""
    completed = cancelled = 0
    for x, outcome in zip(samples, outcomes, strict=True):
        if isinstance(outcome, (concurrent.futures.CancelledError, asyncio.CancelledError)):
            cancelled += 1
        else:
            assert isinstance(outcome, np.ndarray), repr(outcome)
            np.testing.assert_array_equal(outcome, sync(x))
            completed += 1
    return completed, cancelled


def _outcome(task, timeout: float = 60):
    try:
        return task.wait(timeout=timeout)
    except (concurrent.futures.CancelledError, RuntimeClosedError, ExecutionError) as exc:
        return exc


class StepGate:
    """A hook on the engine's run_step: the first step on `resource` signals `entered` and holds
    its lane until `release` is set, so a test can act while a step is mid-flight."""

    def __init__(self, monkeypatch, resource: Resource):
        self.entered = threading.Event()
        self.release = threading.Event()
        real = engine.run_step

        def gated(step, values, ready_at, lane, pace_scale):
            if step.resource is resource and not self.entered.is_set():
                self.entered.set()
                self.release.wait(timeout=60)
            return real(step, values, ready_at, lane, pace_scale)

        monkeypatch.setattr(engine, "run_step", gated)

    def release_when_draining(self, monkeypatch) -> None:
        """Releases the gate when close() starts waiting for what is in flight: admission is
        closed by then, and with cancel=True every request has been cancelled."""
        real = engine.Engine.drain

        def drain(engine_self, timeout=None):
            self.release.set()
            return real(engine_self, timeout)

        monkeypatch.setattr(engine.Engine, "drain", drain)


# -- a step that raises, for some requests only ----------------------------------------------------

def test_onnxruntime_failing_in_a_host_partition_fails_only_those_requests_from_every_client():
    """The host partition's Gather reads past its table for 1 request in 7: onnxruntime raises.
    600 requests from two event loops and two threads; each good one equals the sync Runtime and
    onnxruntime, each bad one raises the sync Runtime's ExecutionError, naming its request."""
    source = gather_model()
    compiled = rblnc.compile_from_onnx(source, dtype="fp32")
    session = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    sync = rblnc.Runtime(compiled)
    rng = np.random.default_rng(1)
    samples = (rng.random((4, 150, 1, 4)) * 10).astype(np.float32)
    samples[:, ::7, 0, 2] = 13.5
    outcomes: dict[int, list] = {}

    def loop_client(index: int) -> None:
        async def main():
            return await asyncio.gather(*(runtime.async_run(x) for x in samples[index]), return_exceptions=True)
        outcomes[index] = asyncio.run(main())

    def thread_client(index: int) -> None:
        tasks = [runtime.run(x) for x in samples[index]]
        outcomes[index] = [_outcome(t) for t in tasks]

    with no_thread_left():
        with rblnc.AsyncRuntime(compiled, max_inflight=32) as runtime:
            clients = [threading.Thread(target=loop_client, args=(0,)), threading.Thread(target=loop_client, args=(1,)),
                       threading.Thread(target=thread_client, args=(2,)), threading.Thread(target=thread_client, args=(3,))]
            for client in clients:
                client.start()
            for client in clients:
                client.join(timeout=120)
        stats = runtime.stats()
    bad = good = 0
    for index in range(4):
        for x, outcome in zip(samples[index], outcomes[index], strict=True):
            if x[0, 2] > 10:
                with pytest.raises(ExecutionError) as sync_error:
                    sync.run(x)
                with pytest.raises(Exception, match="indices element out of data bounds"):
                    session.run(None, {"x": x})
                assert isinstance(outcome, ExecutionError) and str(outcome) == str(sync_error.value)
                assert "partition p1_host (host) failed" in str(outcome)
                assert f"rblnc request {outcome.request_id} failed at step p1_host (host)" in outcome.__notes__
                bad += 1
            else:
                np.testing.assert_array_equal(outcome, sync.run(x))
                np.testing.assert_array_equal(outcome, session.run(None, {"x": x})[0])
                good += 1
    assert (good, bad) == (512, 88)
    assert stats["completed"] == 512 and stats["failed"] == 88 and stats["cancelled"] == 0


def test_a_failing_host_partition_prints_nothing_itself(capfd, tmp_path):
    """The failure is the request's error, and only that: onnxruntime used to print it on stderr
    too (once per failed request, in red), and `rblnc run` gave two lines for one error."""
    compiled = rblnc.compile_from_onnx(gather_model(), dtype="fp32")
    bad = np.array([[1, 12.5, 2, 3]], np.float32)
    with no_thread_left():
        with rblnc.AsyncRuntime(compiled) as runtime:
            tasks = [runtime.run(bad) for _ in range(5)]
            for task in tasks:
                with pytest.raises(ExecutionError, match="indices element out of data bounds"):
                    task.wait(timeout=30)
    with pytest.raises(ExecutionError):
        rblnc.Runtime(compiled).run(bad)
    assert capfd.readouterr() == ("", "")
    compiled.save(tmp_path / "gather.rbln")
    np.savez(tmp_path / "bad.npz", x=bad)
    cli = subprocess.run([sys.executable, "-m", "rblnc.cli", "run", str(tmp_path / "gather.rbln"),
                          str(tmp_path / "bad.npz")], capture_output=True, text=True)
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr.startswith("error: partition p1_host (host) failed: ") and cli.stderr.count("\n") == 1, cli.stderr


@pytest.mark.parametrize("error", [ValueError, MemoryError, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("runner", [HostSubgraphRunner, NpuProgramRunner], ids=["host", "npu"])
def test_a_runner_raising_for_some_requests_fails_them_as_the_sync_runtime_does(monkeypatch, mixed, sync, runner,
                                                                                 error):
    """The host (or NPU) partition raises `error` for requests whose values hold NaN (their
    input does; so does everything computed from it). An Exception becomes the sync Runtime's
    ExecutionError; a BaseException reaches the request's waiter as it reaches a sync caller.
    The lanes survive and the other requests are exact."""
    samples = _samples(60, seed=2)
    marked = set(range(3, 60, 10))
    for i in marked:
        samples[i, 0, 1] = np.nan
    expected = {i: sync(x) for i, x in enumerate(samples) if i not in marked}
    real_run = runner.run

    def faulty(self, inputs):
        if any(np.isnan(v).any() for v in inputs.values()):
            raise error("injected fault")
        return real_run(self, inputs)

    monkeypatch.setattr(runner, "run", faulty)
    sync_errors = {}
    for i in marked:
        try:
            rblnc.Runtime(mixed).run(samples[i])
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt and SystemExit are the point
            sync_errors[i] = exc

    with no_thread_left():
        with rblnc.AsyncRuntime(mixed) as runtime:
            tasks = [runtime.run(x) for x in samples]
            outcomes = []
            for task in tasks:
                try:
                    outcomes.append(task.wait(timeout=60))
                except BaseException as exc:  # noqa: B036
                    outcomes.append(exc)
        stats = runtime.stats()
    step = "p0_npu" if runner is NpuProgramRunner else "p1_host"
    device = "npu" if runner is NpuProgramRunner else "host"
    for i, (task, outcome) in enumerate(zip(tasks, outcomes)):
        if i in marked:
            assert type(outcome) is type(sync_errors[i]) and str(outcome) == str(sync_errors[i])
            if issubclass(error, Exception):
                assert isinstance(outcome, ExecutionError)
                assert str(outcome) == f"partition {step} ({device}) failed: injected fault"
            else:
                assert type(outcome) is error and str(outcome) == "injected fault"
            resource = "NPU" if runner is NpuProgramRunner else "host"
            assert outcome.__notes__ == [f"rblnc request {task.request_id} failed at step {step} ({resource})"]
        else:
            np.testing.assert_array_equal(outcome, expected[i])
    assert stats["failed"] == len(marked) and stats["completed"] == 60 - len(marked)


# -- cancelled mid-step ------------------------------------------------------------------------------

@pytest.mark.parametrize("resource", [Resource.H2D, Resource.NPU, Resource.D2H, Resource.HOST], ids=lambda r: r.name)
def test_cancel_mid_step_stops_the_chain_there_and_frees_the_device(monkeypatch, mixed, sync, resource):
    """A request cancelled while one of its steps runs (a DMA copy, NPU compute, the host) is
    cancelled at once for its caller; the step finishes on its lane, no later step runs, and
    its device slot goes to the next request (parallel=1, so a leak would stall it)."""
    compiled = paced_model(npu_ms=40, dma_ms=40, host_ms=40)
    gate = StepGate(monkeypatch, resource)
    first_x, second_x = _samples(2, seed=3)
    with no_thread_left():
        runtime = rblnc.AsyncRuntime(compiled, pace=True, parallel=1, trace=True)
        first = runtime.run(first_x)
        second = runtime.run(second_x)
        assert gate.entered.wait(timeout=30)
        assert first.cancel() is True
        assert first.done() and first.cancelled()  # for the caller, at once, while the step still runs
        with pytest.raises(concurrent.futures.CancelledError, match=f"request {first.request_id} was cancelled"):
            first.wait(timeout=0)
        gate.release.set()
        np.testing.assert_array_equal(second.wait(timeout=60), sync(second_x))
        runtime.close()
    chain = [r for r in runtime.timeline() if r.request == first.request_id]
    assert chain[-1].resource is resource and not chain[-1].failed  # the step ran to its end on its lane
    planned = [s.name for s in runtime.steps]
    assert [r.step for r in chain] == planned[:len(chain)]  # and nothing after it ran
    assert runtime.stats()["cancelled"] == 1 and runtime.stats()["completed"] == 1


def test_cancel_while_a_step_runs_that_then_fails_returns_the_device_slot(monkeypatch, mixed, sync):
    """The host step (between the two NPU partitions, so the request holds the device) is
    cancelled while it runs, and then raises. Before the fix the slot was never given back and
    every later request waited for it forever (parallel=1)."""
    entered, release = threading.Event(), threading.Event()
    real_run = HostSubgraphRunner.run

    def stuck_then_raises(self, inputs):
        if not entered.is_set():
            entered.set()
            release.wait(timeout=60)
            raise ValueError("injected fault after the cancel")
        return real_run(self, inputs)

    monkeypatch.setattr(HostSubgraphRunner, "run", stuck_then_raises)
    samples = _samples(4, seed=4)
    with no_thread_left():
        with rblnc.AsyncRuntime(mixed, parallel=1) as runtime:
            first = runtime.run(samples[0])
            assert entered.wait(timeout=30)
            assert first.cancel() is True
            release.set()
            rest = [runtime.run(x) for x in samples[1:]]
            for x, task in zip(samples[1:], rest):
                np.testing.assert_array_equal(task.wait(timeout=30), sync(x))
    with pytest.raises(concurrent.futures.CancelledError):
        first.wait()
    assert runtime.stats()["cancelled"] == 1 and runtime.stats()["completed"] == 3


# -- closed with 1,000 requests in flight -------------------------------------------------------------

@pytest.mark.parametrize("how", ["graceful", "cancel", "timeout"])
def test_close_with_a_thousand_requests_in_flight(monkeypatch, mixed, sync, how):
    """1,000 requests admitted and held behind a gated first NPU step; then close(). Graceful:
    all 1,000 are exact. cancel=True / timeout: each is exact or cancelled, none lost."""
    gate = StepGate(monkeypatch, Resource.NPU)
    samples = _samples(1000, seed=5)
    with no_thread_left():
        runtime = rblnc.AsyncRuntime(mixed, max_inflight=1000)
        tasks = [runtime.run(x) for x in samples]
        assert gate.entered.wait(timeout=30)
        assert runtime.inflight() == 1000
        if how == "graceful":
            gate.release.set()
            runtime.close()
        elif how == "cancel":
            gate.release_when_draining(monkeypatch)
            runtime.close(cancel=True)
        else:
            gate.release.set()
            runtime.close(timeout=0.02)
    assert all(t.done() for t in tasks) and runtime.inflight() == 0
    completed, cancelled = _assert_each_completed_or_cancelled(samples, [_outcome(t, 0) for t in tasks], sync)
    assert completed + cancelled == 1000
    stats = runtime.stats()
    assert (stats["completed"], stats["cancelled"], stats["failed"]) == (completed, cancelled, 0)
    if how == "graceful":
        assert completed == 1000
    if how == "cancel":
        assert cancelled == 1000  # the gated step ran to its end, but its request was cancelled first
    with pytest.raises(RuntimeClosedError, match="is closed"):
        runtime.run(samples[0])


@pytest.mark.parametrize("cancel", [False, True], ids=["graceful", "cancel"])
def test_close_with_a_thousand_async_runs_pending(monkeypatch, mixed, sync, cancel):
    """1,000 async_run calls on one loop, 256 admitted and the rest waiting for admission; the
    runtime is closed from another thread. Admitted calls end exact (or cancelled); waiting ones
    get RuntimeClosedError; nothing is left pending on the loop."""
    gate = StepGate(monkeypatch, Resource.NPU)
    samples = _samples(1000, seed=6)
    with no_thread_left():
        runtime = rblnc.AsyncRuntime(mixed, max_inflight=256)

        gate.release_when_draining(monkeypatch)
        seen = []

        def closer():
            gate.entered.wait(timeout=30)
            deadline = time.monotonic() + 30
            while runtime.waiting() < 1000 - 256 and time.monotonic() < deadline:
                time.sleep(0.005)  # polling a condition, not waiting for time to pass
            seen.append((runtime.inflight(), runtime.waiting()))
            runtime.close(cancel=cancel)

        async def main():
            thread = threading.Thread(target=closer)
            thread.start()
            outcomes = await asyncio.gather(*(runtime.async_run(x) for x in samples), return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
            return outcomes

        outcomes = asyncio.run(asyncio.wait_for(main(), timeout=120))
    assert seen == [(256, 1000 - 256)]  # at close: 256 admitted (held by the gate), 744 waiting
    refused = [o for o in outcomes if isinstance(o, RuntimeClosedError)]
    assert len(refused) == 1000 - 256
    assert all("closed while this request waited to be admitted" in str(o) for o in refused)
    admitted = [(x, o) for x, o in zip(samples, outcomes) if not isinstance(o, RuntimeClosedError)]
    completed, cancelled = _assert_each_completed_or_cancelled(*zip(*admitted), sync)
    assert completed + cancelled == 256
    assert (completed, cancelled) == ((0, 256) if cancel else (256, 0))
    assert runtime.inflight() == 0 and runtime.waiting() == 0


# -- the event loop closed under pending calls -------------------------------------------------------

def test_event_loop_closed_under_pending_async_runs(monkeypatch, mixed, sync):
    """A loop is closed (not run to completion, tasks not cancelled) with 300 async_run calls
    pending: 64 admitted and in the engine (held behind a gated NPU step), the rest waiting for
    admission. The engine cannot deliver to it; it must not crash, hang or keep the loop alive,
    and must go on serving."""
    gate = StepGate(monkeypatch, Resource.NPU)
    loop_ref, pending_at_close = [], []
    with no_thread_left():
        runtime = rblnc.AsyncRuntime(mixed, max_inflight=64)

        def abandoning_client():
            loop = asyncio.new_event_loop()
            loop_ref.append(weakref.ref(loop))
            for x in _samples(300, seed=7):
                loop.create_task(runtime.async_run(x))

            async def all_started():
                deadline = time.monotonic() + 30
                while runtime.waiting() < 300 - 64 and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)  # polling a condition

            loop.run_until_complete(all_started())
            pending_at_close.append((runtime.inflight(), runtime.waiting()))
            loop.close()

        client = threading.Thread(target=abandoning_client)
        client.start()
        client.join(timeout=60)
        assert pending_at_close == [(64, 300 - 64)]
        gate.release.set()
        gc.collect()  # destroys the abandoned tasks ("Task was destroyed but it is pending!")
        deadline = time.monotonic() + 30
        while (runtime.inflight() or runtime.waiting()) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a condition
        assert runtime.inflight() == 0 and runtime.waiting() == 0
        gc.collect()
        assert loop_ref[0]() is None, "the runtime keeps the closed loop alive"
        # Every admission slot came back: a full batch from a new loop goes through.
        samples = _samples(100, seed=8)

        async def main():
            return await asyncio.gather(*(runtime.async_run(x) for x in samples))

        for x, y in zip(samples, asyncio.run(main())):
            np.testing.assert_array_equal(y, sync(x))
        runtime.close()
    stats = runtime.stats()
    assert stats["failed"] == 0 and stats["completed"] >= 100


# -- a user's callback that raises -------------------------------------------------------------------

@pytest.mark.parametrize("error", [ZeroDivisionError("in a callback"), KeyboardInterrupt(), SystemExit(2)],
                         ids=lambda e: type(e).__name__)
def test_a_raising_done_callback_does_not_stop_the_lane(monkeypatch, mixed, sync, caplog, error):
    """Callbacks run on the lane that finished the request. One that raises — even a
    BaseException, which used to end the lane's thread, so the next request waited forever —
    is logged; the request's other callbacks still run, and later requests complete."""
    gate = StepGate(monkeypatch, Resource.NPU)  # holds the request, so the callbacks are added before it ends
    samples = _samples(6, seed=9)
    after = []
    caplog.set_level(logging.ERROR, logger="rblnc.runtime")
    with no_thread_left():
        with rblnc.AsyncRuntime(mixed) as runtime:
            first = runtime.run(samples[0])

            def raising(_task):
                raise error

            first.add_done_callback(raising)
            first.add_done_callback(lambda task: after.append(task.request_id))
            assert not first.done()
            gate.release.set()
            np.testing.assert_array_equal(first.wait(timeout=30), sync(samples[0]))
            rest = [runtime.run(x) for x in samples[1:]]
            for x, task in zip(samples[1:], rest):
                np.testing.assert_array_equal(task.wait(timeout=30), sync(x))
    assert after == [first.request_id]
    assert any(f"completion callback of request {first.request_id} raised" in r.getMessage()
               for r in caplog.records)


# -- Ctrl-C in a waiting thread ------------------------------------------------------------------------

@contextlib.contextmanager
def sigint_once_blocked(function: str = "wait", file: str = "threading.py"):
    """Delivers a real SIGINT to the main thread (Python raises KeyboardInterrupt in it,
    interrupting a blocking wait), as a user pressing Ctrl-C would, once the main thread is
    blocked in `function` of `file`, so it never lands halfway through the call being tested."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    stop = threading.Event()

    def deliver() -> None:
        while not stop.wait(0.002):
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == function and frame.f_code.co_filename.endswith(file):
                signal.pthread_kill(main, signal.SIGINT)
                return

    sender = threading.Thread(target=deliver, name="sigint-sender")
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_waiting_for_a_result_leaves_the_request_running(monkeypatch, mixed, sync):
    gate = StepGate(monkeypatch, Resource.NPU)  # the request cannot finish before the Ctrl-C
    x = _samples(1, seed=10)[0]
    with no_thread_left():
        with rblnc.AsyncRuntime(mixed) as runtime:
            task = runtime.run(x)
            with pytest.raises(KeyboardInterrupt), sigint_once_blocked():
                task.wait()
            assert not task.done()
            gate.release.set()
            np.testing.assert_array_equal(task.wait(timeout=30), sync(x))


def test_ctrl_c_while_waiting_for_admission_gives_the_slot_back(monkeypatch, mixed, sync):
    """run() blocked on max_inflight=1 is interrupted. Before the fix its place in the queue
    stayed, the freed slot went to it, and every later call waited forever."""
    gate = StepGate(monkeypatch, Resource.NPU)  # the first request holds the only slot until the Ctrl-C
    samples = _samples(3, seed=11)
    with no_thread_left():
        with rblnc.AsyncRuntime(mixed, max_inflight=1) as runtime:
            first = runtime.run(samples[0])
            with pytest.raises(KeyboardInterrupt), sigint_once_blocked():
                runtime.run(samples[1])
            assert runtime.waiting() == 0
            gate.release.set()
            np.testing.assert_array_equal(first.wait(timeout=30), sync(samples[0]))
            outcome = []
            later = threading.Thread(target=lambda: outcome.append(runtime.run(samples[2]).wait(timeout=30)))
            later.start()
            later.join(timeout=30)
            assert outcome, "a call after the interrupted one was never admitted"
            np.testing.assert_array_equal(outcome[0], sync(samples[2]))
    assert runtime.stats()["completed"] == 2


def test_ctrl_c_during_a_graceful_close_then_close_again(monkeypatch, mixed, sync):
    """close() waits for the requests in flight; Ctrl-C interrupts it. A second close (here
    with cancel=True) must still stop the threads — it used to return at once, leaving them."""
    gate = StepGate(monkeypatch, Resource.NPU)  # nothing finishes before the Ctrl-C
    samples = _samples(6, seed=12)
    with no_thread_left():
        runtime = rblnc.AsyncRuntime(mixed, parallel=1)
        tasks = [runtime.run(x) for x in samples]
        with pytest.raises(KeyboardInterrupt), sigint_once_blocked():
            runtime.close()
        assert runtime.closed and runtime.inflight() == 6
        gate.release_when_draining(monkeypatch)
        runtime.close(cancel=True)
    completed, cancelled = _assert_each_completed_or_cancelled(samples, [_outcome(t, 0) for t in tasks], sync)
    assert (completed, cancelled) == (0, 6)


def test_ctrl_c_in_asyncio_run_cancels_the_pending_requests(monkeypatch, mixed, sync):
    """asyncio.run turns Ctrl-C into cancelling its main task: the awaiting calls are
    cancelled, and so are their requests (8 admitted, the other 32 waiting); nothing stays
    in flight."""
    gate = StepGate(monkeypatch, Resource.NPU)  # nothing finishes before the Ctrl-C
    samples = _samples(40, seed=13)
    with no_thread_left():
        with rblnc.AsyncRuntime(mixed, max_inflight=8) as runtime:
            async def main():
                return await asyncio.gather(*(runtime.async_run(x) for x in samples))

            with pytest.raises(KeyboardInterrupt), sigint_once_blocked("select", "selectors.py"):
                asyncio.run(main())
            assert runtime.inflight() == 0 and runtime.waiting() == 0
            gate.release.set()
            stats = runtime.stats()
            assert (stats["completed"], stats["cancelled"]) == (0, 8)
            np.testing.assert_array_equal(runtime.run(samples[0]).wait(timeout=30), sync(samples[0]))


# -- waits that expire ---------------------------------------------------------------------------------

def test_expiring_waits_leave_requests_running_and_wait_for_cancels_them(monkeypatch, sync):
    gate = StepGate(monkeypatch, Resource.NPU)  # the first waits expire for certain
    compiled = paced_model(npu_ms=10)
    samples = _samples(30, seed=14)
    with no_thread_left():
        with rblnc.AsyncRuntime(compiled, pace=True, max_inflight=4) as runtime:
            tasks = [runtime.run(x) for x in samples[:4]]
            for task in tasks:
                with pytest.raises(TimeoutError, match=f"request {task.request_id} did not finish within 0.001 s"):
                    task.wait(timeout=0.001)
            gate.release.set()
            for x, task in zip(samples, tasks):
                np.testing.assert_array_equal(task.wait(timeout=30), sync(x))

            async def main():
                # Timed out while admitted or while waiting for admission: either way cancelled,
                # and the slot comes back (max_inflight=4, so a leak would stall the last batch).
                timed_out = await asyncio.gather(*(asyncio.wait_for(runtime.async_run(x), 0.005)
                                                   for x in samples[4:20]), return_exceptions=True)
                assert all(isinstance(o, (asyncio.TimeoutError, np.ndarray)) for o in timed_out)
                return await asyncio.gather(*(runtime.async_run(x) for x in samples[20:]))

            for x, y in zip(samples[20:], asyncio.run(main())):
                np.testing.assert_array_equal(y, sync(x))
            deadline = time.monotonic() + 30
            while runtime.inflight() and time.monotonic() < deadline:
                time.sleep(0.01)  # polling a condition
            assert runtime.inflight() == 0 and runtime.waiting() == 0


# -- many event loops at once ---------------------------------------------------------------------------

def test_many_event_loops_in_threads_at_once(mixed, sync):
    """12 threads each run their own event loop with 40 async_run calls, and 4 more threads call
    run() and wait, all on one runtime with room for 16: every result is the sync Runtime's."""
    samples = _samples(16 * 40, seed=15).reshape(16, 40, *X_SHAPE)
    results: dict[int, list] = {}
    barrier = threading.Barrier(16)

    def loop_client(index: int) -> None:
        async def main():
            return await asyncio.gather(*(runtime.async_run(x) for x in samples[index]))
        barrier.wait()
        results[index] = asyncio.run(main())

    def thread_client(index: int) -> None:
        barrier.wait()
        results[index] = [runtime.run(x).wait(timeout=60) for x in samples[index]]

    with no_thread_left():
        with rblnc.AsyncRuntime(mixed, max_inflight=16) as runtime:
            clients = [threading.Thread(target=loop_client if i < 12 else thread_client, args=(i,)) for i in range(16)]
            for client in clients:
                client.start()
            for client in clients:
                client.join(timeout=180)
    assert sorted(results) == list(range(16))
    for index in range(16):
        for x, y in zip(samples[index], results[index], strict=True):
            np.testing.assert_array_equal(y, sync(x))
    assert runtime.stats()["completed"] == 640


# -- a step that never returns ----------------------------------------------------------------------------

def test_close_with_timeout_returns_even_if_a_step_hangs(monkeypatch, mixed, sync):
    """A host step hangs. close(timeout=...) cancels its request and returns instead of waiting
    for the step; the lane's thread ends by itself once the step returns."""
    entered, release = threading.Event(), threading.Event()
    real_run = HostSubgraphRunner.run

    def hangs(self, inputs):
        entered.set()
        release.wait(timeout=60)
        return real_run(self, inputs)

    monkeypatch.setattr(HostSubgraphRunner, "run", hangs)
    with no_thread_left():
        runtime = rblnc.AsyncRuntime(mixed, host_workers=1)
        task = runtime.run(_samples(1, seed=16)[0])
        assert entered.wait(timeout=30)
        unhang = threading.Timer(10, release.set)  # a close that waited for the step would end only then
        unhang.start()
        runtime.close(timeout=0.2)
        assert not release.is_set(), "close(timeout=0.2) waited for the hung step"
        unhang.cancel()
        unhang.join()
        assert task.cancelled()
        # The hung step's thread, left to finish it: the host lane's, or the NPU lane's when that
        # lane ran the request's next step itself (functional, the host lane idle: Engine._continue).
        stuck = [t for t in threading.enumerate() if t.name.startswith("rblnc-")]
        assert len(stuck) == 1
        release.set()
        stuck[0].join(timeout=30)


# -- process-wide state ---------------------------------------------------------------------------------

def test_requests_never_swap_the_process_warning_filters(mixed, sync):
    """The NPU runner converted every input under warnings.catch_warnings(), which swaps the
    process-wide filter list for a copy and back: two threads in it at once (several runtimes'
    lanes, or a lane and a sync Runtime) left "ignore UserWarning" installed for good. A watcher
    thread checks, while 300 requests run (with a short GIL switch interval so it looks often),
    that `warnings.filters` is never replaced; before the fix it saw it replaced ~300,000 times."""
    samples = _samples(300, seed=17)
    with no_thread_left():
        with rblnc.AsyncRuntime(mixed) as runtime:  # made first: constants are converted at load
            original, before = warnings.filters, list(warnings.filters)
            swapped, stop = [], threading.Event()

            def watch() -> None:
                while not stop.is_set() and not swapped:
                    if warnings.filters is not original:
                        swapped.append(True)

            interval = sys.getswitchinterval()
            sys.setswitchinterval(1e-5)
            watcher = threading.Thread(target=watch, name="filter-watcher")
            watcher.start()
            try:
                tasks = [runtime.run(x) for x in samples]
                outcomes = [task.wait(timeout=60) for task in tasks]
            finally:
                stop.set()
                watcher.join()
                sys.setswitchinterval(interval)
    assert not swapped, "a request replaced the process-wide warnings.filters"
    assert warnings.filters is original and warnings.filters == before
    for x, y in zip(samples, outcomes):
        np.testing.assert_array_equal(y, sync(x))
