"""Runs every partition of an artifact in order for one request (the synchronous engine)."""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from ..errors import ArtifactError, ExecutionError
from ..format.artifact import Artifact, Device, Partition
from ..emulator import NpuProgramRunner
from ..emulator.profile import Profile
from .host import HostSubgraphRunner
from .program_check import ProgramShapeError, check_program_shapes


class ModelExecutor:
    """Prepares each partition once (NPU program runners, onnxruntime sessions); `run` is
    reentrant, so several requests may run at once on different threads."""

    def __init__(self, artifact: Artifact, *, host_threads: int | None = None, origin: object = "<compiled model>"):
        self.artifact = artifact
        self.stages: list[tuple[Partition, NpuProgramRunner | HostSubgraphRunner]] = []
        for partition in artifact.partitions:
            self.stages.append((partition, prepare_partition(partition, host_threads, origin, artifact.opset)))

    def profile_into(self, profile: Profile) -> None:
        """Time later runs into `profile`: every command of the NPU partitions, each host
        partition as a whole. Call before the stages are handed out (plan_steps)."""
        for index, (partition, runner) in enumerate(self.stages):
            if isinstance(runner, NpuProgramRunner):
                runner.profile_into(profile)
            else:
                self.stages[index] = (partition, _TimedHostRunner(runner, partition, profile))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = dict(feeds)
        for partition, runner in self.stages:
            values.update(run_partition(partition, runner, values))
        return [values[o.name] for o in self.artifact.outputs]


def prepare_partition(partition: Partition, host_threads: int | None, origin: object, opset: int):
    """The partition's runner. What a damaged or forged artifact breaks here (bytes that are
    not ONNX, an op with no kernel, attributes that contradict the declared shapes) is an
    ArtifactError naming the file and partition."""
    where = f"partition {partition.name!r} ({partition.device.name.lower()})"
    if partition.device == Device.NPU:
        try:
            check_program_shapes(partition.npu_program, opset)
        except ProgramShapeError as exc:
            raise ArtifactError(origin, f"{where}: {exc}") from None
    try:
        if partition.device == Device.NPU:
            return NpuProgramRunner(partition.npu_program, partition.name,
                                    host_dtypes={v.name: v.dtype for v in partition.outputs}, opset=opset)
        runner = HostSubgraphRunner(partition.host_onnx, partition.name, host_threads)
    except Exception as exc:  # onnxruntime, protobuf and the emulator raise their own types
        what = "its ONNX subgraph cannot be loaded by onnxruntime" if partition.device == Device.HOST else \
            "its program cannot be prepared"
        raise ArtifactError(origin, f"{where}: {what} ({_first_line(exc)})") from exc
    missing = [n for n in runner.input_names if n not in {v.name for v in partition.inputs}]
    if missing:
        raise ArtifactError(origin, f"{where}: its ONNX subgraph reads {', '.join(map(repr, missing))}, "
                                    "which the partition does not take")
    missing = [v.name for v in partition.outputs if v.name not in runner.output_names]
    if missing:
        raise ArtifactError(origin, f"{where}: its ONNX subgraph does not produce {', '.join(map(repr, missing))}")
    return runner


class _TimedHostRunner:
    """A host partition's runner that adds each run's time to a profile."""

    def __init__(self, runner: HostSubgraphRunner, partition: Partition, profile: Profile):
        self._runner, self._profile = runner, profile
        self._name = partition.name
        self._rows = [profile.add_host(partition.name, partition.est_time_ns)]
        self.input_names, self.output_names = runner.input_names, runner.output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        results = self._runner.run(inputs)
        self._profile.record(self._name, self._rows, [time.perf_counter() - started])
        return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_partition(partition: Partition, runner, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return runner.run({v.name: values[v.name] for v in partition.inputs})
    except ExecutionError:
        raise
    except Exception as exc:  # onnxruntime and torch raise their own types
        text = str(exc).strip().splitlines()
        raise ExecutionError(
            f"partition {partition.name} ({partition.device.name.lower()}) failed: "
            f"{text[0] if text else type(exc).__name__}"
        ) from exc
