"""Runs every partition of an artifact in order for one request (the synchronous engine)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import ExecutionError
from ..format.artifact import Artifact, Device, Partition
from ..emulator import NpuProgramRunner
from .host import HostSubgraphRunner


class ModelExecutor:
    """Prepares each partition once (NPU program runners, onnxruntime sessions); `run` is
    reentrant, so several requests may run at once on different threads."""

    def __init__(self, artifact: Artifact, *, host_threads: int | None = None):
        self.artifact = artifact
        self.stages: list[tuple[Partition, NpuProgramRunner | HostSubgraphRunner]] = []
        for partition in artifact.partitions:
            if partition.device == Device.NPU:
                runner = NpuProgramRunner(partition.npu_program, partition.name,
                                          host_dtypes={v.name: v.dtype for v in partition.outputs})
            else:
                runner = HostSubgraphRunner(partition.host_onnx, partition.name, host_threads)
            self.stages.append((partition, runner))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = dict(feeds)
        for partition, runner in self.stages:
            values.update(run_partition(partition, runner, values))
        return [values[o.name] for o in self.artifact.outputs]


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
