"""The runtime soak in the test suite: 10,000 requests through AsyncRuntime (benchmarks/soak.py,
which `make soak` runs with 100,000), every outcome checked against onnxruntime, memory and
threads flat; and an idle runtime keeps nothing of the requests it served alive."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from test_async_runtime import gather_model

import rblnc
from rblnc.errors import ExecutionError

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def _load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


def test_ten_thousand_requests_all_accounted_for_with_memory_and_threads_flat():
    """Run in a fresh interpreter: the process's OS threads are counted, and native threads that
    earlier tests leave behind (Ray's, onnxruntime's pools) come and go on their own schedule."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_soak; "
            "test_soak.check_ten_thousand_requests()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]


def check_ten_thousand_requests():
    """60 % async_run on one event loop, 40 % run() + wait() from two threads (5 % cancelled as
    soon as submitted), 5 % inputs the host partition fails on. Memory and threads are sampled
    every 1,000 requests between rounds; the baseline is taken after a 4,000-request warm-up."""
    before = set(threading.enumerate())
    result = soak.soak(10_000, round_size=500, warmup=4000, sample_every=1000, seed=3)
    assert result.wrong == [] and result.lost == 0
    assert result.completed + result.failed + result.cancelled == 10_000
    assert result.completed > 9000 and result.failed > 300 and result.cancelled > 50
    assert result.runtime_stats == {"completed": result.completed, "failed": result.failed,
                                    "cancelled": result.cancelled}
    # Python memory: flat to within 64 KiB over 6,000 requests (a leak of 11 bytes a request
    # would show). RSS is noisier (the allocator, onnxruntime's and torch's pools): within 8 MiB.
    assert soak.verdict(result, rss_limit=8 * 2**20, traced_limit=64 * 1024) == []
    assert result.growth("traced_bytes") < 64 * 1024
    assert result.thread_counts("python_threads") == {1 + 2 + 3}  # this one, 2 clients, the runtime's 3 lanes
    assert len(result.thread_counts("os_threads")) == 1
    fds = result.thread_counts("open_fds")
    assert len(fds) == 1 and min(fds) > 0  # no descriptor opened per request (nor a failed count)
    assert set(threading.enumerate()) == before


class _Held:
    """Stands for whatever a caller's frame holds while it waits (big arrays, a connection)."""


@pytest.mark.parametrize("how", ["run", "async_run"])
def test_an_idle_runtime_keeps_nothing_of_a_failed_request_alive(how):
    """A failed request's error carries a traceback through the frame that waited for it. The lane
    that served it used to keep that request, so the caller's frame and everything it held, alive
    until its next request: the soak saw a whole round of results held at times."""
    compiled = rblnc.compile_from_onnx(gather_model(), dtype="fp32")
    bad = np.array([[1, 12.5, 2, 3]], np.float32)
    with rblnc.AsyncRuntime(compiled) as runtime:
        def caller() -> weakref.ref:
            held = _Held()
            if how == "run":
                with pytest.raises(ExecutionError):
                    runtime.run(bad).wait(timeout=30)
            else:
                async def main():
                    with pytest.raises(ExecutionError):
                        await runtime.async_run(bad)
                asyncio.run(main())
            return weakref.ref(held)

        held = caller()
        deadline = time.monotonic() + 5  # the lane may still be on its way back to its queue
        while held() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
        assert runtime.inflight() == 0
        assert held() is None, "the idle runtime keeps the failed request's caller frame alive"
