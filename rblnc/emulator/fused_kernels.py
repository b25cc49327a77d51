"""Emulator kernels of our own fused ops (ai.rblnc): one torch call for the core op, then the epilogue.

Semantics are those documented in rblnc/ir/fused_ops.py; activation names and parameter
orders are the contract between the two."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .kernels import conv, gemm, kernel


def _optional(inputs: Sequence[torch.Tensor | None], index: int) -> torch.Tensor | None:
    return inputs[index] if len(inputs) > index else None


def apply_activation(x: torch.Tensor, name: str, params: Sequence[float]) -> torch.Tensor:
    """Activation `name` (fused_ops.ACTIVATIONS or a unary FusedElementwise step) of `x`."""
    if not name:
        return x
    if name == "Relu":
        return torch.relu(x)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Tanh":
        return torch.tanh(x)
    if name == "SiLU":
        return F.silu(x)
    if name == "HardSwish":
        return F.hardswish(x)
    if name == "Gelu":
        return F.gelu(x)
    if name == "GeluTanh":
        return F.gelu(x, approximate="tanh")
    if name == "Clip":
        low, high = (None if abs(p) == math.inf else p for p in params)
        return x if low is None and high is None else torch.clamp(x, low, high)
    if name == "LeakyRelu":
        return F.leaky_relu(x, params[0])
    if name == "HardSigmoid":
        alpha, beta = params
        return torch.clamp(x * alpha + beta, 0.0, 1.0)
    unary = _UNARY.get(name)
    if unary is None:
        raise ValueError(f"unknown activation {name!r}")
    return unary(x)


_UNARY = {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Floor": torch.floor, "Ceil": torch.ceil,
}
_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
    "Max": torch.maximum, "Min": torch.minimum, "Pow": torch.pow,
}


def _epilogue(y: torch.Tensor, addend: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    if addend is not None:
        y = y + addend
    return apply_activation(y, attrs.get("activation", ""), attrs.get("activation_params", []))


@kernel("ai.rblnc::FusedConv")
def fused_conv(inputs, attrs):
    (y,) = conv(list(inputs[:3]), attrs)
    return [_epilogue(y, _optional(inputs, 3), attrs)]


@kernel("ai.rblnc::FusedGemm")
def fused_gemm(inputs, attrs):
    (y,) = gemm(list(inputs[:3]), attrs)
    return [_epilogue(y, None, attrs)]


@kernel("ai.rblnc::FusedMatMul")
def fused_matmul(inputs, attrs):
    return [_epilogue(torch.matmul(inputs[0], inputs[1]), _optional(inputs, 2), attrs)]


@kernel("ai.rblnc::Gelu")
def gelu(inputs, attrs):
    return [F.gelu(inputs[0], approximate="tanh" if attrs.get("approximate", "none") == "tanh" else "none")]


@kernel("ai.rblnc::SiLU")
def silu(inputs, attrs):
    return [F.silu(inputs[0])]


@kernel("ai.rblnc::FusedElementwise")
def fused_elementwise(inputs, attrs):
    ops = list(attrs.get("ops", []))
    operands = list(attrs.get("operands", [-1] * len(ops)))
    swapped = list(attrs.get("swapped", [0] * len(ops)))
    params = [float(p) for p in attrs.get("params", [])]
    value, cursor = inputs[0], 0
    for op, operand, first in zip(ops, operands, swapped):
        if op in _BINARY:
            other = inputs[operand]
            value = _BINARY[op](other, value) if first else _BINARY[op](value, other)
        else:
            count = _PARAM_COUNTS.get(op, 0)
            value = apply_activation(value, op, params[cursor:cursor + count])
            cursor += count
    return [value]


_PARAM_COUNTS = {"Clip": 2, "LeakyRelu": 1, "HardSigmoid": 2}
