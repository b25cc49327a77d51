"""Lowering: the partitioned IR becomes an Artifact (NPU programs, host ONNX subgraphs, DMA)."""

from __future__ import annotations

from ..cost_model import host_node_time_ns, precision_itemsize, transfer_time_ns
from ..format.artifact import (
    Artifact, CompileOptions, Device, FallbackReason, Partition, Transfer, TransferDirection,
    ValueInfo,
)
from ..ir.graph import Graph, Node
from ..partition.partitioner import PlannedPartition
from ..target import TargetSpec
from .estimates import estimate_program
from .host_subgraph import lower_host_subgraph
from .memory_plan import plan_model_memory
from .npu_program import lower_npu_program


def lower_graph(graph: Graph, plan: list[PlannedPartition], target: TargetSpec,
                options: CompileOptions, producer: str) -> Artifact:
    produced_in: dict[str, int] = {}
    for index, planned in enumerate(plan):
        for node in planned.nodes:
            for out in node.outputs:
                if out:
                    produced_in[out] = index
    read_later: dict[int, list[str]] = {}  # partition index -> its values read by others
    for index, planned in enumerate(plan):
        for name in _reads(planned, graph):
            source = produced_in.get(name)
            if source is not None and source != index and name not in read_later.setdefault(source, []):
                read_later[source].append(name)
    for name in graph.outputs:
        source = produced_in.get(name)
        if source is not None and name not in read_later.setdefault(source, []):
            read_later[source].append(name)

    model_outputs = set(graph.outputs)
    on_device: set[str] = set()  # values resident in device memory after earlier partitions
    partitions = []
    for index, planned in enumerate(plan):
        inputs = [n for n in _reads(planned, graph) if produced_in.get(n) != index]
        outputs = read_later.get(index, [])
        name = f"p{index}_{planned.device.name.lower()}"
        partition = Partition(
            name=name,
            device=planned.device,
            inputs=[_value_info(graph, n) for n in inputs],
            outputs=[_value_info(graph, n) for n in outputs],
        )
        if planned.device == Device.NPU:
            partition.npu_program = lower_npu_program(graph, planned.nodes, inputs, outputs, options.dtype)

            device_bytes = {t.name: t.size for t in partition.npu_program.tensors}

            def link_bytes(n: str) -> int:
                # The host converts to and from the program's tensor types (the precision; fp32 where an
                # int8 program quantises an input as it arrives), so the link carries those.
                info = graph.tensors[n]
                return device_bytes.get(n, info.size * precision_itemsize(info.dtype, options.dtype))

            for n in inputs:
                if n not in on_device:
                    partition.transfers.append(Transfer(TransferDirection.HOST_TO_DEVICE, n, link_bytes(n)))
                    on_device.add(n)
            on_device.update(outputs)
            for n in outputs:
                if n in model_outputs or any(plan[i].device == Device.HOST and n in _reads(plan[i], graph)
                                             for i in range(index + 1, len(plan))):
                    partition.transfers.append(Transfer(TransferDirection.DEVICE_TO_HOST, n, link_bytes(n)))
        else:
            partition.host_onnx = lower_host_subgraph(graph, planned.nodes, inputs, outputs, name)
            partition.fallback_reasons = [
                FallbackReason(node.name, node.op_type, planned.reasons.get(node.name, ""),
                               planned.savings.get(node.name, 0.0))
                for node in planned.nodes
            ]
            partition.est_time_ns = sum(host_node_time_ns(node, graph, target) for node in planned.nodes)
        for transfer in partition.transfers:
            transfer.est_time_ns = transfer_time_ns(transfer.bytes, target)
        partitions.append(partition)
    constant_outputs = list(dict.fromkeys(n for n in graph.outputs if graph.is_constant(n)))
    if constant_outputs:  # outputs no op computes: a host partition hands them out
        name = f"p{len(partitions)}_host"
        nodes = [Node(f"{name}_constant_{i}", "Constant", [], [n], {"value": graph.constants[n]})
                 for i, n in enumerate(constant_outputs)]
        partitions.append(Partition(
            name=name, device=Device.HOST, inputs=[],
            outputs=[_value_info(graph, n) for n in constant_outputs],
            host_onnx=lower_host_subgraph(graph, nodes, [], constant_outputs, name),
            fallback_reasons=[FallbackReason(n.name, "Constant", "a model output that no op computes")
                              for n in nodes],
        ))
    npu = [(p.name, p.npu_program) for p in partitions if p.npu_program is not None]
    plan_model_memory(npu, target)
    for partition in partitions:
        if partition.npu_program is not None:
            partition.est_time_ns = estimate_program(partition.npu_program, target, options.dtype)
    return Artifact(
        options=options,
        target=target,
        opset=graph.opset,
        inputs=[_value_info(graph, n) for n in graph.inputs],
        outputs=[_value_info(graph, n) for n in graph.outputs],
        partitions=partitions,
        producer=producer,
    )


def _reads(planned: PlannedPartition, graph: Graph) -> list[str]:
    """Non-constant values the partition's nodes read, in first-use order."""
    seen: dict[str, None] = {}
    for node in planned.nodes:
        for name in node.inputs + node.implicit_inputs:
            if name and not graph.is_constant(name):
                seen.setdefault(name)
    return list(seen)


def _value_info(graph: Graph, name: str) -> ValueInfo:
    info = graph.tensors[name]
    return ValueInfo(name, info.dtype, info.shape, graph.input_layouts.get(name, ""))
