"""The request engine: each request is a chain of steps on resources (host, H2D DMA, NPU, D2H DMA),
each resource serving its queue in order on its own threads, optionally paced to modelled times."""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from queue import SimpleQueue
from threading import get_ident
from typing import Any, Callable, NamedTuple

from ..format.artifact import Device, TransferDirection
from .executor import ModelExecutor, run_partition

clock = time.perf_counter
log = logging.getLogger("rblnc.runtime")
STOP_GRACE_S = 1.0  # close(timeout=...): how long past the timeout an idle lane may take to stop
# What handing a request to another thread costs here (a queue put, waking the lane, the GIL
# changing hands both ways), measured on the 2-core benchmark machine: 30-60 us per hop. A
# functional chain whose whole compute is shorter than the hops it would take runs on the
# submitting thread instead (see Engine.submit).
HOP_COST_S = 50e-6
INLINE_WARMUP = 3  # requests measured on the lanes before a chain may run inline
INLINE_WINDOW = 16  # the chain's compute is the least of this many recent requests'
NOT_INLINE = object()  # Engine.run_inline's answer when the request should go to the lanes
# Functional: a request's steps are handed lane to lane only while the measured step times say
# overlapping them can make requests this much faster than whole chains (each of the threads
# that start requests running its requests' every step, Engine._run_through); see
# Engine._choose_schedule.
PIPELINE_MIN_GAIN = 1.1
STEP_COST_WEIGHT = 0.2  # each new measurement's weight in a step's running cost


class Resource(enum.Enum):
    """What a step occupies; the value is the track name in timelines."""

    HOST = "host"
    H2D = "H2D DMA"
    NPU = "NPU"
    D2H = "D2H DMA"

    @property
    def on_device(self) -> bool:
        return self is not Resource.HOST


@dataclass(frozen=True)
class Step:
    """One link of a request's chain. `run` computes the step's values in place (None for a DMA,
    which moves no values in the emulator); `release` names values no later step reads."""

    resource: Resource
    name: str
    partition: str
    est_ns: float
    run: Callable[[dict], None] | None = None
    release: tuple[str, ...] = ()
    # Paced by its thread's CPU time x the scale (the user's host stages): time spent waiting for a
    # core or the GIL while other requests' steps run is the emulator's machine, not the stage's.
    cpu_timed: bool = False


def plan_steps(executor: ModelExecutor) -> list[Step]:
    """The chain every request of the artifact follows, partition by partition: an NPU partition
    gives H2D (its HOST_TO_DEVICE transfers), NPU compute, D2H (its DEVICE_TO_HOST transfers);
    a host partition gives one host step. Steps with no transfer are left out."""
    artifact = executor.artifact
    last_reader: dict[str, int] = {}
    for index, (partition, _) in enumerate(executor.stages):
        for value in partition.inputs:
            last_reader[value.name] = index
    keep = {v.name for v in artifact.outputs}
    releases: dict[int, list[str]] = {}
    for name, index in last_reader.items():
        if name not in keep:
            releases.setdefault(index, []).append(name)

    steps: list[Step] = []
    for index, (partition, runner) in enumerate(executor.stages):
        compute = _compute_fn(partition, runner)
        release = tuple(releases.get(index, ()))
        if partition.device == Device.NPU:
            to_device = [t for t in partition.transfers if t.direction == TransferDirection.HOST_TO_DEVICE]
            to_host = [t for t in partition.transfers if t.direction == TransferDirection.DEVICE_TO_HOST]
            if to_device:
                steps.append(Step(Resource.H2D, f"{partition.name} h2d", partition.name,
                                  sum(t.est_time_ns for t in to_device)))
            est = partition.est_time_ns or sum(c.est_time_ns for c in partition.npu_program.commands)
            steps.append(Step(Resource.NPU, partition.name, partition.name, est, compute, release))
            if to_host:
                steps.append(Step(Resource.D2H, f"{partition.name} d2h", partition.name,
                                  sum(t.est_time_ns for t in to_host)))
        else:
            steps.append(Step(Resource.HOST, partition.name, partition.name, partition.est_time_ns, compute, release))
    return steps


