"""The runtime soak: many requests through one AsyncRuntime from an event loop and from threads,
some failing and some cancelled, every outcome checked against onnxruntime, memory (RSS and
tracemalloc), thread and open-file counts and request latency sampled as it goes. `make soak`
runs 100,000 requests."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import SimpleQueue

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import rblnc
from rblnc.errors import ExecutionError

TABLE_ROWS = 10
BAD_FRACTION = 0.05     # requests whose input indexes past the host partition's table: they must fail
CANCEL_FRACTION = 0.05  # thread-client requests cancelled as soon as they are submitted
THREAD_FRACTION = 0.4   # requests run from two threads with run() + wait(); the rest with async_run

# Left out of the snapshots (at the baseline and the end) that name where traced memory grew:
# tracemalloc's own bookkeeping and asyncio's registry of tasks are not the runtime's.
NOT_OURS = ("*/asyncio/*", "*/_weakrefset.py", "*/tracemalloc.py", "*/linecache.py")


def soak_model() -> onnx.ModelProto:
    """x[1,4] -> Relu (NPU) -> Cast, Gather from a 10-row table (host) -> Mul 2, Add r (NPU):
    y = 20 * floor(relu(x)) + relu(x), exact in float32, and different for every input. An input
    with a value >= 10 indexes past the table, so onnxruntime fails it in the host partition."""
    table = np.arange(TABLE_ROWS, dtype=np.float32) * 10
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Cast", ["r"], ["i"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "i"], ["g"], axis=0),
             helper.make_node("Mul", ["g", "two"], ["m"]),
             helper.make_node("Add", ["m", "r"], ["y"])]
    graph = helper.make_graph(
        nodes, "soak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(2, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # POSIX only
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def os_thread_count() -> int:
    """Threads of the process as the OS sees them (onnxruntime's and torch's pools too); -1 if unknown."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration):
        return -1


