"""`rblnc.AsyncRuntime`: many requests in flight at once, their host, DMA and NPU steps overlapped;
results come back as asyncio awaitables (`async_run`) or as tasks to wait on (`run`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from collections import deque
from typing import Any, Callable

import numpy as np

from ..emulator import compute_lanes, thread_settings
from ..emulator.profile import Profile
from ..errors import RuntimeClosedError
from .engine import (
    NOT_INLINE, Engine, Request, RequestState, Step, StepRecord, active_steps, clock, finished_request,
    next_request_id, pace_scale_of, plan_steps,
)

from .executor import ModelExecutor
from .io import bind_inputs, deliver_outputs
from .runtime import check_runtime_options, describe, profile_of, resolve_artifact, trace_capacity_of, warn_if_unpaceable
from .stages import OUT, RAW, RESULT, with_stages
from .staging import StagingPool

DEFAULT_MAX_INFLIGHT = 64
MAX_DEFAULT_PARALLEL = 8


class AsyncTask:
    """A submitted request: `wait(timeout=None)` returns its outputs (or raises what it raised),
    `done()`, `cancel()`. Usable from any thread, with or without an event loop."""

    __slots__ = ("_request", "_engine")

    def __init__(self, request: Request, engine: Engine):
        self._request = request
        self._engine = engine

    @property
    def request_id(self) -> int:
        return self._request.id

    def wait(self, timeout: float | None = None):
        """The outputs, as `Runtime.run` gives them. Raises the request's own exception (a note
        names the request), `concurrent.futures.CancelledError` if it was cancelled, or
        `TimeoutError` if `timeout` seconds pass first (the request goes on)."""
        if not self._request.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        return _outcome(self._request)

    def done(self) -> bool:
        return self._request.done

    def cancelled(self) -> bool:
        return self._request.state is RequestState.CANCELLED

    def cancel(self) -> bool:
        """Stops the request: True unless it had already finished. A step already running
        completes on its resource, nothing after it runs, and wait() raises CancelledError."""
        return self._engine.cancel(self._request)

    def add_done_callback(self, fn: Callable[["AsyncTask"], None]) -> None:
        """Calls fn(task) once the request is finished, on the thread that finished it (at once if it
        has). An exception fn raises is logged (logger "rblnc.runtime") and ignored."""
        self._request.add_done_callback(lambda _: fn(self))

    @property
    def latency(self) -> float | None:
        """Seconds from submission to completion, once done."""
        r = self._request
        return r.finished_at - r.submitted_at if r.done else None

    def __repr__(self) -> str:
        return f"<rblnc.AsyncTask request={self.request_id} {self._request.state.value}>"


def _outcome(request: Request):
    if request.state is RequestState.DONE:
        return request.result
    if request.state is RequestState.CANCELLED:
        raise concurrent.futures.CancelledError(f"request {request.id} was cancelled")
    raise request.error


class _Slots:
    """Admission: at most `capacity` requests in flight. Threads block for a slot; coroutines
    await one on their own loop (no thread parked per call). Served first come, first served."""

    def __init__(self, capacity: int):
        self._lock = threading.Lock()
        self._free = capacity
        self._waiters: deque[_Waiter] = deque()
        self._closed = False

    def acquire(self) -> None:
        with self._lock:
            self._raise_if_closed()
            if self._free and not self._waiters:
                self._free -= 1
                return
            waiter = _ThreadWaiter()
            self._waiters.append(waiter)
        try:
            waiter.event.wait()
        except BaseException:  # Ctrl-C in the waiting thread: withdraw, or pass on a slot just granted
            self._withdraw(waiter)
            raise
        if not waiter.granted:
            raise RuntimeClosedError("the runtime was closed while this request waited to be admitted")

    def try_acquire(self) -> bool:
        """A slot at once if one is free and nobody waits (then no coroutine need be awaited)."""
        with self._lock:
            self._raise_if_closed()
            if self._free and not self._waiters:
                self._free -= 1
                return True
            return False

    async def acquire_async(self, mailbox: "_Mailbox") -> None:
        with self._lock:
            self._raise_if_closed()
            if self._free and not self._waiters:
                self._free -= 1
                return
            waiter = _LoopWaiter(mailbox, asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise

    def _withdraw(self, waiter: "_Waiter") -> None:
        """A caller stopped waiting: takes it out of the queue, or passes on the slot it was given."""
        with self._lock:
            handed_over = waiter.granted
            if not handed_over and waiter in self._waiters:
                self._waiters.remove(waiter)
        if handed_over:
            self.release()  # the slot reached a caller that is gone: pass it on

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                if self._waiters.popleft().grant():
                    return
            self._free += 1

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            waiter.refuse()

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise RuntimeClosedError("the runtime is closed")


class _ThreadWaiter:
    __slots__ = ("event", "granted")

    def __init__(self):
        self.event = threading.Event()
        self.granted = False

    def grant(self) -> bool:
        self.granted = True
        self.event.set()
        return True

    def refuse(self) -> None:
        self.event.set()


class _LoopWaiter:
    __slots__ = ("mailbox", "future", "granted")

    def __init__(self, mailbox: "_Mailbox", future: asyncio.Future):
        self.mailbox, self.future, self.granted = mailbox, future, False

    def grant(self) -> bool:
        # False when its loop is closed: nobody is waiting any more.
        self.granted = self.mailbox.post(_settle_future, self.future, None, None)
        return self.granted

    def refuse(self) -> None:
        error = RuntimeClosedError("the runtime was closed while this request waited to be admitted")
        self.mailbox.post(_settle_future, self.future, None, error)


class _Mailbox:
    """Hands calls from the runtime's threads to one event loop, a batch per wake-up of the loop:
    one `call_soon_threadsafe` (a write to the loop's self-pipe) for all the calls posted until
    the loop runs them, where one per completed request kept the loop and the lanes trading the
    GIL and the pipe for every request. Holds its loop weakly: a closed loop is not kept alive."""

    __slots__ = ("_loop", "_calls", "_scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)
        self._calls: deque = deque()
        self._scheduled = False

    def post(self, fn: Callable, *args: Any) -> bool:
        """Queues fn(*args) to run on the loop; False if the loop is closed."""
        loop = self._loop()
        if loop is None or loop.is_closed():
            self._calls.clear()  # what waits there (futures of the loop) is nobody's any more
            return False
        self._calls.append((fn, args))
        # The loop clears the flag before it takes the calls, so a call appended after the flag
        # was seen set is still taken by that pass (deque and flag operations are atomic).
        if not self._scheduled:
            self._scheduled = True
            try:
                loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # closed meanwhile
                self._calls.clear()
                return False
        return True

    def _run(self) -> None:
        self._scheduled = False
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            fn(*args)


_Waiter = _ThreadWaiter | _LoopWaiter


def _settle_future(future: asyncio.Future, result: Any, error: BaseException | None, cancel: bool = False) -> None:
    if future.done():
        return
    if cancel:
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve_on_loop(mailbox: _Mailbox, future: asyncio.Future, request: Request) -> None:
    """Completion callback (on an engine thread): hands the outcome to the awaiting loop (dropped
    if that loop was closed before the result arrived)."""
    if request.state is RequestState.DONE:
        mailbox.post(_settle_future, future, request.result, None)
    elif request.state is RequestState.FAILED:
        mailbox.post(_settle_future, future, None, request.error)
    else:
        mailbox.post(_settle_future, future, None, None, True)


def default_parallel(steps: list[Step], artifact) -> int:
    """Enough for each device-side step of the chain to hold a different request (2 at least,
    8 at most), fewer if that many requests' activations do not fit in device DRAM."""
    device = [i for i, s in enumerate(steps) if s.resource.on_device]
    if not device:
        return 1
    span = device[-1] - device[0] + 1
    parallel = max(2, min(MAX_DEFAULT_PARALLEL, span))
    programs = [p.npu_program for p in artifact.partitions if p.npu_program is not None]
    per_request = max((p.peak_dram_bytes for p in programs), default=0)
    weights = sum(p.weight_bytes for p in programs)
    if per_request:
        parallel = max(1, min(parallel, (artifact.target.dram_bytes - weights) // per_request))
    return int(parallel)


class AsyncRuntime:
    """Runs a compiled model with many requests in flight, as the vendor SDK's `rebel.AsyncRuntime`:

        rt = rblnc.AsyncRuntime("model.rbln")           # or compiled.create_async_runtime()
        y = await rt.async_run(x)                        # asyncio
        task = rt.run(x); y = task.wait()                # any thread, any or no event loop

    Each request is a chain of steps — NPU partitions as H2D DMA, NPU compute, D2H DMA; host
    partitions on a host thread pool — and steps of different requests overlap, each resource
    serving its queue in order. `parallel`: how many requests the device side holds at once
    (2 = double buffering; default: enough for every device step of the chain). `max_inflight`:
    requests admitted at once; further calls wait (back-pressure). `pace=True`: every step lasts
    its modelled time (a number: that many times longer). Inputs are copied when admitted, so
    the caller may reuse its buffers at once. `preprocess(*args, **kwargs)` and
    `postprocess(outputs)` are the user's host work before and after the model (as on
    `Runtime`): each runs on the host lanes as a step of the request's chain, overlapping other
    requests' device steps; `run`/`async_run` then take what preprocess takes and return what
    postprocess returns. `npu_lanes` (functional only): NPU steps of different requests computed
    at once by the emulator; default as many as the creator's torch threads fit in the cores."""

    def __init__(self, model: Any, *, device: int = 0, tensor_type: str = "np", parallel: int | None = None,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, pace: bool | float = False,
                 host_workers: int | None = None, host_threads: int | None = None, trace: bool | int = False,
                 preprocess: Callable | None = None, postprocess: Callable | None = None,
                 profile: bool = False, npu_lanes: int | None = None):
        check_runtime_options(device, tensor_type)
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.artifact, self.source = resolve_artifact(model)
        self.device = device
        self.tensor_type = tensor_type
        self.pace_scale = pace_scale_of(pace)
        self.max_inflight = max_inflight
        executor = ModelExecutor(self.artifact, host_threads=host_threads)
        self._profile = Profile() if profile else None
        if self._profile is not None:
            executor.profile_into(self._profile)
        self.preprocess, self.postprocess = preprocess, postprocess
        self.steps: list[Step] = with_stages(plan_steps(executor), self.artifact, preprocess, postprocess,
                                             tensor_type)
        warn_if_unpaceable(self.steps, self.pace_scale, self.source)
        active = active_steps(self.steps, self.pace_scale)
        self.parallel = parallel if parallel is not None else default_parallel(active, self.artifact)
        self.host_workers = host_workers or max(2, min(4, os.cpu_count() or 2))
        if npu_lanes is not None and (npu_lanes < 1 or self.pace_scale and npu_lanes > 1):
            raise ValueError(f"npu_lanes must be at least 1 (paced: 1, the modelled NPU), got {npu_lanes}")
        # Paced, the NPU is the modelled device: one. Functional, the emulator computes NPU steps on
        # this machine's cores, and two requests' steps at once use two (conv 3x3, 32x64x64 ->
        # host Softmax -> conv 3x3: the NPU lane was the bottleneck, busy 93 % on one core).
        self.npu_lanes = 1 if self.pace_scale else npu_lanes or compute_lanes(self.parallel)
        self._engine = Engine(self.steps, pace_scale=self.pace_scale, parallel=self.parallel,
                              host_lanes=self.host_workers, npu_lanes=self.npu_lanes, trace_capacity=trace_capacity_of(trace),
                              thread_setup=thread_settings())
        self._slots = _Slots(max_inflight)
        self._staging = StagingPool()
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()
        self._closed = False
        self._finish_values = self._finish  # bound once: every request is handed it
        # An AsyncRuntime dropped without close() still stops its threads.
        self._finalizer = weakref.finalize(self, _shutdown_quietly, self._engine, self._slots)

    # -- properties --------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.artifact.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.artifact.outputs]

    @property
    def closed(self) -> bool:
        return self._closed

    def model_description(self) -> str:
        return describe(self.artifact, self.source)

    # -- running -----------------------------------------------------------------------------
    def run(self, *args: Any, out: Any = None, **kwargs: Any) -> AsyncTask:
        """Submits one request and returns its task at once; blocks only while `max_inflight`
        requests are already in flight. Input errors are raised here (with `preprocess`, from
        the request: its inputs exist only once preprocess has run)."""
        self._check_open()
        values = self._values(args, kwargs, out)
        submitted_at = clock()
        try:
            result = self._engine.run_inline(values, self._finish_values)
        except Exception as exc:  # the request's own failure: the task delivers it
            request = finished_request(getattr(exc, "request_id", 0), None, exc, submitted_at)
        else:
            if result is NOT_INLINE:
                self._slots.acquire()
                held: list[np.ndarray] = []
                request = self._submit(self._owned(values, args, kwargs, held), held)
            else:
                request = finished_request(next_request_id(), result, None, submitted_at)
        return AsyncTask(request, self._engine)

    async def async_run(self, *args: Any, out: Any = None, **kwargs: Any):
        """Runs one request and returns its outputs, as `Runtime.run` would. While `max_inflight`
        requests are in flight this waits on the event loop, holding no thread. Cancelling the
        awaiting task cancels the request."""
        self._check_open()
        values = self._values(args, kwargs, out)
        result = self._engine.run_inline(values, self._finish_values)  # raises the request's own error
        if result is not NOT_INLINE:
            return result
        held: list[np.ndarray] = []
        values = self._owned(values, args, kwargs, held)
        mailbox = self._mailbox()
        if not self._slots.try_acquire():
            try:
                await self._slots.acquire_async(mailbox)
            except BaseException:
                self._staging.give_back(held)
                raise
        request = self._submit(values, held)
        future = asyncio.get_running_loop().create_future()
        request.add_done_callback(lambda r: _resolve_on_loop(mailbox, future, r))
        try:
            return await future
        except asyncio.CancelledError:
            self._engine.cancel(request)
            raise

    def _mailbox(self) -> _Mailbox:
        """The running loop's mailbox (made on first use)."""
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes.setdefault(loop, _Mailbox(loop))
        return mailbox

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError(f"AsyncRuntime for {self.source} is closed")

    def _values(self, args, kwargs, out) -> dict:
        """The request's first values: its inputs, checked (with `preprocess`, the arguments for
        it, as given)."""
        values = {RAW: (args, kwargs)} if self.preprocess is not None else \
            bind_inputs(self.artifact.inputs, args, kwargs)
        if out is not None:
            values[OUT] = out
        return values

    def _owned(self, values: dict, args, kwargs, held: list[np.ndarray]) -> dict:
        """`values` with the inputs the caller still owns copied, before the request leaves this
        call (one run inline has finished with them by then, so it needs no copy). Large copies
        are staging buffers, listed in `held` to be given back when the request ends."""
        if self.preprocess is not None:
            return values
        given = {id(v) for v in (*args, *kwargs.values())}
        copy = self._staging.copy
        return {name: copy(a, held) if name != OUT and (a.base is not None or id(a) in given) else a
                for name, a in values.items()}

    def _finish(self, final: dict):
        """A request's result from its final values."""
        if self.postprocess is not None:
            return final[RESULT]
        outputs = self.artifact.outputs
        return deliver_outputs([final[o.name] for o in outputs], outputs, final.get(OUT), self.tensor_type)

    def _submit(self, values: dict, held: list[np.ndarray]) -> Request:
        """With a slot held: submits; at the end frees the slot and gives back the staging buffers."""
        request = Request(next_request_id(), values, self._finish_values)
        if held:
            staging, release = self._staging, self._slots.release

            def on_end() -> None:
                release()
                staging.give_back(held)

            request.on_end = on_end
        else:
            request.on_end = self._slots.release
        try:
            self._engine.submit(request)
        except RuntimeError:
            self._slots.release()
            raise RuntimeClosedError(f"AsyncRuntime for {self.source} is closed") from None
        return request

    # -- closing -----------------------------------------------------------------------------
    def close(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Stops taking requests, finishes the ones in flight (or, with cancel=True, cancels them;
        after `timeout` seconds, cancels what is left), then stops the threads. Calls waiting to be
        admitted get RuntimeClosedError. Calling it again after it returned does nothing; after a close
        that was interrupted (Ctrl-C while it waited), it finishes the job."""
        if self._engine.owns_current_thread():
            raise RuntimeError("close() was called from a completion callback, which runs on the runtime's own "
                               "threads; close the runtime from another thread")
        self._closed = True
        self._slots.close()
        self._engine.shutdown(cancel=cancel, timeout=timeout)
        self._finalizer.detach()

    async def aclose(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """close() without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.close(cancel=cancel, timeout=timeout))

    def __enter__(self) -> "AsyncRuntime":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Leaving on an error: nobody will collect what is pending, so it is cancelled.
        self.close(cancel=exc_type is not None)

    async def __aenter__(self) -> "AsyncRuntime":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.aclose(cancel=exc_type is not None)

    # -- observing ---------------------------------------------------------------------------
    def inflight(self) -> int:
        """Requests admitted and not finished."""
        return self._engine.inflight()

    def waiting(self) -> int:
        """Calls waiting to be admitted (max_inflight reached)."""
        return self._slots.waiting()

    @property
    def thread_count(self) -> int:
        """Worker threads this runtime runs (fixed, whatever the number of requests)."""
        return self._engine.thread_count

    @property
    def overruns(self) -> int:
        """Paced steps the emulator took longer to compute than their modelled time."""
        return self._engine.stats.overruns

    def stats(self) -> dict[str, Any]:
        s = self._engine.stats
        return {"completed": s.completed, "failed": s.failed, "cancelled": s.cancelled, "overruns": s.overruns,
                "busy_s": dict(s.busy_s), "modelled_ns": dict(s.modelled_ns)}

    def profile(self) -> Profile:
        """The command times of the runs so far (needs `profile=True`)."""
        return profile_of(self)

    def timeline(self) -> list[StepRecord]:
        """The steps recorded so far (with `trace=`), in the order they ended."""
        return list(self._engine.timeline or ())

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"parallel={self.parallel} max_inflight={self.max_inflight}"
        return f"<rblnc.AsyncRuntime {self.source} {state}>"


def _shutdown_quietly(engine: Engine, slots: _Slots) -> None:
    slots.close()
    try:
        engine.shutdown(cancel=True)
    except RuntimeError:
        pass


__all__ = ["AsyncRuntime", "AsyncTask"]
