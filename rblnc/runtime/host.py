"""Runs host partitions (ONNX subgraphs) with onnxruntime; one session per partition, made once.

A subgraph onnxruntime cannot take (an op or type its CPU provider lacks, or values its Python
binding cannot exchange as numpy arrays: bfloat16, float8, int4...) runs on onnx's reference
evaluator instead: slow, but it implements every standard op."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort

# Element types onnxruntime's Python binding cannot take from or give back as numpy arrays.
_NOT_EXCHANGEABLE = {getattr(onnx.TensorProto, n) for n in (
    "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "UINT4", "INT4",
    "FLOAT4E2M1", "FLOAT8E8M0", "UINT2", "INT2") if hasattr(onnx.TensorProto, n)}


class _ReferenceSession:
    """onnx.reference.ReferenceEvaluator behind onnxruntime's `run` signature."""

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self._evaluator = ReferenceEvaluator(model)
        self.input_names = [i.name for i in model.graph.input]
        self.output_names = [o.name for o in model.graph.output]
        self._shapes = {}
        for o in model.graph.output:
            dims = o.type.tensor_type.shape.dim
            if o.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self._shapes[o.name] = tuple(d.dim_value for d in dims)

    def run(self, output_names, feeds):
        results = self._evaluator.run(output_names, feeds)
        # Some reference kernels return scalars as 1-element vectors: give the declared shape.
        return [np.reshape(r, self._shapes[n]) if n in self._shapes and np.size(r) == np.prod(self._shapes[n])
                else r for n, r in zip(output_names, results)]


def _with_open_input_shapes(model: onnx.ModelProto) -> bytes:
    """The subgraph with its inputs' dimensions left open. With the request's static shapes,
    onnxruntime's type inference also specialises an If's branch the request never takes, and
    may fail there (silero-vad's 8 kHz LSTM branch, given 16 kHz frames: "First input tensor
    must have rank 3"), which sent the whole partition to the reference evaluator, 30x slower;
    the model as its project ships it has open dimensions and loads."""
    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    for value in relaxed.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.Clear()
            dim.dim_param = f"{value.name}_{axis}"
    return relaxed.SerializeToString()


def _needs_reference(model: onnx.ModelProto) -> bool:
    values = list(model.graph.input) + list(model.graph.output)
    return any(v.type.tensor_type.elem_type in _NOT_EXCHANGEABLE for v in values)


class HostSubgraphRunner:
    def __init__(self, onnx_bytes, name: str = "host", threads: int | None = None):
        self.name = name
        options = ort.SessionOptions()
        # Fatal only: an op failing on a request's values (an index out of range) is raised as
        # ExecutionError; at ERROR onnxruntime also printed it on stderr, once per failed request.
        options.log_severity_level = 4
        # Idle workers sleep: spinning ones would hold the cores the emulator's OpenMP workers
        # (which also sleep, rblnc/emulator/__init__.py) need between host partitions.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # A quantised op on the host runs as its decomposition (DequantizeLinear, the float op,
        # QuantizeLinear). onnxruntime's QDQ fusions would swap in its QLinear kernels, whose
        # uint8 x int8 sums saturate in int16 on CPUs without VNNI (a host QConv was 8 LSB off
        # on an AVX2 EPYC) and whose pools round otherwise: the decomposition is the reference.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        if threads:
            options.intra_op_num_threads = threads
        model = onnx.load_from_string(bytes(onnx_bytes))
        if _needs_reference(model):
            self._session = _ReferenceSession(model)
        else:
            try:
                # No fallback: on a failure onnxruntime would print an "EP Error" banner to stdout and
                # retry with the same CPU provider; the caller reports the error instead.
                self._session = ort.InferenceSession(bytes(onnx_bytes), options, providers=["CPUExecutionProvider"],
                                                     enable_fallback=0)
            except Exception as onnxruntime_error:  # an op or type onnxruntime lacks
                try:
                    self._session = ort.InferenceSession(_with_open_input_shapes(model), options,
                                                         providers=["CPUExecutionProvider"], enable_fallback=0)
                except Exception:
                    try:
                        self._session = _ReferenceSession(model)
                    except Exception:
                        raise onnxruntime_error from None
        if isinstance(self._session, _ReferenceSession):
            self._output_names, self._input_names = self._session.output_names, self._session.input_names
            return
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
