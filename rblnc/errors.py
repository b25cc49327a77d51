"""The exception types rblnc raises; each also subclasses the matching builtin."""

from __future__ import annotations


class RBLNError(Exception):
    """Base of every error rblnc raises on purpose."""


class ArtifactError(RBLNError, ValueError):
    """A .rbln file cannot be read: truncated, corrupt, foreign or too new."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelImportError(RBLNError, ValueError):
    """A source model (ONNX, TorchScript, TensorFlow) cannot be turned into the IR."""


class DynamicShapeError(ModelImportError):
    """An input has a dimension only known at run time and no `input_info` fixes it."""


class UnsupportedOpError(ModelImportError):
    """Ops of the source model that no importer mapping or host fallback can take."""


class DataDependentError(ModelImportError):
    """Control flow or a size in the source model depends on input values, so it has no
    static graph (a branch on a tensor's value, `tensor.item()` used as a size)."""


class CompileError(RBLNError, ValueError):
    """The model was imported but cannot be compiled for the target."""


class DeviceMemoryError(CompileError):
    """The model's weights and activations do not fit the target's device memory."""

    def __init__(self, message: str, *, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available

    @property
    def shortfall(self) -> int:
        return self.needed - self.available


class HostFallbackError(CompileError):
    """Host fallback is disabled (`host_fallback=False`, `--no-host-fallback`) but ops cannot run
    on the NPU; `offending` lists every one as (op name, op type, reason)."""

    def __init__(self, offending: list[tuple[str, str, str]]):
        self.offending = offending
        listed = "\n".join(f"  {name} ({op_type}): {reason}" for name, op_type, reason in offending)
        super().__init__(f"host fallback is disabled but {len(offending)} op(s) cannot run on the NPU:\n{listed}")


class ArtifactWriteError(RBLNError, OSError):
    """A .rbln file cannot be written: its folder is missing or not writable, the disk is full."""


class InputError(RBLNError):
    """Base of the errors about the inputs given to `run`."""


class InputNameError(InputError, KeyError):
    """An input name the model does not have, or a required input is missing."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputShapeError(InputError, TypeError):
    """An input's shape differs from the one the model was compiled for."""


class InputDtypeError(InputError, TypeError):
    """An input's element type differs from the model's and cannot be converted safely."""


class OutputArrayError(InputError, ValueError):
    """An `out=` array that cannot receive an output (read-only)."""


class RuntimeClosedError(RBLNError, RuntimeError):
    """A call on a runtime after `close()`."""


class ExecutionError(RBLNError, RuntimeError):
    """A partition failed while running a request."""


class NonFiniteWarning(RuntimeWarning):
    """A run's inputs or outputs hold NaN or infinity (checked when `check_finite` is on)."""