def _compute_fn(partition, runner) -> Callable[[dict], None]:
    def compute(values: dict) -> None:
        values.update(run_partition(partition, runner, values))

    return compute


def active_steps(steps: list[Step], pace_scale: float) -> list[Step]:
    """Steps worth a turn on their resource: those that compute, and when paced those that take
    modelled time (a DMA step of a functional run would only add a thread hop)."""
    return [s for s in steps if s.run is not None or (pace_scale and s.est_ns > 0)]


def pace_scale_of(pace: bool | float) -> float:
    """`pace=False` -> 0 (functional), True -> 1 (modelled times), a number -> that slow-motion factor."""
    if pace is True:
        return 1.0
    if pace is False or pace is None:
        return 0.0
    if not isinstance(pace, (int, float)) or pace <= 0:
        raise ValueError(f"pace must be True, False or a positive slow-motion factor, got {pace!r}")
    return float(pace)


class StepRecord(NamedTuple):
    """One step of one request on one lane of a resource; times in perf_counter seconds."""

    request: int
    step: str
    partition: str
    resource: Resource
    lane: str
    start: float
    end: float
    modelled_ns: float       # the step's modelled time x the pace scale (0: not paced or not modelled)
    compute_s: float = 0.0   # of which the emulator spent computing (paced: overran if > modelled)
    failed: bool = False
    thread: str = ""         # the thread that ran the step (a lane's own, or one running the chain through)

    @property
    def overran(self) -> bool:
        return 0 < self.modelled_ns < self.compute_s * 1e9


class Lane:
    """One server of a resource (the NPU has one; the host has a pool). `free_at` is when its
    last step ended on the timeline that pacing keeps."""

    def __init__(self, resource: Resource, label: str):
        self.resource = resource
        self.label = label
        self.free_at = 0.0
        # Held while a step runs on the lane: by the lane's own thread, or by a thread that runs a
        # request's next step itself (Engine._continue) or a whole request inline (Engine.run_inline).
        self.lock = threading.Lock()


def run_step(step: Step, values: dict, ready_at: float, lane: Lane,
             pace_scale: float) -> tuple[float, float, float]:
    """Runs one step on `lane` and returns its (start, end, seconds spent computing).

    Functional (pace_scale 0): the step lasts as long as it computes. Paced: it lasts its modelled
    time x pace_scale (a host step with no model: its own time x pace_scale; a user's stage: its
    thread's CPU time x pace_scale), or longer if the
    emulator's work overruns that. The modelled start is when both the request's previous step and
    the lane were done, so the emulator's thread hand-offs and sleep overshoot are not charged to
    the modelled hardware; work slower than the model is, since the step cannot end before it."""
    started = clock()
    cpu_started = time.thread_time() if step.cpu_timed and pace_scale else 0.0
    try:
        if step.run is not None:
            step.run(values)
            for name in step.release:
                values.pop(name, None)
    except BaseException:
        lane.free_at = clock()
        raise
    computed = clock()
    if not pace_scale:
        lane.free_at = computed
        return started, computed, computed - started
    start = min(started, max(ready_at, lane.free_at))
    if step.est_ns > 0:
        hold = step.est_ns * 1e-9 * pace_scale
    elif step.cpu_timed:
        hold = (time.thread_time() - cpu_started) * pace_scale
    else:
        hold = (computed - started) * pace_scale
    deadline = start + hold
    remaining = deadline - clock()
    if remaining > 0:
        time.sleep(remaining)
    end = max(deadline, computed)
    lane.free_at = end
    return start, end, computed - started


