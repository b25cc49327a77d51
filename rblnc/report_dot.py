"""Writes an artifact's partitioned graph as Graphviz DOT text: one cluster per partition, NPU and host in two colours."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from .format.artifact import Artifact, CommandKind, Device, TransferDirection

NPU_COLOUR = "#cfe2ff"    # light blue
HOST_COLOUR = "#ffd8a8"   # light orange
_EDGE_DMA = "#c92a2a"     # an edge that crosses the host link


def artifact_to_dot(artifact: Artifact, title: str = "rblnc") -> str:
    """The DOT text: ops as boxes inside one cluster per partition, model inputs and outputs as
    ellipses, an edge per tensor; edges carried by a host-link DMA are red and labelled with
    the bytes per inference."""
    producer: dict[str, str] = {name: f"input:{name}" for name in (v.name for v in artifact.inputs)}
    consumers: list[tuple[str, str]] = []  # (tensor, op id)
    lines = [f"digraph {_quote(title)} {{", "  rankdir=TB;", '  node [shape=box, style="rounded,filled", fontsize=10];']
    for value in artifact.inputs:
        lines.append(f"  {_quote('input:' + value.name)} [label={_quote(value.name)}, shape=ellipse, fillcolor=white];")
    for index, partition in enumerate(artifact.partitions):
        colour = NPU_COLOUR if partition.device == Device.NPU else HOST_COLOUR
        device = "NPU" if partition.device == Device.NPU else "host"
        lines += [f"  subgraph {_quote(f'cluster_{index}')} {{",
                  f"    label={_quote(f'{partition.name} ({device})')}; style=filled; fillcolor={_quote(colour)};"]
        for op_id, label, reads, writes in _ops(partition):
            tooltip = label
            if partition.device == Device.HOST:
                reason = next((r.reason for r in partition.fallback_reasons if f"{partition.name}/{r.op_name}" == op_id), "")
                tooltip = f"{label}: {reason}" if reason else label
            lines.append(f"    {_quote(op_id)} [label={_quote(label)}, fillcolor={_quote(colour)}, "
                         f"tooltip={_quote(tooltip)}];")
            for name in writes:
                producer[name] = op_id
            consumers += [(name, op_id) for name in reads]
        lines.append("  }")
    for value in artifact.outputs:
        lines.append(f"  {_quote('output:' + value.name)} [label={_quote(value.name)}, shape=ellipse, fillcolor=white];")
        consumers.append((value.name, f"output:{value.name}"))
    device_of = {f"{p.name}": p.device for p in artifact.partitions}
    h2d = {t.tensor: t.bytes for p in artifact.partitions for t in p.transfers
           if t.direction == TransferDirection.HOST_TO_DEVICE}
    d2h = {t.tensor: t.bytes for p in artifact.partitions for t in p.transfers
           if t.direction == TransferDirection.DEVICE_TO_HOST}
    for tensor, op_id in dict.fromkeys(consumers):
        source = producer.get(tensor)
        if source is None:
            continue  # a constant
        source_device = device_of.get(_partition_of(source), Device.HOST)  # model inputs/outputs: host memory
        target_device = device_of.get(_partition_of(op_id), Device.HOST)
        if source_device != target_device:
            nbytes = (h2d if target_device == Device.NPU else d2h).get(tensor)
            label = f"{tensor}\n{nbytes} B DMA" if nbytes is not None else tensor
            lines.append(f"  {_quote(source)} -> {_quote(op_id)} [label={_quote(label)}, color={_quote(_EDGE_DMA)}, "
                         "fontcolor=" + _quote(_EDGE_DMA) + ", fontsize=8];")
        else:
            lines.append(f"  {_quote(source)} -> {_quote(op_id)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(artifact: Artifact, path: str | os.PathLike, title: str = "rblnc") -> Path:
    """Write `artifact_to_dot` to `path` (through a temporary file, so no half-written file remains)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(artifact_to_dot(artifact, title))
    temporary.replace(path)
    return path


def _ops(partition) -> list[tuple[str, str, list[str], list[str]]]:
    """(id, label, tensors read, tensors written) per op of a partition."""
    ops = []
    if partition.npu_program is not None:
        tensors = partition.npu_program.tensors
        for command in partition.npu_program.commands:
            if command.kind == CommandKind.DMA:
                continue  # spills stay inside the program; the graph shows dataflow
            ops.append((f"{partition.name}/{command.name}", command.op_type,
                        [tensors[i].name.removesuffix("@dram") for i in command.inputs if i >= 0],
                        [tensors[i].name.removesuffix("@dram") for i in command.outputs if i >= 0]))
    elif partition.host_onnx is not None:
        model = onnx.load_from_string(bytes(partition.host_onnx))
        for node in model.graph.node:
            if node.op_type == "Constant" and not partition.fallback_reasons:
                continue
            ops.append((f"{partition.name}/{node.name}", node.op_type,
                        [i for i in node.input if i], [o for o in node.output if o]))
    return ops


def _partition_of(op_id: str) -> str:
    return op_id.split("/", 1)[0]


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
