"""`rblnc.Runtime`: loads a .rbln artifact and runs it synchronously, one request per call."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .. import dtypes
from ..errors import NonFiniteWarning
from ..format.artifact import Artifact, Device
from ..format.reader import load_artifact
from .executor import ModelExecutor
from .io import TENSOR_TYPES, bind_inputs, deliver_outputs, non_finite_report


def resolve_artifact(model: Any) -> tuple[Artifact, str]:
    """A path, an Artifact, or anything with an `.artifact` (an RBLNCompiledModel)."""
    if isinstance(model, Artifact):
        return model, "<compiled model>"
    artifact = getattr(model, "artifact", None)
    if isinstance(artifact, Artifact):
        return artifact, str(getattr(model, "path", None) or "<compiled model>")
    if isinstance(model, (str, os.PathLike)):
        return load_artifact(model), str(Path(model))
    raise TypeError(f"expected a path to a .rbln file or a compiled model, got {type(model).__name__}")


class Runtime:
    """Runs a compiled model. Mirrors the vendor SDK: `Runtime(path, *, device=0, tensor_type="np")`.
    `check_finite=True` warns (NonFiniteWarning) naming each input and output that holds NaN or
    infinity; the run itself goes on, as the model defines what such values give."""

    def __init__(self, model: Any, *, device: int = 0, tensor_type: str = "np",
                 host_threads: int | None = None, check_finite: bool = False):
        if tensor_type not in TENSOR_TYPES:
            raise ValueError(f"tensor_type must be one of {TENSOR_TYPES}, got {tensor_type!r}")
        if device != 0:
            raise ValueError(f"device {device} does not exist: the emulator provides one device (0)")
        self.artifact, self.source = resolve_artifact(model)
        self.device = device
        self.tensor_type = tensor_type
        self.check_finite = check_finite
        self._executor = ModelExecutor(self.artifact, host_threads=host_threads, origin=self.source)

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.artifact.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.artifact.outputs]

    def run(self, *args: Any, out: Any = None, **kwargs: Any):
        """Inputs by position (model order) or by name. One output -> array, several -> list."""
        feeds = bind_inputs(self.artifact.inputs, args, kwargs)
        arrays = self._executor.run(feeds)
        if self.check_finite:
            found = non_finite_report("input", self.artifact.inputs, [feeds[v.name] for v in self.artifact.inputs])
            found += non_finite_report("output", self.artifact.outputs, arrays)
            if found:
                warnings.warn(NonFiniteWarning("non-finite values: " + "; ".join(found)), stacklevel=2)
        return deliver_outputs(arrays, self.artifact.outputs, out, self.tensor_type)

    __call__ = run

    def model_description(self) -> str:
        return describe(self.artifact, self.source)

    def __repr__(self) -> str:
        return f"<rblnc.Runtime {self.source} inputs={self.input_names} outputs={self.output_names}>"


def describe(artifact: Artifact, source: str = "") -> str:
    def value(v) -> str:
        shape = "?" if v.shape is None else "x".join("?" if d is None else str(d) for d in v.shape)
        return f"  {v.name}: {dtypes.name(v.dtype)}[{shape}]"

    npu = [p for p in artifact.partitions if p.device == Device.NPU]
    host = [p for p in artifact.partitions if p.device == Device.HOST]
    weight = sum(p.npu_program.weight_bytes for p in npu)
    peak = max((p.npu_program.peak_dram_bytes + p.npu_program.peak_sram_bytes for p in npu), default=0)
    lines = [f"model {source}".rstrip(), "inputs:"] + [value(v) for v in artifact.inputs]
    lines += ["outputs:"] + [value(v) for v in artifact.outputs]
    lines += [
        f"target: {artifact.target.name} ({artifact.options.dtype})",
        f"partitions: {len(npu)} npu, {len(host)} host",
        f"memory: weights {_mib(weight)}, peak activations {_mib(peak)}",
    ]
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
