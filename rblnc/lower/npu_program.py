"""Lowers an NPU partition to a program: one command per IR node over a tensor table, in the
program's precision (memory placement and costs are filled in later by memory_plan/estimates)."""

from __future__ import annotations

import numpy as np

from ..dtypes import PRECISIONS, float_precision, is_float
from ..format.artifact import Command, NpuProgram, Tensor, TensorKind
from ..ir.graph import Graph, Node

# Float inputs that are parameters of the op's shape or sampling rather than data it computes
# on: they keep their own type (Resize's roi and scales set output coordinates).
# Quantize/DequantizeLinear's scale sets what every integer means: rounded, it would shift them all.
_PARAMETER_INPUTS = {"Resize": (1, 2), "QuantizeLinear": (1,), "DequantizeLinear": (1,)}


def lower_npu_program(graph: Graph, nodes: list[Node], inputs: list[str], outputs: list[str],
                      precision: str = "fp32") -> NpuProgram:
    """Float tensors take the precision's type (bf16 in an int8 program): activations are rounded
    to it at every command boundary and float constants (weights) are stored in it; other tensors
    keep their type, and quantised ones carry their scale and zero point."""
    device_float = PRECISIONS[float_precision(precision)]
    parameters = {n.inputs[i] for n in nodes for i in _PARAMETER_INPUTS.get(n.op_type, ())
                  if not n.domain and i < len(n.inputs) and n.inputs[i]}
    parameters |= _full_precision_boundaries(nodes, inputs, outputs)
    tensors: list[Tensor] = []
    index: dict[str, int] = {}

    def add(name: str, kind: TensorKind) -> int:
        info = graph.tensors[name]
        dtype = device_float if is_float(info.dtype) and name not in parameters else np.dtype(info.dtype)
        data = None
        if kind == TensorKind.CONSTANT:
            data = np.require(graph.constants[name], requirements="C")  # keeps scalars 0-D
            if data.dtype != dtype:
                data = data.astype(dtype)
        index[name] = len(tensors)
        tensors.append(Tensor(name, dtype, tuple(info.shape), kind, data, size=info.size * dtype.itemsize,
                              quantization=graph.quantization.get(name)))
        return index[name]

    for name in inputs:
        add(name, TensorKind.PROGRAM_INPUT)
    output_set = set(outputs)
    commands = []
    for node in nodes:
        for name in node.inputs:
            if name and name not in index and graph.is_constant(name):
                add(name, TensorKind.CONSTANT)
        for name in node.outputs:
            if name:
                add(name, TensorKind.PROGRAM_OUTPUT if name in output_set else TensorKind.ACTIVATION)
        commands.append(Command(
            op_type=node.op_type,
            domain=node.domain,
            attributes=dict(node.attrs),
            inputs=[index[n] if n else -1 for n in node.inputs],
            outputs=[index[n] if n else -1 for n in node.outputs],
            name=node.name,
            source_ops=list(node.source_ops),
            source_location=node.source_location,
        ))
    return NpuProgram(tensors, commands)


def _full_precision_boundaries(nodes: list[Node], inputs: list[str], outputs: list[str]) -> set[str]:
    """Program inputs only a QuantizeLinear reads and outputs a DequantizeLinear writes keep fp32:
    the device quantises the value as it arrives (rounding it to bf16 first would move values
    across int8 rounding boundaries) and dequantises straight into the value it hands back."""
    readers: dict[str, set[str]] = {}
    for node in nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, set()).add(node.qualified_type)
    kept = {name for name in inputs if readers.get(name) == {"QuantizeLinear"}}
    output_set = set(outputs)
    kept |= {node.outputs[0] for node in nodes
             if node.qualified_type == "DequantizeLinear" and node.outputs[0] in output_set}
    return kept
