"""Staging buffers for the inputs an AsyncRuntime copies when it admits a request, reused from one
request to the next so that copying a large input does not fault fresh pages in every time."""

from __future__ import annotations

import sys
import threading
from collections import deque

import numpy as np

# Below this an input's copy comes from malloc's own free lists, and a pooled one would cost more.
MIN_POOLED_BYTES = 64 * 1024
MAX_POOLED_BYTES = 64 * 2**20  # what the staging buffers of one runtime may keep between requests


class StagingPool:
    """Copies of inputs in buffers that come back when their request ends. glibc returns the freed
    top of its heap to the kernel once it exceeds ~1 MB, so a burst of requests with large inputs
    (64 admitted at once, 512 KB each) had every copy fault its pages in afresh: 130 page faults
    and 0.4 ms of kernel time per request on conv 3x3, 32x64x64, a quarter of one step's compute.

    A buffer is reused only if nothing but the pool holds it when its request ends: an output that
    is a view of the input, a step's frame kept by a failed request's traceback, or a tensor the
    emulator made from it keep it alive, and then it is simply dropped."""

    def __init__(self, max_bytes: int = MAX_POOLED_BYTES):
        self._free: dict[tuple, deque[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._pooled_bytes = 0  # in the free lists
        self._max_bytes = max_bytes

    def copy(self, array: np.ndarray, held: list[np.ndarray]) -> np.ndarray:
        """A copy of `array`; for a large array a staging buffer, appended to `held` (give it back
        with `give_back(held)` when the request ends)."""
        if not MIN_POOLED_BYTES <= array.nbytes <= self._max_bytes:
            return np.array(array, copy=True)
        with self._lock:
            free = self._free.get((array.shape, array.dtype))
            buffer = free.pop() if free else None
            if buffer is not None:
                self._pooled_bytes -= buffer.nbytes
        if buffer is None:
            buffer = np.empty(array.shape, array.dtype)
        np.copyto(buffer, array)
        held.append(buffer)
        return buffer

    def give_back(self, held: list[np.ndarray]) -> None:
        """Returns a finished request's buffers that nothing else refers to any more (as many as
        `max_bytes` allows: a burst of requests leaves at most that much behind)."""
        while held:
            buffer = held.pop()
            # References: `buffer` and getrefcount's argument. Any other holder keeps it out of the pool.
            if sys.getrefcount(buffer) > 2:
                continue
            with self._lock:
                if self._pooled_bytes + buffer.nbytes <= self._max_bytes:
                    self._free.setdefault((buffer.shape, buffer.dtype), deque()).append(buffer)
                    self._pooled_bytes += buffer.nbytes
