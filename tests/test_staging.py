"""The AsyncRuntime's staging buffers: large input copies reused across requests, never while
anything still refers to one, and never changing what a caller sent or got back."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest
from conftest import make_onnx
from onnx import helper

import rblnc
from rblnc.runtime.staging import MIN_POOLED_BYTES, StagingPool

BIG = (1, 4, 64, 64)  # 64 KiB of float32: pooled


def test_a_buffer_comes_back_only_when_nothing_else_holds_it():
    pool = StagingPool()
    source = np.arange(np.prod(BIG), dtype=np.float32).reshape(BIG)
    held: list[np.ndarray] = []
    first = pool.copy(source, held)
    assert held == [first] and first is not source and np.array_equal(first, source)
    view = first[0, 0]  # an output that is a view of the input, say
    address = first.ctypes.data
    del first
    pool.give_back(held)
    assert held == [] and pool.copy(source, held).ctypes.data != address  # still referred to: not reused
    del view
    second = held[0]
    address = second.ctypes.data
    del second
    pool.give_back(held)
    again = pool.copy(source * 2, held)
    assert again.ctypes.data == address and np.array_equal(again, source * 2)  # reused, refilled


def test_small_arrays_and_a_full_pool_are_plain_copies():
    small = np.ones(MIN_POOLED_BYTES // 8, np.float32)
    held: list[np.ndarray] = []
    assert np.array_equal(StagingPool().copy(small, held), small) and held == []
    pool = StagingPool(max_bytes=3 * 64 * 1024)
    big = np.ones(BIG, np.float32)
    copies = [pool.copy(big, held) for _ in range(5)]
    del copies
    pool.give_back(held)
    assert pool._pooled_bytes == 3 * big.nbytes  # the rest went back to the allocator


@pytest.fixture(scope="module")
def conv_model():
    """Conv -> Erf (host) -> Conv on a 64 KiB input, so its copies are staging buffers."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((4, 4, 1, 1)).astype(np.float32) * 0.3
    return make_onnx(
        [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Erf", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "w2"], ["y"])],
        [("x", list(BIG))], [("y", list(BIG))], [("w1", w1), ("w2", w2)],
    )


@pytest.mark.parametrize("npu_lanes", [1, 2])
def test_rounds_of_requests_with_refilled_caller_buffers_each_get_their_own_result(conv_model, npu_lanes):
    """The caller refills one buffer after each submission; rounds of 60 requests reuse the staging
    buffers of the rounds before; every result is onnxruntime's for what was sent, and results
    kept from the first round do not change when later rounds reuse the buffers."""
    session = ort.InferenceSession(conv_model.SerializeToString(), providers=["CPUExecutionProvider"])
    compiled = rblnc.compile_from_onnx(conv_model, dtype="fp32", host_ops=["Erf"])
    rng = np.random.default_rng(1)
    buffer = np.empty(BIG, np.float32)
    kept = []
    with rblnc.AsyncRuntime(compiled, npu_lanes=npu_lanes) as runtime:
        assert runtime.npu_lanes == npu_lanes
        for round_ in range(3):
            sent, tasks = [], []
            for _ in range(60):
                buffer[...] = rng.standard_normal(BIG)
                sent.append(buffer.copy())
                tasks.append(runtime.run(buffer))
            results = [t.wait(timeout=60) for t in tasks]
            for x, y in zip(sent, results):
                np.testing.assert_allclose(y, session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
            if round_ == 0:
                kept = [(y, y.copy()) for y in results]

            async def gathered(xs):
                return await asyncio.gather(*(runtime.async_run(x) for x in xs))

            for x, y in zip(sent, asyncio.run(gathered(sent))):
                np.testing.assert_allclose(y, session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
        assert runtime._staging._pooled_bytes > 0  # the buffers did come back
    for y, copy in kept:
        np.testing.assert_array_equal(y, copy)
