"""Per-layer int8 sensitivity: how much of each int8-candidate op's output survives int8, as the
SQNR (signal-to-quantisation-noise ratio, dB) of its output computed from int8 inputs and weights
against the float model's output, on the calibration samples.

Layerwise, so one layer's damage is not blamed on the next: each op's quantised twin reads the
float model's own activations, quantised with the calibrated params (weights symmetric per output
channel, as insert.py stores them). All twins sit in one small ONNX model, so a sample costs one
float run of the model and one run of the twins, not a run per layer. At most SAMPLES samples are
used (the first ones); see SAMPLES."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from ..ir.graph import Graph, Node, TensorInfo
from ..ir.onnx_bridge import make_model
from ..quant_params import QuantParams

# Samples SQNR is averaged over (the first of the calibration set). A sample costs a float run of
# the model, the twins and the sums (ResNet-50 at 224x224: about 0.2 s on 2 cores); on MobileNetV2
# the mean over 16 samples is within 0.1 dB of the mean over 64 for every layer.
SAMPLES = 16
# The float model's outputs kept for output_sqnr (the rest of those samples are not used for it):
# enough for 16 samples of a 1000-class classifier or one of a 21-class 512x512 segmenter.
OUTPUT_BYTES = 64 << 20
# A layer int8 reproduces exactly (noise 0) reads as this many dB, so means stay finite.
EXACT_DB = 100.0
# The default accuracy budget: with int8_ops="auto" a layer whose SQNR is below it stays in bf16.
# 20 dB is a noise power of 1 % of the signal (about 10 % RMS error): a well-behaved int8 conv or
# matmul measures 35-45 dB, one whose input range is dominated by an outlier channel falls under
# 20 dB, and below it the error compounds over a few layers into a visibly wrong model.
DEFAULT_MIN_SQNR_DB = 20.0
_MATRIX = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerSensitivity:
    """One op considered for int8: its measured SQNR and the precision it ends in."""

    name: str
    op_type: str
    sqnr_db: float
    int8: bool = True
    reason: str = ""             # why it stays in float; "" for int8 layers


def weight_axis(node: Node) -> int:
    """The output-channel axis of a matrix op's weights (input 1)."""
    return 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attrs.get("transB", 0)) else 1


