"""Fills the artifact's modelled costs: per command (roofline over the memory plan), per
partition, per host-link transfer. The runtime paces by these; `inspect` reports them."""

from __future__ import annotations

from ..cost_model import OpShape, command_precision, dma_time_ns, kernel_time_ns, op_flops, runs_on_matrix_engine
from ..format.artifact import CommandKind, MemoryRegion, NpuProgram, TensorKind
from ..target import TargetSpec
from .memory_plan import VIEW_OPS


def estimate_program(program: NpuProgram, target: TargetSpec, precision: str) -> float:
    """Sets flops, sram_bytes, dram_bytes and est_time_ns of every command; returns their sum."""
    tensors = program.tensors
    total = 0.0
    for command in program.commands:
        if command.kind == CommandKind.DMA:
            nbytes = tensors[command.inputs[0]].size
            command.flops, command.sram_bytes, command.dram_bytes = 0, nbytes, nbytes
            command.est_time_ns = dma_time_ns(nbytes, target)
            total += command.est_time_ns
            continue
        operands = [i for i in command.inputs + command.outputs if i >= 0]
        if not command.domain and command.op_type in VIEW_OPS and _aliased(program, command):
            command.flops = command.sram_bytes = command.dram_bytes = 0
            command.est_time_ns = 0.0  # the output is the input's bytes: no kernel runs
            continue
        sram = sum(tensors[i].size for i in operands if _in_sram(tensors[i]))
        dram = sum(tensors[i].size for i in operands if not _in_sram(tensors[i]))
        op = OpShape(command.op_type, command.domain, command.attributes,
                     [tensors[i].shape if i >= 0 else None for i in command.inputs],
                     [tensors[i].shape for i in command.outputs if i >= 0])
        command.flops = op_flops(op)
        command.sram_bytes, command.dram_bytes = sram, dram
        command.est_time_ns, _ = kernel_time_ns(command.flops, sram, dram, target,
                                                command_precision(command.op_type, command.domain, precision),
                                                matrix=runs_on_matrix_engine(op))
        total += command.est_time_ns
    return total


def _in_sram(tensor) -> bool:
    return tensor.kind != TensorKind.CONSTANT and tensor.region == MemoryRegion.SRAM


def _aliased(program: NpuProgram, command) -> bool:
    source, result = program.tensors[command.inputs[0]], program.tensors[command.outputs[0]]
    return (source.kind == result.kind == TensorKind.ACTIVATION and source.region == result.region
            and source.offset == result.offset)