def open_fd_count() -> int:
    """File descriptors the process has open (Linux /proc); -1 if unknown."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, p) for p in NOT_OURS])


@dataclass(slots=True)
class Sample:
    requests: int
    seconds: float
    rss_bytes: int
    traced_bytes: int
    python_threads: int
    os_threads: int
    tracemalloc_bytes: int = 0  # tracemalloc's own tables, part of the RSS
    open_fds: int = 0
    # Latency of the thread clients' requests that ended since the previous sample (AsyncTask.latency:
    # submission to completion in the engine, at most max_inflight in flight; cancelled ones left out).
    p50_ms: float = 0.0
    p99_ms: float = 0.0


@dataclass
class SoakResult:
    requests: int
    completed: int = 0
    failed: int = 0          # failed as expected (a bad input), with the sync Runtime's error
    cancelled: int = 0
    wrong: list[str] = field(default_factory=list)  # anything else: a wrong result, an unexpected error
    samples: list[Sample] = field(default_factory=list)
    warmup_requests: int = 0
    runtime_stats: dict = field(default_factory=dict)
    threads_before: int = 0
    threads_after_close: int = 0
    seconds: float = 0.0
    top_growth: list[str] = field(default_factory=list)  # where traced memory grew most, baseline to end

    @property
    def lost(self) -> int:
        return self.requests - self.completed - self.failed - self.cancelled - len(self.wrong)

    def growth(self, attr: str) -> int:
        """How much `attr` grew from the end of the warm-up to the largest later sample."""
        base = self._base()
        return max(getattr(s, attr) for s in self.samples if s.requests >= base.requests) - getattr(base, attr)

    def _base(self) -> Sample:
        return next(s for s in self.samples if s.requests >= self.warmup_requests)

    def thread_counts(self, attr: str) -> set[int]:
        base = self._base()
        return {getattr(s, attr) for s in self.samples if s.requests >= base.requests}


class Checker:
    """The expected outcome of each request: onnxruntime on the source model, and for the inputs
    it fails, the message the synchronous rblnc Runtime gives."""

    def __init__(self, model: onnx.ModelProto, compiled):
        self._session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self._sync = rblnc.Runtime(compiled)

    def check(self, x: np.ndarray, outcome, result: SoakResult, index: int) -> None:
        bad = bool(np.any(x >= TABLE_ROWS))
        if isinstance(outcome, (concurrent.futures.CancelledError, asyncio.CancelledError)):
            result.cancelled += 1
        elif bad:
            try:
                self._sync.run(x)
            except ExecutionError as sync_error:
                if isinstance(outcome, ExecutionError) and str(outcome) == str(sync_error) and \
                        f"rblnc request {outcome.request_id} failed at step p1_host (host)" in outcome.__notes__:
                    result.failed += 1
                    return
                result.wrong.append(f"request {index}: expected {sync_error!r}, got {outcome!r}")
                return
            result.wrong.append(f"request {index}: the sync Runtime did not fail on {x.tolist()}")
        elif isinstance(outcome, np.ndarray) and np.array_equal(outcome, self._session.run(None, {"x": x})[0]):
            result.completed += 1
        else:
            result.wrong.append(f"request {index}: expected {self._session.run(None, {'x': x})[0].tolist()}, "
                                f"got {outcome!r}")


def _inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.uniform(-2.0, TABLE_ROWS - 1e-3, (n, 1, 4)).astype(np.float32)
    bad = rng.random(n) < BAD_FRACTION
    x[bad, 0, rng.integers(0, 4, int(bad.sum()))] = rng.uniform(TABLE_ROWS, TABLE_ROWS + 5, int(bad.sum()))
    return x


def _thread_client(runtime: rblnc.AsyncRuntime, xs: np.ndarray, cancel: np.ndarray) -> tuple[list, list[float]]:
    """Submits all, cancels some at once, then waits for each (every 10th first with a wait that
    expires). Returns the outcomes and the latencies of the requests that completed or failed."""
    tasks = [runtime.run(x) for x in xs]
    for task, stop in zip(tasks, cancel):
        if stop:
            task.cancel()
    outcomes = []
    for i, task in enumerate(tasks):
        try:
            if i % 10 == 0:
                try:
                    task.wait(timeout=0)
                except TimeoutError:
                    pass
            outcomes.append(task.wait(timeout=120))
        except (ExecutionError, concurrent.futures.CancelledError) as exc:
            outcomes.append(exc)
    return outcomes, [t.latency for t in tasks if not t.cancelled()]


class _Client:
    """A client thread for the soak's whole length (so thread counts stay what they are), running
    one job a round; it drops the job and its result before saying it is done, so nothing of a
    round is held by it when memory is sampled."""

    def __init__(self, name: str):
        self._jobs: SimpleQueue = SimpleQueue()
        self._ready: SimpleQueue = SimpleQueue()
        self._box: list = []
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._box.append(job())
            except BaseException as exc:  # noqa: B036 - handed to the round, which raises it
                self._box.append(exc)
            job = None
            self._ready.put(True)

    def start(self, job) -> None:
        self._jobs.put(job)

    def result(self):
        self._ready.get()
        outcome = self._box.pop()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        self._jobs.put(None)
        self.thread.join()


async def _round(runtime: rblnc.AsyncRuntime, clients: list[_Client], xs: np.ndarray, modes: np.ndarray,
                 latencies: list[float]) -> list:
    """One round of requests: mode 0 async_run on this loop, 1 and 2 from the two client threads
    (2: cancelled right after submission). Returns the outcomes in input order; adds the thread
    clients' latencies to `latencies`."""
    by_async = np.flatnonzero(modes == 0)
    by_thread = np.flatnonzero(modes != 0)
    halves = [by_thread[0::2], by_thread[1::2]]
    for client, half in zip(clients, halves):
        client.start(lambda h=half: _thread_client(runtime, xs[h], modes[h] == 2))
    async_outcomes = await asyncio.gather(*(runtime.async_run(xs[i]) for i in by_async), return_exceptions=True)
    outcomes: list = [None] * len(xs)
    for i, o in zip(by_async, async_outcomes):
        outcomes[i] = o
    for client, half in zip(clients, halves):
        results, client_latencies = client.result()  # blocks the loop, which has nothing left to do this round
        latencies.extend(client_latencies)
        if len(results) != len(half):
            raise RuntimeError(f"a client thread returned {len(results)} outcomes for {len(half)} requests")
        for i, o in zip(half, results):
            outcomes[i] = o
    return outcomes