class RequestState(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Request:
    """A request moving through the chain. `finish` turns the final values into the result."""

    __slots__ = ("id", "values", "position", "ready_at", "submitted_at", "finished_at", "state", "result",
                 "error", "running", "holds_device", "finish", "compute_s", "on_end", "_callbacks", "_event")

    def __init__(self, request_id: int, values: dict, finish: Callable[[dict], Any]):
        self.id = request_id
        self.values = values
        self.finish = finish
        self.position = 0
        self.ready_at = 0.0
        self.submitted_at = 0.0
        self.finished_at = 0.0
        self.state = RequestState.PENDING
        self.result: Any = None
        self.error: BaseException | None = None
        self.running = False
        self.holds_device = False
        self.compute_s = 0.0  # summed over its steps: what running it inline would cost
        self.on_end: Callable[[], None] | None = None  # the owner's bookkeeping, before any callback
        self._callbacks: list[Callable[[Request], None]] | None = []
        self._event: threading.Event | None = None

    @property
    def done(self) -> bool:
        return self.state is not RequestState.PENDING

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the request is finished (True) or `timeout` seconds pass (False)."""
        if self.done:
            return True
        with _EVENT_LOCK:
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if self.done:
            return True
        return event.wait(timeout)

    def add_done_callback(self, fn: Callable[["Request"], None]) -> None:
        with _EVENT_LOCK:
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            log.exception("completion callback of request %d raised", self.id)

    def _settle(self) -> None:
        """Wakes waiters and runs callbacks once; called after state became final."""
        with _EVENT_LOCK:
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
        if event is not None:
            event.set()
        if not callbacks:
            return
        interrupt = None
        for fn in callbacks or ():
            try:
                fn(self)
            except BaseException as exc:  # a caller's callback must not stop the lane that finished the request
                log.exception("completion callback of request %d raised", self.id)
                if not isinstance(exc, Exception) and interrupt is None:
                    interrupt = exc
        # Ctrl-C only ever reaches the main thread; there (a task.cancel() that ran the callbacks)
        # it still stops the caller. On a lane it would only end the lane's thread.
        if interrupt is not None and threading.current_thread() is threading.main_thread():
            raise interrupt


_EVENT_LOCK = threading.Lock()


def finished_request(request_id: int, result: Any, error: BaseException | None, submitted_at: float) -> Request:
    """A request that already ran (inline), final: done or failed, callbacks added later run at once."""
    request = Request(request_id, {}, None)  # type: ignore[arg-type]
    request.submitted_at, request.finished_at = submitted_at, clock()
    request.state = RequestState.DONE if error is None else RequestState.FAILED
    request.result, request.error = result, error
    request._callbacks = None
    return request


@dataclass
class EngineStats:
    """Counters kept for every request (constant memory)."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    busy_s: dict[str, float] = field(default_factory=dict)       # per resource, on the timeline
    modelled_ns: dict[str, float] = field(default_factory=dict)  # per resource, the model's time (unscaled)
    overruns: int = 0  # paced steps the emulator took longer to compute than their modelled time


class Engine:
    """Runs requests through the chain on worker threads: one lane each for H2D, NPU and D2H,
    `host_lanes` for the host. At most `parallel` requests are on the device side (from their
    first device step to their last) at once. Thread count is fixed, whatever the requests.

    Functional (unpaced), shortcuts save thread hand-offs where they would gain nothing:
    - whole chains (`whole_chain`): the thread that takes a request from its first step's queue
      runs all its steps, each on a lane of its resource taken for that step (so no resource runs
      more steps at once than it has lanes). Chosen while the measured step times give the
      pipeline less than PIPELINE_MIN_GAIN over them (_choose_schedule); at the start when
      several threads start requests (the first step's resource has 2+ lanes), else the pipeline;
    - otherwise a lane that finishes a step runs the request's next step itself when no request
      waits for this lane and the next step's resource is idle;
    - a request submitted while nothing is in flight, whose chain computes in less time than its
      hand-offs would take, runs whole on the submitting thread (on the same lanes, so each lane
      still runs one step at a time)."""

    def __init__(self, steps: list[Step], *, pace_scale: float = 0.0, parallel: int = 2, host_lanes: int = 2,
                 npu_lanes: int = 1, trace_capacity: int = 0, name: str = "rblnc", thread_setup: Callable[[], None] | None = None):
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        if host_lanes < 1:
            raise ValueError(f"host_lanes must be at least 1, got {host_lanes}")
        if npu_lanes < 1:
            raise ValueError(f"npu_lanes must be at least 1, got {npu_lanes}")
        self.steps = active_steps(steps, pace_scale)
        self.pace_scale = pace_scale
        self.parallel = parallel
        device = [i for i, s in enumerate(self.steps) if s.resource.on_device]
        self._first_device = device[0] if device else -1
        self._last_device = device[-1] if device else -1
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._draining = 0
        self._device_free = parallel
        self._device_waiters: deque[Request] = deque()
        self._inflight: dict[int, Request] = {}
        self._accepting = True
        self._shut = False
        self._stats = EngineStats()  # of the requests on the lanes; `stats` adds those run inline
        self.timeline: deque[StepRecord] | None = deque(maxlen=trace_capacity) if trace_capacity else None
        self._queues: dict[Resource, SimpleQueue] = {}
        self._lanes: dict[Resource, list[Lane]] = {}
        self._threads: list[tuple[threading.Thread, SimpleQueue]] = []
        # Functional shortcuts (class docstring). Pacing needs every step on its own lane's timeline.
        self._shortcuts = not pace_scale
        # A whole request on the submitting thread (run_inline): functional and untraced only.
        self._inlinable = self._shortcuts and self.timeline is None
        self._inline_budget = HOP_COST_S * (len(self.steps) + 1)  # a hop per step, one to hand back the result
        self._measured = 0  # requests whose chain's compute was measured (up to INLINE_WARMUP)
        # Of them, the latest in a row that computed longer than the budget; none has yet computed
        # within it, so a chain is never inline before one has (it was: MobileNetV3-small, ~10 ms,
        # ran inline on the event loop for the first requests of each gather until 16 slow ones).
        self._slow_streak = INLINE_WINDOW
        self._inline_ok = False
        self._inline_active = False
        self._inline_thread: int | None = None  # the thread running a request inline (one at a time)
        self._inline_busy = [0.0] * len(self.steps)  # seconds per step of the requests run inline
        # Whole chains or the pipeline (class docstring). Step costs: running averages of each
        # step's compute, measured on the lanes (unlocked: a lost update changes nothing).
        self._step_cost = [0.0] * len(self.steps)
        self._step_lanes = {Resource.HOST: host_lanes, Resource.NPU: npu_lanes}
        self.whole_chain = False
        self._adaptive = False
        self._starters = 1  # lanes of the first step's resource: the threads that start requests
        self._inline_completed = 0
        self._thread_setup = thread_setup  # run first on each lane's thread (the creator's torch threads)
        used = {s.resource for s in self.steps}
        for resource in Resource:
            if resource not in used:
                continue
            queue: SimpleQueue = SimpleQueue()
            self._queues[resource] = queue
            count = {Resource.HOST: host_lanes, Resource.NPU: npu_lanes}.get(resource, 1)
            self._lanes[resource] = []
            for index in range(count):
                label = f"{resource.value} {index}" if resource is Resource.HOST or count > 1 else resource.value
                lane = Lane(resource, label)
                self._lanes[resource].append(lane)
                thread = threading.Thread(target=self._serve, args=(queue, lane),
                                          name=f"{name}-{label.replace(' ', '-').lower()}", daemon=True)
                self._threads.append((thread, queue))
                thread.start()
        if self._shortcuts and self.steps:
            starters = len(self._lanes[self.steps[0].resource])
            self._starters = starters
            self.whole_chain = starters >= 2  # until measured: several starters overlap whole requests
            self._adaptive = True
        # What run_inline reads per step, looked up once.
        self._inline_plan = [(s, s.run, s.release, self._lanes[s.resource]) for s in self.steps]
        self._step_stats = [(_RESOURCE_KEYS[s.resource], s.est_ns) for s in self.steps]

    # -- submission and the chain ------------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self._lock:
            if not self._accepting:
                raise RuntimeError("engine is shut down")
            self._inflight[request.id] = request
        request.submitted_at = request.ready_at = clock()
        self._advance(request)

    def run_inline(self, values: dict, finish: Callable[[dict], Any]) -> Any:
        """Runs a request whole on this thread and returns its result (or raises its error, the
        request and step named on it, as a lane would deliver it), unless running it here is not
        worth it: then returns NOT_INLINE, and the caller submits it. Worth it when functional
        and untraced, nothing else in flight, and the chain's compute shorter than the hand-offs
        the lanes would take. Each step still holds its lane, so a lane runs one step at a time.
        This path is the whole cost of a small request beside Runtime.run, so it makes no
        Request and takes the engine's lock once: one request runs inline at a time
        (`_inline_active`), and its statistics go to counters only that request touches."""
        if not self._inline_ok:
            return NOT_INLINE
        with self._lock:
            if not self._accepting or self._inflight or self._inline_active or self._device_free != self.parallel:
                return NOT_INLINE  # a closed engine: submit() says so
            self._inline_active = True
        self._inline_thread = get_ident()
        busy = self._inline_busy
        first = began = clock()
        index = -1
        step = error = result = None
        try:
            for index, (step, run, release, lanes) in enumerate(self._inline_plan):
                lock = lanes[0].lock
                if not lock.acquire(False):  # a cancelled request's step may still hold it
                    lock = (_take_free(lanes) or _wait_for(lanes[0])).lock
                try:
                    run(values)
                    for name in release:
                        values.pop(name, None)
                finally:
                    lock.release()
                    ended = clock()
                    busy[index] += ended - began
                    began = ended
            step = None
            result = finish(values)
        except BaseException as exc:  # the request's own failure, as on a lane
            error = exc
        if error is None:
            self._inline_completed += 1
        else:
            with self._lock:
                self._stats.failed += 1
                modelled_ns = self._stats.modelled_ns
                for key, est_ns in self._step_stats[:index + 1]:
                    modelled_ns[key] = modelled_ns.get(key, 0.0) + est_ns
        self._inline_thread = None
        self._inline_active = False  # unlocked: drain() rechecks after counting itself in _draining
        if self._draining:
            with self._lock:
                self._idle.notify_all()
        if error is not None:
            _identify(error, next_request_id(), step)
            try:
                raise error
            finally:
                error = None  # the frame's own reference would keep the traceback's frames alive
        if began - first < self._inline_budget:
            self._slow_streak = 0  # what _measure would conclude: it may still run inline
        else:
            self._measure(began - first)
        return result

    def _advance(self, request: Request) -> None:
        """Puts the request in the queue of its next step, or finishes it."""
        if request.position >= len(self.steps):
            self._complete(request)
            return
        if request.position == self._first_device and not request.holds_device and not self._claim_device(request):
            return
        self._queues[self.steps[request.position].resource].put(request)

    def _claim_device(self, request: Request) -> bool:
        """Gives the request a device slot; False if it has none to go on with: it waits for one
        (whoever returns a slot queues it) or it has ended."""
        with self._lock:
            if request.state is not RequestState.PENDING:
                return False
            if self._device_free == 0:
                self._device_waiters.append(request)
                return False
            self._device_free -= 1
            request.holds_device = True
        return True

    def _serve(self, queue: SimpleQueue, lane: Lane) -> None:
        if self._thread_setup is not None:
            self._thread_setup()
        while True:
            # An idle lane holds no request: a failed one's error carries a traceback through the
            # frame of whoever waited for it, and would keep that frame's objects alive meanwhile.
            request = None
            request = queue.get()
            if request is None:
                return
            with lane.lock:
                going = self._step(request, lane)
            if going:
                request.position += 1
                self._continue(request, queue)

    def _continue(self, request: Request, own_queue: SimpleQueue) -> None:
        """After a step: runs the request's next steps on this thread while nothing is gained by
        handing them to another (functional, no other request in flight, the next lane idle);
        then queues the next step, or finishes the request. With other requests in flight the
        hop is kept: this lane may be needed by one of them before the borrowed step is done
        (conv -> host Softmax -> conv, 40 requests gathered: the NPU lane idled 28 % of the run
        while its thread ran host steps)."""
        if self.whole_chain:
            self._run_through(request)
            return
        while (self._shortcuts and request.position < len(self.steps) and len(self._inflight) == 1
               and own_queue.empty() and (request.holds_device or request.position != self._first_device)):
            resource = self.steps[request.position].resource
            if not self._queues[resource].empty():
                break
            lane = _take_free(self._lanes[resource])
            if lane is None:
                break
            if not self._step_and_release(request, lane):
                return
        self._advance(request)

    def _run_through(self, request: Request) -> None:
        """Runs the rest of the request's chain on this thread, each step on a lane of its resource
        (the first free one, else waiting for one), then finishes it. No hand-off: its activations
        are allocated and freed on one thread (handed between threads, torch's and onnxruntime's
        frees on other threads than the allocating ones cost 100-170 page faults per request on
        conv -> host Softmax -> conv), and no thread waits for another to wake."""
        steps = self.steps
        while request.position < len(steps):
            if request.position == self._first_device and not request.holds_device \
                    and not self._claim_device(request):
                return
            lanes = self._lanes[steps[request.position].resource]
            if not self._step_and_release(request, _take_free(lanes) or _wait_for(lanes[0])):
                return
        self._complete(request)

    def _step_and_release(self, request: Request, lane: Lane) -> bool:
        """Runs the request's current step on `lane` (held by the caller), gives the lane back and
        moves the request to its next step; False if its chain has ended (failed or cancelled)."""
        try:
            going = self._step(request, lane)
        finally:
            lane.lock.release()
        if going:
            request.position += 1
        return going

    def _choose_schedule(self) -> None:
        """Whole chains unless the steps' measured costs say that handing them lane to lane can
        make requests PIPELINE_MIN_GAIN times faster. Time per request: pipelined, the busiest
        resource's time per lane; whole chains, the chain's time over the threads that start
        requests (each runs its requests' every step), and no less than the pipeline's. With 2 NPU
        lanes starting conv 3x3 -> host Softmax -> conv 3x3, whole chains left both NPU lanes idle
        while their threads ran the host step (~1/3 of the chain), where the host lanes were free:
        over 8 runs of bench_async on the loaded machine, 1.07x sync on average against 1.22x
        pipelined. A host step that is a small part of the chain (BERT's embedding, 1 %) keeps
        whole chains; so does a one-step chain (the two schedules are the same)."""
        costs = self._step_cost
        per_resource: dict[Resource, float] = {}
        for step, cost in zip(self.steps, costs):
            per_resource[step.resource] = per_resource.get(step.resource, 0.0) + cost
        busiest = max(cost / self._step_lanes.get(resource, 1) for resource, cost in per_resource.items())
        whole = max(sum(costs) / self._starters, busiest)
        self.whole_chain = busiest <= 0 or whole < PIPELINE_MIN_GAIN * busiest

    def _step(self, request: Request, lane: Lane) -> bool:
        """Runs the request's current step on `lane` (held by the caller); True if its chain goes on."""
        with self._lock:
            if request.state is not RequestState.PENDING:
                return False  # cancelled while queued; its device slot was returned then
            request.running = True
        step = self.steps[request.position]
        began = clock()
        try:
            start, end, compute = run_step(step, request.values, request.ready_at, lane, self.pace_scale)
        except BaseException as exc:  # the request's own failure: it ends here, the others go on
            failed_at = clock()
            with self._lock:
                self._record(request, step, lane, began, failed_at, failed_at - began, failed=True)
                request.running = False
                # Cancelled while this step ran: cancel() left the device slot to the step.
                granted = self._return_device(request, failed_at) if request.done else None
            if granted is not None:
                self._queues[self.steps[granted.position].resource].put(granted)
            _identify(exc, request.id, step)
            self._end(request, RequestState.FAILED, error=exc)
            return False
        request.ready_at = end
        request.compute_s += compute
        if self._adaptive:
            old = self._step_cost[request.position]
            self._step_cost[request.position] = compute if not old else old + STEP_COST_WEIGHT * (compute - old)
        granted = None
        with self._lock:
            self._record(request, step, lane, start, end, compute)
            request.running = False
            cancelled = request.state is not RequestState.PENDING
            if request.position == self._last_device or cancelled:
                granted = self._return_device(request, end)
        if granted is not None:
            self._queues[self.steps[granted.position].resource].put(granted)
        return not cancelled

    def _record(self, request: Request, step: Step, lane: Lane, start: float, end: float, compute: float = 0.0,
                failed: bool = False):
        """With the lock held: the step's statistics, and its record when tracing."""
        stats = self._stats
        key = step.resource.value
        stats.busy_s[key] = stats.busy_s.get(key, 0.0) + (end - start)
        stats.modelled_ns[key] = stats.modelled_ns.get(key, 0.0) + step.est_ns
        if self.pace_scale or self.timeline is not None:
            record = StepRecord(request.id, step.name, step.partition, step.resource, lane.label, start, end,
                                step.est_ns * self.pace_scale, compute, failed, threading.current_thread().name)
            stats.overruns += record.overran
            if self.timeline is not None:
                self.timeline.append(record)

    def _return_device(self, request: Request, at: float) -> Request | None:
        """With the lock held: gives `request`'s device slot to the next waiter, or back."""
        if not request.holds_device:
            return None
        request.holds_device = False
        while self._device_waiters:
            waiter = self._device_waiters.popleft()
            if waiter.state is RequestState.PENDING:
                waiter.holds_device = True
                waiter.ready_at = max(waiter.ready_at, at)
                return waiter
        self._device_free += 1
        return None

    def _complete(self, request: Request) -> None:
        if self._inlinable:
            self._measure(request.compute_s)
        if self._adaptive:
            self._choose_schedule()
        try:
            result = request.finish(request.values)
        except BaseException as exc:
            _identify(exc, request.id, None)
            self._end(request, RequestState.FAILED, error=exc)
            return
        self._end(request, RequestState.DONE, result=result)

    def _measure(self, compute_s: float) -> None:
        """Keeps whether the chain may run inline: after INLINE_WARMUP requests, while at least one
        of the last INLINE_WINDOW computed within the budget (noise only ever adds time: a cold
        cache, a lane waiting for the GIL, a preempted thread). Unlocked: a lost sample changes
        nothing."""
        if compute_s < self._inline_budget:
            self._slow_streak = 0
        else:
            self._slow_streak += 1
        if self._measured < INLINE_WARMUP:
            self._measured += 1
        self._inline_ok = self._measured >= INLINE_WARMUP and self._slow_streak < INLINE_WINDOW

    def _end(self, request: Request, state: RequestState, *, result: Any = None,
             error: BaseException | None = None) -> bool:
        """Makes the request final (once); returns False if it already was."""
        granted = None
        with self._lock:
            if request.state is not RequestState.PENDING:
                return False
            request.state = state
            request.result, request.error = result, error
            request.values = {}
            request.finished_at = clock()
            if state is RequestState.DONE:
                self._stats.completed += 1
            elif state is RequestState.FAILED:
                self._stats.failed += 1
            else:
                self._stats.cancelled += 1
            if not request.running:
                if request in self._device_waiters:
                    self._device_waiters.remove(request)
                granted = self._return_device(request, request.finished_at)
            self._inflight.pop(request.id, None)
            if not self._inflight and self._draining:
                self._idle.notify_all()
        if granted is not None:
            self._queues[self.steps[granted.position].resource].put(granted)
        if request.on_end is not None:
            request.on_end()
        request._settle()
        return True

    @property
    def stats(self) -> EngineStats:
        """The counters so far (a copy), those of the requests run inline included."""
        with self._lock:
            lanes, completed = self._stats, self._inline_completed
            stats = EngineStats(lanes.completed + completed, lanes.failed, lanes.cancelled,
                                dict(lanes.busy_s), dict(lanes.modelled_ns), lanes.overruns)
        for (key, est_ns), seconds in zip(self._step_stats, self._inline_busy):
            if seconds:
                stats.busy_s[key] = stats.busy_s.get(key, 0.0) + seconds
                stats.modelled_ns[key] = stats.modelled_ns.get(key, 0.0) + est_ns * completed
        return stats

    def cancel(self, request: Request) -> bool:
        """Ends a pending request as cancelled: at once for the caller; a step already running
        finishes on its lane and the chain stops there. False if the request had finished."""
        return self._end(request, RequestState.CANCELLED)

    # -- shutting down -----------------------------------------------------------------------
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight) + self._inline_active

    def drain(self, timeout: float | None = None) -> bool:
        """Waits until no request is in flight; False if `timeout` passed first."""
        with self._idle:
            self._draining += 1  # only then does the last request to end notify (every request asks)
            try:
                return self._idle.wait_for(lambda: not self._inflight and not self._inline_active, timeout)
            finally:
                self._draining -= 1

    def cancel_all(self) -> int:
        with self._lock:
            pending = list(self._inflight.values())
        return sum(self.cancel(r) for r in pending)

    def shutdown(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Finishes (or cancels) what is in flight, then stops the threads."""
        if self.owns_current_thread():
            raise RuntimeError("a runtime cannot be closed from its own completion callback "
                               "(its threads would wait for themselves); close it from another thread")
        deadline = None if timeout is None else clock() + timeout
        with self._lock:
            if self._shut:
                return
            self._accepting = False  # from here on, what is in flight can only drain
        if cancel:
            self.cancel_all()
        if not self.drain(timeout):
            self.cancel_all()
        with self._lock:
            if self._shut:
                return
            self._shut = True
        for _, queue in self._threads:
            queue.put(None)  # one stop sign per thread; lanes of a resource share its queue
        current = threading.current_thread()
        for thread, _ in self._threads:
            if thread is not current:
                # With a timeout, a lane stuck in a step is not waited for: it reads its stop sign
                # and ends when the step returns. Idle lanes end at once (the grace is for a busy host).
                thread.join(None if deadline is None else max(deadline - clock(), 0.0) + STOP_GRACE_S)
        stuck = [thread.name for thread, _ in self._threads if thread is not current and thread.is_alive()]
        if stuck:
            log.warning("closed after %s s with a step still running on %s; its thread ends when the step returns",
                        timeout, ", ".join(stuck))

    def owns_current_thread(self) -> bool:
        """True on the runtime's own threads, and on a thread running a request inline (whose
        callbacks run there: waiting for the runtime to drain would wait for itself)."""
        if self._inline_thread == get_ident():
            return True
        current = threading.current_thread()
        return any(thread is current for thread, _ in self._threads)

    @property
    def thread_count(self) -> int:
        return len(self._threads)


_RESOURCE_KEYS = {r: r.value for r in Resource}  # Enum.value is a property: every request's steps ask


def _take_free(lanes: list[Lane]) -> Lane | None:
    """The first idle lane, its lock taken; None if all are busy."""
    for lane in lanes:
        if lane.lock.acquire(blocking=False):
            return lane
    return None


def _wait_for(lane: Lane) -> Lane:
    lane.lock.acquire()
    return lane


def _identify(exc: BaseException, request_id: int, step: Step | None) -> None:
    """Names the request (and step) on the exception without changing its type or message."""
    where = f" at step {step.name} ({step.resource.value})" if step is not None else " delivering its outputs"
    try:
        exc.add_note(f"rblnc request {request_id} failed{where}")
        exc.request_id = request_id  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # pragma: no cover - exotic exception types
        pass


_request_ids = itertools.count(1)


def next_request_id() -> int:
    return next(_request_ids)


def modelled_ns_per_request(steps: list[Step]) -> dict[Resource, float]:
    """The model's time per request on each resource (0 where the artifact has no estimate)."""
    totals = {r: 0.0 for r in Resource}
    for step in steps:
        totals[step.resource] += step.est_ns
    return totals


def has_estimates(steps: list[Step]) -> bool:
    return any(s.est_ns > 0 for s in steps if s.resource.on_device)


def throughput_bounds(steps: list[Step], *, host_lanes: int = 1) -> tuple[float, float]:
    """(pipelined bound, one-at-a-time rate) in requests per modelled second: 1 / the busiest
    resource's time per request (the host's shared by its lanes), and 1 / the sum of the steps."""
    per_resource = modelled_ns_per_request(steps)
    busiest = max(ns / (host_lanes if r is Resource.HOST else 1) for r, ns in per_resource.items())
    total = sum(per_resource.values())
    if busiest <= 0:
        raise ValueError("the steps carry no modelled time (est_time_ns = 0 everywhere)")
    return 1e9 / busiest, 1e9 / total
