"""`rblnc.Runtime`: loads a .rbln artifact and runs it synchronously, one request per call."""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .. import dtypes
from ..emulator.profile import Profile
from ..errors import NonFiniteWarning
from ..format.artifact import Artifact, Device
from ..format.reader import load_artifact
from .engine import (
    Lane, Resource, Step, StepRecord, active_steps, clock, has_estimates, next_request_id, pace_scale_of,
    plan_steps, run_step,
)
from .executor import ModelExecutor
from .io import TENSOR_TYPES, bind_inputs, deliver_outputs, non_finite_report
from .stages import FEEDS, OUT, RAW, RESULT, with_stages

DEFAULT_TRACE_CAPACITY = 100_000


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


def check_runtime_options(device: int, tensor_type: str) -> None:
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor_type must be one of {TENSOR_TYPES}, got {tensor_type!r}")
    if device != 0:
        raise ValueError(f"device {device} does not exist: the emulator provides one device (0)")


def trace_capacity_of(trace: bool | int) -> int:
    """`trace=True` keeps the last DEFAULT_TRACE_CAPACITY steps, a number that many, False none."""
    if trace is True:
        return DEFAULT_TRACE_CAPACITY
    if trace is False or trace is None:
        return 0
    if not isinstance(trace, int) or trace < 0:
        raise ValueError(f"trace must be True, False or a number of steps to keep, got {trace!r}")
    return trace


def profile_of(runtime) -> Profile:
    if runtime._profile is None:
        raise RuntimeError(f"this {type(runtime).__name__} was created without profile=True")
    return runtime._profile


def warn_if_unpaceable(steps: list[Step], pace_scale: float, source: str) -> None:
    if pace_scale and not has_estimates(steps):
        warnings.warn(f"{source}: the artifact carries no timing estimates (est_time_ns = 0), so pacing "
                      "changes nothing; device steps run as fast as the emulator computes them",
                      RuntimeWarning, stacklevel=3)


class Runtime:
    """Runs a compiled model, one request per call. Mirrors the vendor SDK:
    `Runtime(path, *, device=0, tensor_type="np")`. `pace=True` makes each step last its modelled
    time (a number: that many times longer, for an emulator slower than the modelled chip);
    `trace=True` records every step for a timeline (see rblnc.runtime.trace). `check_finite=True`
    warns (NonFiniteWarning) naming each input and output that holds NaN or infinity; the run
    itself goes on, as the model defines what such values give. `preprocess(*args, **kwargs)`
    turns what `run` is given into the model's inputs (an array, a tuple/list by position or a
    dict by name) and `postprocess(outputs)` turns the outputs into what `run` returns; both run
    inline as host steps of the chain (paced and traced like them), as AsyncRuntime runs them
    on its host lanes, so code moves between the two unchanged. `profile=True` times every
    command of every run: `profile()` returns the times (rblnc.emulator.profile.Profile, whose
    `table()` lists time per op type and per command beside the modelled time)."""

    def __init__(self, model: Any, *, device: int = 0, tensor_type: str = "np",
                 host_threads: int | None = None, pace: bool | float = False, trace: bool | int = False,
                 check_finite: bool = False, preprocess: Callable | None = None,
                 postprocess: Callable | None = None, profile: bool = False):
        check_runtime_options(device, tensor_type)
        self.artifact, self.source = resolve_artifact(model)
        self.device = device
        self.tensor_type = tensor_type
        self.pace_scale = pace_scale_of(pace)
        self.check_finite = check_finite
        self._executor = ModelExecutor(self.artifact, host_threads=host_threads, origin=self.source)
        self._profile = Profile() if profile else None
        if self._profile is not None:
            self._executor.profile_into(self._profile)
        self.preprocess, self.postprocess = preprocess, postprocess
        self.steps: list[Step] = with_stages(plan_steps(self._executor), self.artifact, preprocess, postprocess,
                                             tensor_type)
        self._active = active_steps(self.steps, self.pace_scale)
        warn_if_unpaceable(self.steps, self.pace_scale, self.source)
        self._outputs = self.artifact.outputs
        self._inputs = self.artifact.inputs

        self._lanes = {r: Lane(r, "host 0" if r is Resource.HOST else r.value) for r in Resource}
        # Paced, the device is one: a second caller's request waits for the first, as on hardware.
        self._paced = threading.Lock()
        self.overruns = 0  # paced steps the emulator took longer to compute than their modelled time
        capacity = trace_capacity_of(trace)
        self._timeline: deque[StepRecord] | None = deque(maxlen=capacity) if capacity else None
        # Functional and untraced, a step is just its computation (no clock, no record).
        self._lean = not self.pace_scale and self._timeline is None

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.artifact.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.artifact.outputs]

    def run(self, *args: Any, out: Any = None, **kwargs: Any):
        """Inputs by position (model order) or by name (with `preprocess`: what it takes). One
        output -> array, several -> list (with `postprocess`: what it returns)."""
        if self.preprocess is None:
            feeds = bind_inputs(self._inputs, args, kwargs)
            values = dict(feeds)
        else:
            values = {RAW: (args, kwargs)}
        if self.postprocess is not None and out is not None:
            values[OUT] = out
        if self._lean:
            for step in self._active:
                step.run(values)
                for name in step.release:
                    values.pop(name, None)
        elif self.pace_scale:
            with self._paced:
                self._run_chain(values)
        else:
            self._run_chain(values)
        if self.preprocess is not None:
            feeds = values[FEEDS]
        if self.postprocess is not None:
            result = values[RESULT]
            arrays = None
        else:
            arrays = [values[o.name] for o in self._outputs]
        if self.check_finite:
            found = non_finite_report("input", self._inputs, [feeds[v.name] for v in self._inputs])
            if arrays is not None:
                found += non_finite_report("output", self._outputs, arrays)
            if found:
                warnings.warn(NonFiniteWarning("non-finite values: " + "; ".join(found)), stacklevel=2)
        if arrays is None:
            return result
        return deliver_outputs(arrays, self._outputs, out, self.tensor_type)

    __call__ = run

    def _run_chain(self, values: dict) -> dict:
        request = next_request_id() if self._timeline is not None else 0
        ready_at = clock()
        for step in self._active:
            lane = self._lanes[step.resource]
            start, ready_at, compute = run_step(step, values, ready_at, lane, self.pace_scale)
            record = StepRecord(request, step.name, step.partition, step.resource, lane.label,
                                start, ready_at, step.est_ns * self.pace_scale, compute)
            self.overruns += record.overran
            if self._timeline is not None:
                self._timeline.append(record)
        return values

    def profile(self) -> Profile:
        """The command times of the runs so far (needs `profile=True`)."""
        return profile_of(self)

    def timeline(self) -> list[StepRecord]:
        """The steps recorded so far (with `trace=`), oldest first."""
        return list(self._timeline or ())

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