def quantize_weights(weights: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 integers, float32 scale per `axis` index): symmetric, scale = max |w| / 127."""
    weights = np.asarray(weights, dtype=np.float32)
    reduce_axes = tuple(a for a in range(weights.ndim) if a != axis)
    peak = np.max(np.abs(weights), axis=reduce_axes)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [-1 if a == axis else 1 for a in range(weights.ndim)]
    integers = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
    return integers, scale


def fake_quantize(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """`values` through int8 and back with per-tensor `params`, as Quantize/DequantizeLinear
    (round half to even, saturate)."""
    scale, zero = np.float32(params.scale[0]), np.float32(params.zero_point[0])
    integers = np.rint(np.asarray(values, dtype=np.float32) / scale)
    integers += zero
    np.clip(integers, -128, 127, out=integers)
    integers -= zero
    integers *= scale
    return integers


def sqnr_db(reference: np.ndarray, quantised: np.ndarray) -> float | None:
    """10 log10(signal power / noise power), clamped to +-EXACT_DB; None for an all-zero reference.
    Sums of squares in float32 (BLAS dot): their rounding is far below the tenths of a dB reported."""
    reference = np.ascontiguousarray(reference, dtype=np.float32).ravel()
    noise_vector = reference - np.asarray(quantised, dtype=np.float32).ravel()
    signal, noise = float(np.dot(reference, reference)), float(np.dot(noise_vector, noise_vector))
    if signal == 0.0:
        return None
    if noise == 0.0:
        return EXACT_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -EXACT_DB, EXACT_DB))


def measure_sqnr(graph: Graph, nodes: list[Node], activation_inputs: dict[str, list[str]],
                 params: dict[str, QuantParams], samples: Iterable[Any], *,
                 quantise_weights: bool = True, model_outputs: list[dict[str, np.ndarray]] | None = None,
                 ) -> dict[str, float]:
    """{node name: mean SQNR in dB over the samples} of each of `nodes` (standard ops of `graph`,
    still in float) with its `activation_inputs[node name]` quantised by `params` and, for a
    matrix op with `quantise_weights`, its weights per channel (without: the SQNR its inputs'
    int8 alone leaves). A node whose output was zero on every sample reads EXACT_DB. Given
    `model_outputs`, the float graph's outputs on the samples are appended to it, one dict per
    sample, while they fit in OUTPUT_BYTES (for output_sqnr, which needs them once the graph is
    quantised)."""
    if not nodes:
        return {}
    # onnxruntime only when measuring: cli.py and stage.py import this module for its names.
    import onnxruntime as ort

    from .calibrate import check_sample, float_session, session_options

    twins = Graph("int8_twins", graph.opset)
    float_outputs: list[str] = []
    for node in nodes:
        quantised = set(activation_inputs[node.name])
        inputs = []
        for position, name in enumerate(node.inputs):
            if not name:
                inputs.append(name)
            elif name in quantised:
                if name not in twins.tensors:
                    twins.add_input(name, graph.tensors[name])
                    float_outputs.append(name)
                inputs.append(name)
            elif graph.is_constant(name):
                value = np.asarray(graph.constants[name])
                if node.op_type in _MATRIX and position == 1 and quantise_weights:
                    integers, scale = quantize_weights(value, weight_axis(node))
                    shape = [-1 if a == weight_axis(node) else 1 for a in range(value.ndim)]
                    value = integers.astype(np.float32) * scale.reshape(shape)
                inputs.append(twins.add_constant(twins.unique_name(f"{node.name}_in{position}"), value))
            else:  # read as it is in float (none of the candidates has such an input today)
                if name not in twins.tensors:
                    twins.add_input(name, graph.tensors[name])
                    float_outputs.append(name)
                inputs.append(name)
        output = twins.unique_name(f"{node.outputs[0]}_int8")
        twins.add_node(Node(output, node.op_type, inputs, [output], dict(node.attrs)),
                       [TensorInfo(graph.tensors[node.outputs[0]].dtype, graph.tensors[node.outputs[0]].shape)])
        float_outputs.append(node.outputs[0])
        twins.outputs.append(output)
    float_outputs = list(dict.fromkeys(float_outputs))
    model_session, _ = float_session(graph, [o for o in float_outputs if o not in graph.inputs], "sensitivity")
    twin_session = ort.InferenceSession(
        make_model(twins, twins.topological_order(), twins.inputs, twins.outputs, name="int8_twins",
                   initializers=list(twins.constants)).SerializeToString(),
        session_options(), providers=["CPUExecutionProvider"])
    totals = {node.name: [] for node in nodes}
    kept_bytes = 0
    for index, sample in enumerate(_first(samples, SAMPLES)):
        feeds = check_sample(graph, sample, index)
        wanted = [o for o in dict.fromkeys(float_outputs + list(graph.outputs)) if o not in feeds]
        values = dict(zip(wanted, model_session.run(wanted, feeds)))
        values.update(feeds)
        if model_outputs is not None and len(model_outputs) == index:
            outputs = {name: np.asarray(values[name]) for name in graph.outputs}
            kept_bytes += sum(value.nbytes for value in outputs.values())
            if kept_bytes <= OUTPUT_BYTES or not model_outputs:
                model_outputs.append(outputs)
        twin_feeds = {name: fake_quantize(values[name], params[name]) if name in params else values[name]
                      for name in twins.inputs}
        results = twin_session.run(twins.outputs, twin_feeds)
        for node, result in zip(nodes, results):
            measured = sqnr_db(np.asarray(values[node.outputs[0]]), np.asarray(result))
            if measured is not None:
                totals[node.name].append(measured)
    return {name: float(np.mean(values)) if values else EXACT_DB for name, values in totals.items()}


def output_sqnr(graph: Graph, samples: list[Any], references: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """{graph output: mean SQNR in dB} of `graph` once quantised (its QDQ form, run by
    onnxruntime: int8 where rblnc computes int8, fp32 elsewhere) against the float model's outputs
    `references` on the first samples, one per reference: the whole model's int8 error, which
    the per-layer figures do not add up to (it compounds over depth)."""
    from .calibrate import check_sample, float_session

    session, _ = float_session(graph, [], "output_sqnr", optimise=False)
    totals: dict[str, list[float]] = {name: [] for name in graph.outputs}
    for index, (sample, reference) in enumerate(zip(samples, references)):
        feeds = {name: np.asarray(value) for name, value in check_sample(graph, sample, index).items()}
        for name, value in zip(graph.outputs, session.run(list(graph.outputs), feeds)):
            measured = sqnr_db(reference[name], np.asarray(value))
            if measured is not None:
                totals[name].append(measured)
    return {name: float(np.mean(values)) if values else EXACT_DB for name, values in totals.items()}


def _first(samples: Iterable[Any], count: int) -> Iterator[Any]:
    for index, sample in enumerate(samples):
        if index >= count:
            return
        yield sample


class RetainedSamples:
    """Passes `samples` through (to calibration) and keeps the first `count`, so the sensitivity
    measure can read them again even when `samples` is a one-shot iterator."""

    def __init__(self, samples: Any, count: int):
        self.samples, self.count, self.kept = samples, count, []

    def __iter__(self) -> Iterator[Any]:
        self.kept = []
        for sample in self.samples:
            if len(self.kept) < self.count:
                self.kept.append(sample)
            yield sample


class _SizedRetainedSamples(RetainedSamples):
    def __len__(self) -> int:
        return len(self.samples)


def retain(samples: Any, count: int | None = None) -> Any:
    """`samples` wrapped in a RetainedSamples when it is an iterable (anything else is left for
    calibrate.py to refuse with its own message)."""
    if isinstance(samples, (str, bytes)) or not hasattr(samples, "__iter__"):
        return samples
    return (_SizedRetainedSamples if hasattr(samples, "__len__") else RetainedSamples)(
        samples, SAMPLES if count is None else count)
