"""Runs host partitions (ONNX subgraphs) with onnxruntime; one session per partition, made once."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnxruntime as ort


class HostSubgraphRunner:
    def __init__(self, onnx_bytes, name: str = "host", threads: int | None = None):
        self.name = name
        options = ort.SessionOptions()
        # Fatal only: an op failing on a request's values (an index out of range) is raised as
        # ExecutionError; at ERROR onnxruntime also printed it on stderr, once per failed request.
        options.log_severity_level = 4
        if threads:
            options.intra_op_num_threads = threads
        # No fallback: on a failure onnxruntime would print an "EP Error" banner to stdout and
        # retry with the same CPU provider; the caller reports the error instead.
        self._session = ort.InferenceSession(bytes(onnx_bytes), options, providers=["CPUExecutionProvider"],
                                             enable_fallback=0)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._input_names = [i.name for i in self._session.get_inputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, {n: inputs[n] for n in self._input_names})
        return dict(zip(self._output_names, results))
