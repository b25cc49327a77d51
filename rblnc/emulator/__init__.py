"""The NPU emulator: runs NPU programs with the device's numerics (their time is modelled when compiling)."""

import os
import sys

if "torch" not in sys.modules:
    # torch's OpenMP workers (libgomp) busy-wait between parallel regions by default. Where the
    # cores are shared (host partitions' onnxruntime threads, other processes) a spinning worker
    # holds a core the others need and is descheduled when the next region starts, so each of
    # the hundreds of regions of an inference waits for it: YOLOv8n took 2 s instead of 0.1 s
    # on a loaded 2-core machine. Sleeping workers cost a wake-up (microseconds) per region.
    # libgomp reads this once, when torch loads it; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .kernels import KERNELS  # noqa: E402  (imports torch)
from . import fused_kernels  # noqa: F401,E402  registers the ai.rblnc kernels in KERNELS
from .npu import EmulatorError, NpuProgramRunner  # noqa: E402

def thread_settings():
    """A function that gives the thread calling it the calling thread's torch thread count. torch
    keeps the count it reports in a global, but OpenMP keeps the count it uses per thread: a new
    thread's parallel regions use every core whatever torch.set_num_threads said, and on a shared
    2-core machine MobileNetV2 then ran 13x slower on a runtime lane than on the main thread."""
    import torch

    count = torch.get_num_threads()
    return lambda: torch.set_num_threads(count)


def compute_lanes(limit: int) -> int:
    """How many emulated NPU steps may compute at once (at most `limit`) without their torch
    threads outnumbering the cores: the cores this process may use over the calling thread's
    torch thread count. A lane computes with that count (thread_settings), so at the default
    (one thread per core) this is 1, and at torch.set_num_threads(1) on 2 cores it is 2."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(limit, cores // max(1, torch.get_num_threads())))


# The documented error of a whole model's output against its fp32 reference (docs/precision.md),
# per reduced precision: (max |y - ref| / max |ref|, ||y - ref|| / ||ref||). Tests of importers
# that compile at reduced precision can hold models to these.
MODEL_ERROR_BOUNDS = {"fp16": (5e-2, 2e-2), "bf16": (2.5e-1, 1.2e-1)}

__all__ = ["KERNELS", "EmulatorError", "NpuProgramRunner", "MODEL_ERROR_BOUNDS", "compute_lanes", "thread_settings"]
