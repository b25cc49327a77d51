"""Splits the graph into NPU and host partitions, in an order that respects every dependency."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..format.artifact import Device
from ..ir.graph import Graph, Node
from ..target import TargetSpec
from .support import Verdict, check_npu_support


@dataclass
class PlannedPartition:
    device: Device
    nodes: list[Node] = field(default_factory=list)
    # Host partitions: why each op is not on the NPU, by node name.
    reasons: dict[str, str] = field(default_factory=dict)


def assign_devices(graph: Graph, target: TargetSpec) -> dict[str, Verdict]:
    return {node.name: check_npu_support(node, graph, target) for node in graph.nodes}


def partition_graph(graph: Graph, target: TargetSpec) -> list[PlannedPartition]:
    """Greedy topological grouping: keep taking ready ops of the current device and switch
    only when none is ready, so each switch (and its DMA) happens as rarely as possible."""
    verdicts = assign_devices(graph, target)
    device_of = {n: Device.NPU if v.supported else Device.HOST for n, v in verdicts.items()}
    order = {node.name: i for i, node in enumerate(graph.topological_order())}
    pending = {name: graph.nx.in_degree(name) for name in graph.nx}
    ready = {Device.NPU: [], Device.HOST: []}
    for name, count in pending.items():
        if count == 0:
            ready[device_of[name]].append(name)
    partitions: list[PlannedPartition] = []
    current: PlannedPartition | None = None
    while ready[Device.NPU] or ready[Device.HOST]:
        if current is None or not ready[current.device]:
            # Start with whichever device has the earliest ready op in the original order.
            device = min((d for d in ready if ready[d]), key=lambda d: min(order[n] for n in ready[d]))
            current = PlannedPartition(device)
            partitions.append(current)
        queue = ready[current.device]
        name = min(queue, key=order.__getitem__)
        queue.remove(name)
        node = graph.node(name)
        current.nodes.append(node)
        if current.device == Device.HOST:
            current.reasons[name] = verdicts[name].reason
        for _, successor, _ in graph.nx.out_edges(name, keys=True):
            pending[successor] -= 1
            if pending[successor] == 0:
                ready[device_of[successor]].append(successor)
    return partitions
