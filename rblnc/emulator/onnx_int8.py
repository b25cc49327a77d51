"""The int8 commands of an NPU program as standard ONNX integer ops, bit for bit the torch
engine's numerics (rblnc/emulator/int8_kernels.py, docs/precision.md):

    acc = int32 sum (x - x_zp) * w + bias
    y   = saturate(round_half_even(float32(acc) * multiplier) + y_zp), multiplier in fp32

Integer tensors are held as uint8 in the model: an int8 tensor q is held as q + 128 with its zero
point moved along (the same reals, as the torch engine shifts them for torch's kernels). On this
AVX2 CPU (no VNNI) onnxruntime's MLAS multiplies uint8 x uint8 exactly (it widens to int16 before
multiplying), while its uint8 x int8 MatMulInteger saturates pairs of products in int16 (199644
off on a 64x2048x1000 product) and ConvInteger with int8 activations and uint8 weights is wrong;
uint8 x uint8 is also the fastest (64 ch 3x3 at 56x56: 7.0 ms against 14 ms for uint8 x int8).
So weights are shifted to uint8 with zero point 128 too.

    QConv   QLinearConv(x, 1, x_zp, w + 128, multiplier, 128, 1, y_zp, bias): with unit input and
            output scales its requantisation scale is the multiplier itself, and MLAS adds the
            bias to the int32 sum, converts to fp32, multiplies, rounds half to even, adds the
            zero point and saturates: the rule above (checked equal to it on conv, depthwise and
            1x1 shapes, with a denormal and a 300x multiplier).
    QGemm   MatMulInteger(x, w^T + 128), Add bias, Cast, Mul multiplier, QuantizeLinear(1, y_zp)
            (QuantizeLinear with scale 1 rounds half to even and saturates: checked on ties).
    QAdd, QMaxPool: DequantizeLinear(q, multiplier, zp) (float32(q - zp) * multiplier, exactly),
            [Add,] QuantizeLinear(1, y_zp), as int8_kernels.prepare_qadd / requantize.
    QGlobalAveragePool: Cast to int32, ReduceSum, minus count x zp, Cast, Mul, QuantizeLinear.
    QAveragePool: DequantizeLinear(q, 1, zp), Pad 0, depthwise Conv with ones (the window sums,
            exact), Mul by each position's multiplier, QuantizeLinear(1, y_zp).
    QConcat: Concat of the held inputs, each requantised first as QMaxPool's where its params or
            type differ from the result's.
    Fused Relu/Clip: Clip of the integer result to the bounds int8_kernels.clamp_bounds gives.

Ops that move int8 values without computing on them (Reshape, Concat, MaxPool, ...) run on the
held uint8 values unchanged; ops that would compute on them (a Pad with value 0, Relu) cannot,
and the program keeps the torch engine (UnsupportedProgram).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..format.artifact import Command, Tensor
from ..quant_params import QuantParams
from .int8_kernels import average_pool_layout, clamp_bounds, requantisation_multipliers

SHIFT = 128
# Standard ops an int8 tensor may pass through: they select or move values, so they give the
# same result on values held shifted by 128 (a max is order-preserving; no padding value enters).
INT8_MOVING_OPS = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Slice", "Split",
    "Expand", "Concat", "Gather", "Dropout", "MaxPool", "GlobalMaxPool", "Max", "Min",
    "ReduceMax", "ReduceMin", "Tile", "DepthToSpace", "SpaceToDepth",
    "Resize",  # nearest only: the QDQ rewrite (quantize/qdq.py) puts no other Resize on integers
})
# Boundary ops: their zero points are held shifted with the integers, so ONNX's own semantics
# give the same reals.
INT8_BOUNDARY_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def is_shifted(dtype: np.dtype) -> bool:
    """An int8 tensor, held as uint8 + 128 in the model."""
    return np.dtype(dtype) == np.int8


def held_type(dtype: np.dtype) -> int:
    return TensorProto.UINT8 if is_shifted(dtype) else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def held_constant(data: np.ndarray) -> np.ndarray:
    """A constant as the model holds it (int8 shifted to uint8)."""
    data = np.asarray(data)
    return (data.astype(np.int16) + SHIFT).astype(np.uint8) if is_shifted(data.dtype) else data


def _held_zero(params: QuantParams, dtype: np.dtype) -> int:
    return int(params.zero_point[0]) + (SHIFT if is_shifted(dtype) else 0)


def shift_nodes(source: str, target: str, to_held: bool) -> list[onnx.NodeProto]:
    """int8 -> held uint8 (to_held) or back, through int16 (exact, no wrap-around assumed)."""
    wide, moved = f"{target}/wide", f"{target}/moved"
    return [helper.make_node("Cast", [source], [wide], name=f"{target}/widen", to=TensorProto.INT16),
            helper.make_node("Add" if to_held else "Sub", [wide, "c/shift16"], [moved], name=f"{target}/shift"),
            helper.make_node("Cast", [moved], [target], name=f"{target}/narrow",
                             to=TensorProto.UINT8 if to_held else TensorProto.INT8)]


SHIFT_CONSTANTS = {"c/shift16": np.array(SHIFT, np.int16), "c/one_f32": np.array(1.0, np.float32)}


@functools.lru_cache(maxsize=1)
def integer_kernels_exact() -> bool:
    """Whether this CPU's onnxruntime sums uint8 x uint8 products exactly in int32 in QLinearConv
    and MatMulInteger, measured once per process on a product pair that overflows int16
    (255 x 127 twice, as int8_kernels._exact_engine probes torch's engines): MLAS picks its
    kernels per CPU, and only this AVX2 one was measured."""
    import onnxruntime as ort

    x = np.full((1, 2, 1, 1), 255, np.uint8)
    weight = np.full((1, 2, 1, 1), SHIFT + 127, np.uint8)
    inits = {"w": weight, "wt": weight.reshape(1, 2).T.copy(), "one": np.array(1.0, np.float32),
             "m": np.array([1 / 256], np.float32), "z": np.array(0, np.uint8), "wz": np.array(SHIFT, np.uint8)}
    nodes = [helper.make_node("QLinearConv", ["x", "one", "z", "w", "m", "wz", "one", "z"], ["conv"]),
             helper.make_node("Reshape", ["x", "flat"], ["row"]),
             helper.make_node("MatMulInteger", ["row", "wt", "z", "wz"], ["product"])]
    inits["flat"] = np.array([1, 2], np.int64)
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 1, 1])],
        [helper.make_tensor_value_info("conv", TensorProto.UINT8, None),
         helper.make_tensor_value_info("product", TensorProto.INT32, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    conv, product = ort.InferenceSession(model.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"]).run(None, {"x": x})
    # 2 x 255 x 127 = 64770 -> 253 at 1/256; int16 saturation would give 32767 -> 128.
    return int(conv.ravel()[0]) == round(64770 / 256) and int(product.ravel()[0]) == 64770


class Int8Lowering:
    """Lowers one program's ai.rblnc int8 commands; `initializers` collects the constants made."""

    def __init__(self, tensors: list[Tensor], names: list[str]):
        self.tensors = tensors
        self.names = names
        self.initializers: list[onnx.TensorProto] = []

    def _constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _params(self, index: int, what: str, command: Command) -> QuantParams:
        params = self.tensors[index].quantization
        if params is None:
            raise ValueError(f"command {command.name} ({command.op_type}): its {what} "
                             f"{self.tensors[index].name} has no quantisation parameters")
        return params

    def _zero(self, name: str, params: QuantParams, dtype: np.dtype) -> str:
        return self._constant(name, np.array(_held_zero(params, dtype), np.uint8))

    def _finish(self, command: Command, step: int, result: str, output: str) -> list[onnx.NodeProto]:
        """Result (held integers) clamped to the fused activation's bounds, as `output`."""
        dtype = self.tensors[command.outputs[0]].dtype
        bounds = clamp_bounds(command.attributes, self._params(command.outputs[0], "output", command),
                              torch.int8 if is_shifted(dtype) else torch.uint8)
        if bounds is None:
            return [helper.make_node("Identity", [result], [output], name=f"c{step}/out")]
        shift = SHIFT if is_shifted(dtype) else 0
        low = self._constant(f"c{step}/low", np.array(bounds[0] + shift, np.uint8))
        high = self._constant(f"c{step}/high", np.array(bounds[1] + shift, np.uint8))
        return [helper.make_node("Clip", [result, low, high], [output], name=f"c{step}/activation")]

    def _quantize(self, step: int, real: str, zero: str, result: str) -> onnx.NodeProto:
        """saturate(round_half_even(real) + zero): QuantizeLinear with scale 1."""
        return helper.make_node("QuantizeLinear", [real, "c/one_f32", zero], [result], name=f"c{step}/round")

    def _scaled(self, prefix: str, source: str, params: QuantParams, dtype: np.dtype,
                multiplier: float) -> onnx.NodeProto:
        """float32(q - zero point) * multiplier of the held integers `source` (at `params`, of
        program type `dtype`) as f"{prefix}/scaled": DequantizeLinear computes exactly that
        (checked bit for bit on every uint8 value at 200 random scales)."""
        zero = self._zero(f"{prefix}/zero", params, dtype)
        scale = self._constant(f"{prefix}/multiplier", np.array(multiplier, np.float32))
        return helper.make_node("DequantizeLinear", [source, scale, zero], [f"{prefix}/scaled"], name=f"{prefix}/scale")

    def _requantised(self, prefix: str, source: str, params: QuantParams, dtype: np.dtype, y_params: QuantParams,
                     y_dtype: np.dtype, result: str) -> list[onnx.NodeProto]:
        """The held integers `source` (at `params`) at the result's params as `result`, as
        int8_kernels.requantize with count 1: DequantizeLinear with multiplier s / sy, then
        QuantizeLinear(1, zy)."""
        scaled = self._scaled(prefix, source, params, dtype, float(params.scale[0]) / float(y_params.scale[0]))
        zero = self._zero(f"{prefix}/y_zero", y_params, y_dtype)
        return [scaled, helper.make_node("QuantizeLinear", [scaled.output[0], "c/one_f32", zero], [result],
                                         name=f"{prefix}/round")]

    def lower(self, command: Command, step: int) -> list[onnx.NodeProto]:
        if not integer_kernels_exact():
            raise ValueError("onnxruntime's uint8 integer kernels do not sum exactly in int32 on this CPU")
        method = getattr(self, f"_lower_{command.op_type}", None)
        if method is None:
            raise ValueError(f"command {command.name} (ai.rblnc::{command.op_type}): no int8 ONNX form")
        return method(command, step)

    def _weights(self, command: Command) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(weight as held uint8, int32 bias or None, per-output-channel fp32 multipliers)."""
        x, w = command.inputs[0], command.inputs[1]
        bias_index = command.inputs[2] if len(command.inputs) > 2 else -1
        weight = self.tensors[w].data
        if weight is None:
            raise ValueError(f"command {command.name} ({command.op_type}) needs a constant weight")
        w_params = self._params(w, "weight", command)
        if np.any(w_params.zero_point != 0) or np.dtype(weight.dtype) != np.int8:
            raise ValueError(f"command {command.name} ({command.op_type}): weights must be symmetric int8")
        multipliers = requantisation_multipliers(self._params(x, "input", command), w_params,
                                                 self._params(command.outputs[0], "output", command))
        multipliers = np.broadcast_to(multipliers, (weight.shape[0],)).astype(np.float32)
        bias = None
        if bias_index >= 0:
            if self.tensors[bias_index].data is None:
                raise ValueError(f"command {command.name} ({command.op_type}) needs a constant bias")
            bias = np.asarray(self.tensors[bias_index].data, np.int32)
        return held_constant(np.asarray(weight)), bias, multipliers

    def _lower_QConv(self, command: Command, step: int) -> list[onnx.NodeProto]:
        p = f"c{step}"
        x, y = command.inputs[0], command.outputs[0]
        weight, bias, multipliers = self._weights(command)
        inputs = [self.names[x], "c/one_f32",
                  self._zero(f"{p}/x_zero", self._params(x, "input", command), self.tensors[x].dtype),
                  self._constant(f"{p}/weight", weight), self._constant(f"{p}/multiplier", multipliers),
                  self._constant(f"{p}/w_zero", np.array(SHIFT, np.uint8)), "c/one_f32",
                  self._zero(f"{p}/y_zero", self._params(y, "output", command), self.tensors[y].dtype)]
        if bias is not None:
            inputs.append(self._constant(f"{p}/bias", bias))
        attrs = {k: v for k, v in command.attributes.items() if k not in ("activation", "activation_params")}
        conv = helper.make_node("QLinearConv", inputs, [f"{p}/conv"], name=f"{p}/conv", **attrs)
        return [conv] + self._finish(command, step, f"{p}/conv", self.names[y])

    def _lower_QGemm(self, command: Command, step: int) -> list[onnx.NodeProto]:
        p = f"c{step}"
        x, y = command.inputs[0], command.outputs[0]
        weight, bias, multipliers = self._weights(command)
        nodes = [helper.make_node(
            "MatMulInteger",
            [self.names[x], self._constant(f"{p}/weight", np.ascontiguousarray(weight.T)),
             self._zero(f"{p}/x_zero", self._params(x, "input", command), self.tensors[x].dtype),
             self._constant(f"{p}/w_zero", np.array(SHIFT, np.uint8))],
            [f"{p}/acc"], name=f"{p}/matmul")]
        acc = f"{p}/acc"
        if bias is not None:
            nodes.append(helper.make_node("Add", [acc, self._constant(f"{p}/bias", bias)], [f"{p}/biased"],
                                          name=f"{p}/bias"))
            acc = f"{p}/biased"
        zero = self._zero(f"{p}/y_zero", self._params(y, "output", command), self.tensors[y].dtype)
        nodes += [helper.make_node("Cast", [acc], [f"{p}/float"], name=f"{p}/float", to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{p}/float", self._constant(f"{p}/multiplier", multipliers)],
                                   [f"{p}/scaled"], name=f"{p}/scale"),
                  self._quantize(step, f"{p}/scaled", zero, f"{p}/rounded")]
        return nodes + self._finish(command, step, f"{p}/rounded", self.names[y])

    def _lower_QAdd(self, command: Command, step: int) -> list[onnx.NodeProto]:
        """As int8_kernels.prepare_qadd: (a - a_zp) * a_m + (b - b_zp) * b_m in fp32, rounded."""
        p = f"c{step}"
        y = command.outputs[0]
        y_params = self._params(y, "output", command)
        y_scale = float(y_params.scale[0])
        nodes, terms = [], []
        for k, operand in enumerate(command.inputs[:2]):
            params = self._params(operand, f"operand {k}", command)
            nodes.append(self._scaled(f"{p}/in{k}", self.names[operand], params, self.tensors[operand].dtype,
                                      float(params.scale[0]) / y_scale))
            terms.append(nodes[-1].output[0])
        nodes += [helper.make_node("Add", terms, [f"{p}/sum"], name=f"{p}/sum"),
                  self._quantize(step, f"{p}/sum", self._zero(f"{p}/y_zero", y_params, self.tensors[y].dtype),
                                 f"{p}/rounded")]
        return nodes + self._finish(command, step, f"{p}/rounded", self.names[y])

    def _lower_QGlobalAveragePool(self, command: Command, step: int) -> list[onnx.NodeProto]:
        """As int8_kernels.requantize with count = the pooled elements: the int32 sum centred by
        count x zero point, times s / (count s') in fp32."""
        p = f"c{step}"
        x, y = command.inputs[0], command.outputs[0]
        shape = self.tensors[x].shape
        count = math.prod(shape[2:])
        x_params, y_params = self._params(x, "input", command), self._params(y, "output", command)
        axes = self._constant(f"{p}/axes", np.arange(2, len(shape), dtype=np.int64))
        nodes = [helper.make_node("Cast", [self.names[x]], [f"{p}/int32"], name=f"{p}/int32", to=TensorProto.INT32),
                 helper.make_node("ReduceSum", [f"{p}/int32", axes], [f"{p}/sum"], name=f"{p}/sum", keepdims=1)]
        centre = self._constant(f"{p}/centre", np.array(count * _held_zero(x_params, self.tensors[x].dtype), np.int32))
        multiplier = self._constant(f"{p}/multiplier", np.array(
            float(x_params.scale[0]) / (count * float(y_params.scale[0])), np.float32))
        return nodes + [
            helper.make_node("Sub", [f"{p}/sum", centre], [f"{p}/centred"], name=f"{p}/centre"),
            helper.make_node("Cast", [f"{p}/centred"], [f"{p}/float"], name=f"{p}/float", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}/float", multiplier], [f"{p}/scaled"], name=f"{p}/scale"),
            self._quantize(step, f"{p}/scaled", self._zero(f"{p}/y_zero", y_params, self.tensors[y].dtype),
                           self.names[y])]

    def _lower_QAveragePool(self, command: Command, step: int) -> list[onnx.NodeProto]:
        """As int8_kernels.prepare_qaverage_pool: DequantizeLinear(q, 1, zx) (fp32(q - zx)
        exactly), Pad with 0, a depthwise fp32 Conv with ones (exact sums of integers below
        2^24), Mul by each position's multiplier, QuantizeLinear(1, zy)."""
        p = f"c{step}"
        x, y = command.inputs[0], command.outputs[0]
        shape, attrs = self.tensors[x].shape, command.attributes
        if len(shape) != 4:
            raise ValueError(f"command {command.name} (QAveragePool) needs a 4-D input")
        x_params, y_params = self._params(x, "input", command), self._params(y, "output", command)
        pads, multiplier = average_pool_layout(shape, attrs, x_params, y_params)
        kernel_shape = list(attrs["kernel_shape"])
        rank = len(kernel_shape)
        centred = self._scaled(p, self.names[x], x_params, self.tensors[x].dtype, 1.0)
        nodes, source = [centred], centred.output[0]
        if any(pads):
            onnx_pads = [0, 0] + list(pads[:rank]) + [0, 0] + list(pads[rank:])
            nodes.append(helper.make_node("Pad", [source, self._constant(f"{p}/pads", np.array(onnx_pads, np.int64))],
                                          [f"{p}/padded"], name=f"{p}/pad"))
            source = f"{p}/padded"
        ones = self._constant(f"{p}/ones", np.ones([shape[1], 1] + kernel_shape, np.float32))
        nodes += [
            helper.make_node("Conv", [source, ones], [f"{p}/sums"], name=f"{p}/sums", group=int(shape[1]),
                             kernel_shape=kernel_shape, strides=list(attrs.get("strides", [1] * rank)),
                             dilations=list(attrs.get("dilations", [1] * rank))),
            helper.make_node("Mul", [f"{p}/sums", self._constant(f"{p}/window_multipliers", multiplier.numpy())],
                             [f"{p}/scaled_sums"], name=f"{p}/scale_sums"),
            self._quantize(step, f"{p}/scaled_sums", self._zero(f"{p}/y_zero", y_params, self.tensors[y].dtype),
                           self.names[y])]
        return nodes

    def _lower_QConcat(self, command: Command, step: int) -> list[onnx.NodeProto]:
        """As int8_kernels.prepare_qconcat: an input at the result's params and type is
        concatenated as held; another is requantised first (DequantizeLinear with multiplier
        s / sy, QuantizeLinear(1, zy)), as QMaxPool's."""
        p = f"c{step}"
        y = command.outputs[0]
        y_params, y_dtype = self._params(y, "output", command), self.tensors[y].dtype
        nodes, parts = [], []
        for k, operand in enumerate(command.inputs):
            params, dtype = self._params(operand, f"input {k}", command), self.tensors[operand].dtype
            if params.same_as(y_params) and dtype == y_dtype:
                parts.append(self.names[operand])
                continue
            nodes += self._requantised(f"{p}/in{k}", self.names[operand], params, dtype, y_params, y_dtype,
                                       f"{p}/in{k}/requantised")
            parts.append(f"{p}/in{k}/requantised")
        return nodes + [helper.make_node("Concat", parts, [self.names[y]], name=f"{p}/concat",
                                         axis=int(command.attributes.get("axis", 0)))]

    def _lower_QMaxPool(self, command: Command, step: int) -> list[onnx.NodeProto]:
        p = f"c{step}"
        x, y = command.inputs[0], command.outputs[0]
        x_params, y_params = self._params(x, "input", command), self._params(y, "output", command)
        same = x_params.same_as(y_params) and self.tensors[x].dtype == self.tensors[y].dtype
        if same:
            return [helper.make_node("MaxPool", [self.names[x]], [self.names[y]], name=f"{p}/pool", **command.attributes)]
        # The max of the held integers, then requantised.
        return [helper.make_node("MaxPool", [self.names[x]], [f"{p}/pooled"], name=f"{p}/pool", **command.attributes),
                *self._requantised(p, f"{p}/pooled", x_params, self.tensors[x].dtype, y_params, self.tensors[y].dtype,
                                   self.names[y])]


__all__ = ["Int8Lowering", "integer_kernels_exact", "INT8_MOVING_OPS", "INT8_BOUNDARY_OPS", "SHIFT_CONSTANTS", "held_constant",
           "held_type", "is_shifted", "shift_nodes"]
