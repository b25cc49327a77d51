"""A stand-in timing model for the benchmarks: fills the artifact's est_time_ns fields that are 0.

The emulator's own timing model fills these fields at compile time; until it does (and for any
field it leaves at 0) the benchmarks use this one, stated here so the figures can be checked:

- a host-link transfer takes   latency + bytes / bandwidth                (target.host_link)
- an NPU command takes         overhead + FLOPs / (peak[dtype] x efficiency)   (target.compute)
  where FLOPs are 2 x multiply-adds for Conv / Gemm / MatMul (from the tensor shapes) and one
  per output element for every other op;
- an NPU partition takes the sum of its commands;
- a host partition takes what it was measured to take on this host (passed in by the caller).

Fields that already carry an estimate are left alone, so a compiled model's own numbers win.
"""

from __future__ import annotations

import numpy as np

from rblnc.format.artifact import Artifact, Command, Device, NpuProgram


def command_flops(program: NpuProgram, command: Command) -> int:
    def shape(index: int) -> tuple:
        return tuple(program.tensors[index].shape) if index >= 0 else ()

    out = shape(command.outputs[0]) if command.outputs else ()
    out_elems = int(np.prod(out, dtype=np.int64)) if out else 0
    if command.op_type == "Conv":
        weight = shape(command.inputs[1])  # [Cout, Cin/group, kh, kw]
        return 2 * out_elems * int(np.prod(weight[1:], dtype=np.int64))
    if command.op_type in ("Gemm", "MatMul"):
        a = shape(command.inputs[0])
        k = a[0] if command.op_type == "Gemm" and command.attributes.get("transA") else a[-1]
        return 2 * out_elems * int(k)
    return out_elems


def fill_estimates(artifact: Artifact, host_ns: dict[str, float] | None = None) -> Artifact:
    """Fills (in place) every est_time_ns that is 0; `host_ns` gives host partitions' times by name."""
    target = artifact.target
    peak = target.peak_flops.get(artifact.options.dtype, max(target.peak_flops.values()))
    flops_per_ns = peak * target.compute_efficiency * 1e-9
    for partition in artifact.partitions:
        for transfer in partition.transfers:
            if not transfer.est_time_ns:
                transfer.est_time_ns = target.host_link_latency_ns + transfer.bytes / target.host_link_bandwidth * 1e9
        if partition.device == Device.NPU:
            program = partition.npu_program
            for command in program.commands:
                if not command.est_time_ns:
                    command.est_time_ns = target.command_overhead_ns + command_flops(program, command) / flops_per_ns
            if not partition.est_time_ns:
                partition.est_time_ns = sum(c.est_time_ns for c in program.commands)
        elif not partition.est_time_ns and host_ns and partition.name in host_ns:
            partition.est_time_ns = host_ns[partition.name]
    return artifact
