"""The NPU emulator: runs NPU programs with the device's numerics (their time is modelled when compiling)."""

from .kernels import KERNELS
from . import fused_kernels  # noqa: F401  registers the ai.rblnc kernels in KERNELS
from .npu import EmulatorError, NpuProgramRunner

# The documented error of a whole model's output against its fp32 reference (docs/precision.md),
# per reduced precision: (max |y - ref| / max |ref|, ||y - ref|| / ||ref||). Tests of importers
# that compile at reduced precision can hold models to these.
MODEL_ERROR_BOUNDS = {"fp16": (5e-2, 2e-2), "bf16": (2.5e-1, 1.2e-1)}

__all__ = ["KERNELS", "EmulatorError", "NpuProgramRunner", "MODEL_ERROR_BOUNDS"]
