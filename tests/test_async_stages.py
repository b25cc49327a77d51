"""The user's host stages in the chain: `preprocess` / `postprocess` on Runtime and AsyncRuntime —
results equal to the sequential pipeline's under concurrency, errors that reach only their own
request, cancel and close as for any step, steps in the trace, paced by their own time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from conftest import mixed_model
from test_async_runtime import paced_model

import rblnc
from rblnc.errors import InputShapeError
from rblnc.runtime.engine import Resource

IMAGE_SHAPE = (8, 8, 3)  # what a caller hands over: an HWC uint8 image


def letterbox_like(image: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """The preprocess: HWC uint8 -> NCHW float32 in [0, gain]. A pixel of 255 in the corner marks
    a request whose preprocess fails."""
    if image[0, 0, 0] == 255:
        raise ValueError(f"unreadable image (corner {image[0, 0].tolist()})")
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None].astype(np.float32) * (gain / 255.0))


def summarise(y: np.ndarray) -> dict:
    """The postprocess: a dict per request."""
    return {"best": int(y.argmax()), "total": float(y.sum()), "y": y}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, *IMAGE_SHAPE), dtype=np.uint8)  # 255 excluded


@pytest.fixture(scope="module")
def mixed():
    """NPU -> host (Erf) -> NPU."""
    return rblnc.compile_from_onnx(mixed_model(), dtype="fp32")


@pytest.fixture(scope="module")
def sequential(mixed):
    """The pipeline run by hand, one request at a time: preprocess, onnxruntime, postprocess."""
    session = ort.InferenceSession(mixed_model().SerializeToString(), providers=["CPUExecutionProvider"])
    plain = rblnc.Runtime(mixed)

    def run(image, gain: float = 1.0, with_rblnc: bool = True):
        x = letterbox_like(image, gain)
        return summarise(plain.run(x) if with_rblnc else session.run(None, {"x": x})[0])

    return run


def _same(result: dict, expected: dict) -> None:
    assert result["best"] == expected["best"]
    np.testing.assert_array_equal(result["y"], expected["y"])


def test_thousand_concurrent_requests_equal_the_sequential_pipeline(mixed, sequential):
    images = _images(1000, seed=1)
    with rblnc.AsyncRuntime(mixed, preprocess=letterbox_like, postprocess=summarise, max_inflight=200) as runtime:
        async def main():
            return await asyncio.gather(*(runtime.async_run(image, gain=0.5 + i % 3) for i, image in enumerate(images)))

        results = asyncio.run(main())
        threaded = [runtime.run(image, gain=2.0) for image in images[:50]]
        threaded = [t.wait(timeout=60) for t in threaded]
    for i, (image, result) in enumerate(zip(images, results)):
        _same(result, sequential(image, gain=0.5 + i % 3))
    for image, result in zip(images, threaded):
        _same(result, sequential(image, gain=2.0))
    # and rblnc's pipeline matches onnxruntime's at the emulator's fp32 tolerance.
    for i, image in enumerate(images[:20]):
        expected = sequential(image, gain=0.5 + i % 3, with_rblnc=False)
        np.testing.assert_allclose(results[i]["y"], expected["y"], rtol=1e-4, atol=1e-5)
    assert runtime.stats()["completed"] == 1050


def test_sync_runtime_runs_the_same_stages_inline(mixed, sequential):
    runtime = mixed.create_runtime(preprocess=letterbox_like, postprocess=summarise, trace=True)
    for image in _images(3, seed=2):
        _same(runtime.run(image, gain=1.5), sequential(image, gain=1.5))
    chain = [r.step for r in runtime.timeline() if r.request == runtime.timeline()[0].request]
    assert chain == ["preprocess", "p0_npu", "p1_host", "p2_npu", "postprocess"]
    assert {r.resource for r in runtime.timeline() if r.step in ("preprocess", "postprocess")} == {Resource.HOST}


@pytest.mark.parametrize("where", ["preprocess", "postprocess"])
def test_an_exception_in_a_stage_reaches_only_its_own_request(mixed, sequential, where):
    """1 request in 7 fails in the stage; it raises the stage's own exception (type and message,
    with a note naming the request and step), the others are exact. As in the sync Runtime."""
    images = _images(140, seed=3)
    bad = set(range(0, 140, 7))
    postprocess = summarise
    if where == "preprocess":
        for i in bad:
            images[i, 0, 0, 0] = 255
        error, message = ValueError, "unreadable image"
    else:
        plain = rblnc.Runtime(mixed)
        failing = {plain.run(letterbox_like(images[i])).tobytes() for i in bad}

        def postprocess(y):
            if y.tobytes() in failing:
                raise OverflowError("score above the threshold")
            return summarise(y)

        error, message = OverflowError, "score above the threshold"
    with rblnc.AsyncRuntime(mixed, preprocess=letterbox_like, postprocess=postprocess) as runtime:
        async def main():
            return await asyncio.gather(*(runtime.async_run(image) for image in images), return_exceptions=True)

        outcomes = asyncio.run(main())
        threaded = [runtime.run(image) for image in images[:14]]
        for i, task in enumerate(threaded):
            if i in bad:
                with pytest.raises(error, match=message):
                    task.wait(timeout=30)
            else:
                _same(task.wait(timeout=30), sequential(images[i]))
    for i, (image, outcome) in enumerate(zip(images, outcomes)):
        if i in bad:
            assert type(outcome) is error and str(outcome).startswith(message), repr(outcome)
            assert f"failed at step {where} (host)" in "\n".join(outcome.__notes__)
            assert outcome.request_id > 0
        else:
            _same(outcome, sequential(image))
    assert runtime.stats()["failed"] == len(bad) + 2 and runtime.stats()["completed"] == 154 - len(bad) - 2
    with pytest.raises(error, match=message):
        rblnc.Runtime(mixed, preprocess=letterbox_like, postprocess=postprocess).run(images[0])


def test_preprocess_output_is_checked_as_run_checks_inputs(mixed):
    with rblnc.AsyncRuntime(mixed, preprocess=lambda image: image[None]) as runtime:
        task = runtime.run(_images(1)[0])
        with pytest.raises(InputShapeError, match=r"input 'x': expected shape \[1, 3, 8, 8\], got \[1, 8, 8, 3\]"):
            task.wait(timeout=30)
    with pytest.raises(TypeError, match="preprocess must be a callable"):
        rblnc.AsyncRuntime(mixed, preprocess="letterbox")
    with pytest.raises(TypeError, match="postprocess must be a callable"):
        rblnc.Runtime(mixed, postprocess=3)


def test_stage_arguments_by_name_tuple_and_out(mixed, sequential):
    image = _images(1, seed=4)[0]
    expected = rblnc.Runtime(mixed).run(letterbox_like(image))
    by_name = rblnc.AsyncRuntime(mixed, preprocess=lambda image: {"x": letterbox_like(image)})
    as_tuple = rblnc.AsyncRuntime(mixed, preprocess=lambda image: (letterbox_like(image),), postprocess=lambda y: y * 2)
    with by_name, as_tuple:
        np.testing.assert_array_equal(by_name.run(image=image).wait(timeout=30), expected)
        out = np.empty_like(expected)
        doubled = as_tuple.run(image, out=out).wait(timeout=30)
    np.testing.assert_array_equal(out, expected)  # out= holds the model's outputs, as postprocess got them
    np.testing.assert_array_equal(doubled, expected * 2)


def _gated(stage):
    """The stage, holding its first call until `release` is set; `entered` tells it began."""
    entered, release = threading.Event(), threading.Event()

    def gated(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            release.wait(timeout=60)
        return stage(*args, **kwargs)

    return gated, entered, release


@pytest.mark.parametrize("where", ["preprocess", "postprocess"])
def test_cancel_while_a_stage_runs_stops_the_chain_there(mixed, sequential, where):
    """Paced (the steps take their time): the first request is cancelled while its stage runs; the
    stage completes on its lane, nothing after it runs, the second request is exact."""
    compiled = paced_model(npu_ms=5, dma_ms=1, host_ms=1)
    gated, entered, release = _gated(letterbox_like if where == "preprocess" else summarise)
    stages = {"preprocess": letterbox_like, "postprocess": summarise, where: gated}
    first_image, second_image = _images(2, seed=5)
    with rblnc.AsyncRuntime(compiled, pace=True, trace=True, **stages) as runtime:
        first = runtime.run(first_image)
        assert entered.wait(timeout=30)
        second = runtime.run(second_image)
        assert first.cancel() is True and first.cancelled()
        release.set()
        _same(second.wait(timeout=60), sequential(second_image))
        with pytest.raises(concurrent.futures.CancelledError, match=f"request {first.request_id} was cancelled"):
            first.wait(timeout=0)
    chain = [r.step for r in runtime.timeline() if r.request == first.request_id]
    assert chain[-1] == where and chain == [s.name for s in runtime.steps][:len(chain)]
    assert runtime.stats()["cancelled"] == 1 and runtime.stats()["completed"] == 1


@pytest.mark.parametrize("cancel", [False, True], ids=["graceful", "cancel"])
def test_close_with_requests_held_in_preprocess(mixed, sequential, cancel):
    """Requests queued behind a preprocess that holds the host lane; close() finishes them all
    exactly, close(cancel=True) cancels those not yet through."""
    gated, entered, release = _gated(letterbox_like)
    images = _images(20, seed=6)
    runtime = rblnc.AsyncRuntime(mixed, preprocess=gated, postprocess=summarise, host_workers=1)
    tasks = [runtime.run(image) for image in images]
    assert entered.wait(timeout=30)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    runtime.close(cancel=cancel)
    timer.join()
    assert all(t.done() for t in tasks) and runtime.inflight() == 0
    if cancel:
        assert all(t.cancelled() for t in tasks)
    else:
        for image, task in zip(images, tasks):
            _same(task.wait(timeout=0), sequential(image))


def test_paced_stages_last_their_own_time_times_the_scale(mixed):
    """A stage has no modelled time: paced, it lasts its own time x S (slow motion keeps the
    proportions), on a host lane, beside the model's steps."""
    compiled = paced_model(npu_ms=2, dma_ms=0.5, host_ms=0.5)
    scale = 3.0
    cpu_seconds: dict[str, list[float]] = {"preprocess": [], "postprocess": []}

    def cpu_timed(name, fn):
        def stage(value):
            started = time.thread_time()
            try:
                return fn(value)
            finally:
                cpu_seconds[name].append(time.thread_time() - started)
        return stage

    with rblnc.AsyncRuntime(compiled, pace=scale, trace=True, preprocess=cpu_timed("preprocess", letterbox_like),
                            postprocess=cpu_timed("postprocess", summarise)) as runtime:
        for task in [runtime.run(image) for image in _images(4, seed=9)]:
            task.wait(timeout=60)
    stages = [r for r in runtime.timeline() if r.step in ("preprocess", "postprocess")]
    assert len(stages) == 8 and all(r.resource is Resource.HOST and r.lane.startswith("host") for r in stages)
    # Each stage lasts at least its thread's CPU time x S (wall time, which a busy machine inflates
    # by descheduling, is no floor); sorting both sides keeps a per-stage inequality.
    for name, spent in cpu_seconds.items():
        durations = sorted(r.end - r.start for r in stages if r.step == name)
        assert len(durations) == len(spent) == 4
        for duration, cpu in zip(durations, sorted(spent)):
            assert duration >= scale * cpu * 0.99, (name, durations, spent)