def soak(requests: int, *, round_size: int = 1000, warmup: int = 5000, sample_every: int = 5000,
         seed: int = 0, max_inflight: int = 64, progress=None) -> SoakResult:
    """Runs `requests` requests in rounds of `round_size` through one AsyncRuntime and checks them
    all. Memory and threads are sampled between rounds (nothing in flight, after gc) every
    `sample_every` requests; growth is measured from the first sample at or after `warmup`."""
    model = soak_model()
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    checker = Checker(model, compiled)
    rng = np.random.default_rng(seed)
    result = SoakResult(requests=requests, warmup_requests=warmup)
    result.threads_before = threading.active_count()
    loop = asyncio.new_event_loop()
    runtime = rblnc.AsyncRuntime(compiled, max_inflight=max_inflight)
    clients = [_Client(f"soak-client-{k}") for k in range(2)]
    started = time.perf_counter()
    done = 0
    latencies: list[float] = []
    base_snapshot = None
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        while done < requests:
            n = min(round_size, requests - done)
            xs = _inputs(rng, n)
            modes = np.where(rng.random(n) < THREAD_FRACTION, np.where(rng.random(n) < CANCEL_FRACTION / THREAD_FRACTION,
                                                                       2, 1), 0)
            outcomes = loop.run_until_complete(_round(runtime, clients, xs, modes, latencies))
            for i, (x, outcome) in enumerate(zip(xs, outcomes)):
                checker.check(x, outcome, result, done + i)
            done += n
            del outcomes, xs, x, outcome  # the last outcome may be an exception holding its traceback
            if done % sample_every == 0 or done == requests:
                gc.collect()
                if base_snapshot is None and done >= warmup:
                    base_snapshot = _snapshot()  # before the baseline sample, which then counts it
                # Python memory now (get_traced_memory is cheap; a snapshot of every trace at every
                # sample would itself fragment the heap and make RSS creep).
                p50, p99 = np.percentile(latencies, [50, 99]) * 1e3 if latencies else (0.0, 0.0)
                latencies.clear()
                sample = Sample(done, time.perf_counter() - started, rss_bytes(), tracemalloc.get_traced_memory()[0],
                                threading.active_count(), os_thread_count(), tracemalloc.get_tracemalloc_memory(),
                                open_fd_count(), float(p50), float(p99))
                result.samples.append(sample)
                if progress:
                    progress(sample)
        if base_snapshot is not None:
            growth = _snapshot().compare_to(base_snapshot, "lineno")
            result.top_growth = [str(stat) for stat in growth[:5] if stat.size_diff > 0]
    finally:
        result.seconds = time.perf_counter() - started
        result.runtime_stats = {k: v for k, v in runtime.stats().items() if k in ("completed", "failed", "cancelled")}
        runtime.close()
        for client in clients:
            client.close()
        loop.close()
        if not tracing:
            tracemalloc.stop()
    result.threads_after_close = threading.active_count()
    return result


def verdict(result: SoakResult, *, rss_limit: int, traced_limit: int) -> list[str]:
    """The soak's failures, empty if it passed: every request accounted for and right, the
    runtime's own counts agree, memory growth after the warm-up within the limits, threads flat."""
    problems = [*result.wrong[:10]]
    if result.wrong:
        problems.append(f"{len(result.wrong)} requests ended wrong")
    if result.lost:
        problems.append(f"{result.lost} requests lost (no outcome)")
    stats = result.runtime_stats
    if (stats.get("completed"), stats.get("failed"), stats.get("cancelled")) != \
            (result.completed, result.failed, result.cancelled):
        problems.append(f"the runtime counted {stats}, the clients saw completed={result.completed} "
                        f"failed={result.failed} cancelled={result.cancelled}")
    if result.growth("rss_bytes") > rss_limit:
        problems.append(f"RSS grew by {result.growth('rss_bytes') / 2**20:.1f} MiB after the warm-up "
                        f"(limit {rss_limit / 2**20:.1f} MiB)")
    if result.growth("traced_bytes") > traced_limit:
        problems.append(f"traced Python memory grew by {result.growth('traced_bytes') / 1024:.0f} KiB after the "
                        f"warm-up (limit {traced_limit / 1024:.0f} KiB); most at: " + "; ".join(result.top_growth))
    for attr in ("python_threads", "os_threads", "open_fds"):
        if len(result.thread_counts(attr)) > 1:
            problems.append(f"{attr.replace('_', ' ')} changed: {sorted(result.thread_counts(attr))}")
    if result.threads_after_close != result.threads_before:
        problems.append(f"{result.threads_after_close} Python threads after close, {result.threads_before} before")
    return problems


