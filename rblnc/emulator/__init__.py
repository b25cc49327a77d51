"""The NPU emulator: runs NPU programs with the device's numerics (and, later, its timing)."""

from .kernels import KERNELS
from . import fused_kernels  # noqa: F401  registers the ai.rblnc kernels in KERNELS
from .npu import EmulatorError, NpuProgramRunner

__all__ = ["KERNELS", "EmulatorError", "NpuProgramRunner"]
