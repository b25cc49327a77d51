"""Lowers an NPU partition to a program: one command per IR node over a tensor table."""

from __future__ import annotations

import numpy as np

from ..format.artifact import Command, MemoryRegion, NpuProgram, Tensor, TensorKind
from ..ir.graph import Graph, Node


def lower_npu_program(graph: Graph, nodes: list[Node], inputs: list[str], outputs: list[str]) -> NpuProgram:
    tensors: list[Tensor] = []
    index: dict[str, int] = {}

    def add(name: str, kind: TensorKind) -> int:
        info = graph.tensors[name]
        data = graph.constants[name] if kind == TensorKind.CONSTANT else None
        index[name] = len(tensors)
        tensors.append(Tensor(name, info.dtype, tuple(info.shape), kind, data, size=info.nbytes))
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
    program = NpuProgram(tensors, commands)
    _place_naively(program)
    return program


def _place_naively(program: NpuProgram) -> None:
    """Every non-constant tensor gets its own DRAM range. (A liveness-based plan that reuses
    memory and uses SRAM belongs to the emulator issue; the format already carries it.)"""
    offset = 0
    for tensor in program.tensors:
        if tensor.kind == TensorKind.CONSTANT:
            continue
        tensor.region = MemoryRegion.DRAM
        tensor.offset = offset
        offset += (tensor.size + 63) // 64 * 64
    program.peak_dram_bytes = offset
    program.weight_bytes = int(sum(t.data.nbytes for t in program.tensors if t.data is not None))