def print_sample(sample: Sample) -> None:
    print(f"{sample.requests:>9,} {sample.seconds:>8.1f} {sample.requests / sample.seconds:>8.0f} "
          f"{sample.rss_bytes / 2**20:>9.1f} {sample.traced_bytes / 1024:>11.1f} "
          f"{sample.python_threads:>7} {sample.os_threads:>7} {sample.open_fds:>6} "
          f"{sample.p50_ms:>7.2f} {sample.p99_ms:>7.2f} {sample.tracemalloc_bytes / 2**20:>10.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--round", type=int, default=1000, help="requests per round (memory is sampled between rounds)")
    parser.add_argument("--warmup", type=int, default=20_000, help="requests before the memory baseline")
    parser.add_argument("--sample-every", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-limit-mib", type=float, default=8.0)
    parser.add_argument("--traced-limit-kib", type=float, default=256.0)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)

    print(f"soak: {args.requests:,} requests through AsyncRuntime (NPU -> host -> NPU), rounds of {args.round}: "
          f"{1 - THREAD_FRACTION:.0%} async_run, {THREAD_FRACTION:.0%} run()+wait() from 2 threads "
          f"({CANCEL_FRACTION:.0%} cancelled at once), {BAD_FRACTION:.0%} inputs the host partition fails on")
    print(f"{'requests':>9} {'seconds':>8} {'req/s':>8} {'RSS MiB':>9} {'traced KiB':>11} {'py thr':>7} {'os thr':>7} {'fds':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'tm own MiB':>10}")
    result = soak(args.requests, round_size=args.round, warmup=args.warmup, sample_every=args.sample_every,
                  seed=args.seed, progress=print_sample)
    problems = verdict(result, rss_limit=int(args.rss_limit_mib * 2**20), traced_limit=int(args.traced_limit_kib * 1024))
    print()
    print(f"{'requests':<36}{result.requests:>10,}")
    print(f"{'completed, equal to onnxruntime':<36}{result.completed:>10,}")
    print(f"{'failed with the expected error':<36}{result.failed:>10,}")
    print(f"{'cancelled':<36}{result.cancelled:>10,}")
    print(f"{'wrong':<36}{len(result.wrong):>10,}")
    print(f"{'lost':<36}{result.lost:>10,}")
    print(f"{'RSS growth after warm-up':<36}{result.growth('rss_bytes') / 2**20:>10.2f} MiB "
          f"(limit {args.rss_limit_mib} MiB; of which tracemalloc's own tables "
          f"{result.growth('tracemalloc_bytes') / 2**20:.2f} MiB)")
    print(f"{'traced growth after warm-up':<36}{result.growth('traced_bytes') / 1024:>10.1f} KiB "
          f"(limit {args.traced_limit_kib} KiB)")
    print(f"{'Python / OS threads after warm-up':<36}{sorted(result.thread_counts('python_threads'))} / "
          f"{sorted(result.thread_counts('os_threads'))}")
    print(f"{'open fds after warm-up':<36}{sorted(result.thread_counts('open_fds'))}")
    after = [s for s in result.samples if s.requests > result.warmup_requests]
    if after:
        print(f"{'p99 latency after warm-up':<36}first window {after[0].p99_ms:.2f} ms, last {after[-1].p99_ms:.2f} ms, "
              f"max {max(s.p99_ms for s in after):.2f} ms (thread clients; machine shared)")
    print(f"{'Python threads before / after close':<36}{result.threads_before} / {result.threads_after_close}")
    print(f"{'wall time':<36}{result.seconds:>10.1f} s ({result.requests / result.seconds:,.0f} req/s with "
          "tracemalloc on; machine shared)")
    if result.top_growth:
        print("traced memory grew most at (baseline to end):\n  " + "\n  ".join(result.top_growth))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(result), "lost": result.lost, "problems": problems}, indent=1))
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("\npassed: every request accounted for and right; memory and threads flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
