"""Splits the graph into NPU and host partitions: maximal, acyclic, refined by the cost model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import networkx as nx

from ..cost_model import estimate_node, host_node_time_ns, precision_itemsize, transfer_time_ns
from ..errors import CompileError, HostFallbackError
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
    # Host partitions: ops the NPU supports that the cost model moved here, with the modelled
    # time per inference the move saves (ns), by node name.
    savings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionOptions:
    """What the user decides about placement (compile options host_ops, npu_ops, host_fallback,
    refine_partitions) and the precision the NPU computes in (for the cost model)."""

    host_ops: frozenset[str] = frozenset()
    npu_ops: frozenset[str] = frozenset()
    host_fallback: bool = True
    refine: bool = True
    dtype: str = "bf16"

    @classmethod
    def build(cls, host_ops: Iterable[str] = (), npu_ops: Iterable[str] = (), **kwargs) -> "PartitionOptions":
        return cls(host_ops=frozenset(_op_names(host_ops)), npu_ops=frozenset(_op_names(npu_ops)), **kwargs)


@dataclass(frozen=True)
class MoveDecision:
    """Why the refinement moved NPU-supported ops (one, or a connected group moved together) to
    the host, in modelled ns per inference."""

    group: tuple[str, ...]
    dma_saved_ns: float
    host_ns: float
    npu_ns: float

    @property
    def saving_ns(self) -> float:
        return self.dma_saved_ns - (self.host_ns - self.npu_ns)

    @property
    def share_ns(self) -> float:
        """Each op's part of the saving (the saving split evenly over the group), so the parts
        recorded in the artifact add up to the modelled saving."""
        return self.saving_ns / len(self.group)

    def reason(self) -> str:
        what = "it costs" if len(self.group) == 1 else f"its group of {len(self.group)} ops ({', '.join(self.group)}) costs"
        whole = "" if len(self.group) == 1 else " for the group"
        return (f"the NPU supports it, but between host ops {what} a DMA round trip: on the host it saves "
                f"{_us(self.saving_ns)} per inference{whole} (DMA {_us(self.dma_saved_ns)} saved, host "
                f"{_us(self.host_ns)} vs NPU {_us(self.npu_ns)}; modelled)")


def assign_devices(graph: Graph, target: TargetSpec) -> dict[str, Verdict]:
    return {node.name: check_npu_support(node, graph, target) for node in graph.nodes}


def partition_graph(graph: Graph, target: TargetSpec, options: PartitionOptions | None = None) -> list[PlannedPartition]:
    """Device per op (support check, then the user's overrides, then the cost-driven refinement),
    then the fewest partitions in an order that respects every dependency."""
    options = options or PartitionOptions()
    verdicts = assign_devices(graph, target)
    device_of: dict[str, Device] = {}
    reasons: dict[str, str] = {}
    pinned: set[str] = set()  # placed by the user: the refinement leaves them alone
    refused: list[tuple[Node, str]] = []
    for node in graph.nodes:
        verdict = verdicts[node.name]
        if _named(node, options.npu_ops):
            if not verdict.supported:
                refused.append((node, verdict.reason))
            device_of[node.name] = Device.NPU
            pinned.add(node.name)
        elif _named(node, options.host_ops):
            device_of[node.name] = Device.HOST
            reasons[node.name] = f"placed on the host by the user (host_ops / --host-ops {node.op_type})"
            pinned.add(node.name)
        else:
            device_of[node.name] = Device.NPU if verdict.supported else Device.HOST
            if not verdict.supported:
                reasons[node.name] = verdict.reason
    unmatched = sorted(options.host_ops - {n.op_type for n in graph.nodes} - {n.qualified_type for n in graph.nodes})
    if unmatched:
        present = sorted({n.qualified_type for n in graph.nodes})
        raise CompileError(f"host_ops (--host-ops) names {', '.join(unmatched)}, but no op of that type is left after "
                           "the optimisation passes (a fusion may have merged it into an ai.rblnc op: name that op, "
                           f"or compile with -O1); the graph has {', '.join(present)}")
    if refused:
        listed = "\n".join(f"  {n.name} ({n.qualified_type}): {reason}" for n, reason in refused)
        raise CompileError(f"npu_ops (--npu-ops) asks for {len(refused)} op(s) the NPU cannot run:\n{listed}")
    if not options.host_fallback:
        offending = [(n.name, n.qualified_type, reasons[n.name]) for n in graph.topological_order()
                     if device_of[n.name] == Device.HOST]
        if offending:
            raise HostFallbackError(offending)
    savings: dict[str, float] = {}
    if options.refine and options.host_fallback:
        for name, decision in refine_placement(graph, target, device_of, pinned, options.dtype).items():
            reasons[name] = decision.reason()
            savings[name] = decision.share_ns
    plan = group_into_partitions(graph, device_of)
    for planned in plan:
        if planned.device == Device.HOST:
            planned.reasons = {n.name: reasons.get(n.name, "") for n in planned.nodes}
            planned.savings = {n.name: savings[n.name] for n in planned.nodes if n.name in savings}
    cycle = partition_cycle(plan, graph)
    if cycle:  # an invariant of group_into_partitions; checked because lowering relies on it
        raise CompileError(f"internal error: the partitions depend on each other in a cycle {cycle}")
    return plan


def group_into_partitions(graph: Graph, device_of: dict[str, Device]) -> list[PlannedPartition]:
    """Each op goes to the earliest slot of a sequence NPU, host, NPU, host... that comes after the
    slots of its inputs' producers (the same slot for a producer on its own device). Every edge
    then points forward, so the partitions form no cycle, and the number of device switches is
    the least any order allows: an op's slot is the fewest switches on any path reaching it."""
    slot: dict[str, int] = {}
    order = graph.topological_order()
    for node in order:
        device = device_of[node.name]
        earliest = 0
        for producer in graph.nx.predecessors(node.name):
            earliest = max(earliest, slot[producer] + (device_of[producer] != device))
        if _slot_device(earliest) != device:
            earliest += 1
        slot[node.name] = earliest
    partitions: dict[int, PlannedPartition] = {}
    for node in order:
        index = slot[node.name]
        partitions.setdefault(index, PlannedPartition(_slot_device(index))).nodes.append(node)
    return [partitions[i] for i in sorted(partitions)]


def partition_cycle(plan: list[PlannedPartition], graph: Graph) -> list[int] | None:
    """Indices of partitions that depend on each other in a cycle (None when there is none),
    or of a pair whose order in `plan` contradicts a dependency (lowering runs them in order)."""
    index = {node.name: i for i, planned in enumerate(plan) for node in planned.nodes}
    between = nx.DiGraph()
    between.add_nodes_from(range(len(plan)))
    between.add_edges_from((index[u], index[v]) for u, v in graph.nx.edges() if index[u] != index[v])
    try:
        return [u for u, _ in nx.find_cycle(between)]
    except nx.NetworkXNoCycle:
        pass
    backwards = next(((u, v) for u, v in between.edges() if u > v), None)
    return list(backwards) if backwards else None


def refine_placement(graph: Graph, target: TargetSpec, device_of: dict[str, Device], pinned: set[str],
                     dtype: str) -> dict[str, MoveDecision]:
    """Moves to the host NPU ops that sit between host ops when the DMA round trip they cause costs
    more than running them on the host does. Candidates are each NPU op alone and each connected
    group of NPU ops (a chain between two host ops); the best saving moves first, until no move
    saves time. Updates `device_of`; returns the decisions by node name."""
    decisions: dict[str, MoveDecision] = {}
    order = {n.name: i for i, n in enumerate(graph.topological_order())}
    while True:
        movable = [name for name in order if device_of[name] == Device.NPU and name not in pinned]
        groups = [(name,) for name in movable]
        for component in nx.weakly_connected_components(graph.nx.subgraph(movable)):
            if len(component) > 1:
                groups.append(tuple(sorted(component, key=order.__getitem__)))
        best: MoveDecision | None = None
        for group in groups:
            decision = _round_trip(group, graph, target, device_of, dtype)
            if decision is not None and decision.saving_ns > 0 and (best is None or decision.saving_ns > best.saving_ns):
                best = decision
        if best is None:
            return decisions
        for name in best.group:
            device_of[name] = Device.HOST
            decisions[name] = best


def _round_trip(group: tuple[str, ...], graph: Graph, target: TargetSpec, device_of: dict[str, Device],
                dtype: str) -> MoveDecision | None:
    """The modelled effect of moving the NPU ops `group` to the host, when they sit between host
    ops: every value they read from outside made by a host op, every reader outside the group a
    host op (at least one). Ops reading model inputs are at the model's edge, not between host
    ops, and stay (the tiny models of tests would otherwise all move: 5 us of link latency
    outweighs their compute)."""
    members = set(group)
    nodes = [graph.node(name) for name in group]
    reads = [i for i in dict.fromkeys(i for n in nodes for i in n.inputs + n.implicit_inputs)
             if i and not graph.is_constant(i) and (graph.producer(i) is None or graph.producer(i).name not in members)]
    producers = [graph.producer(i) for i in reads]
    if not producers or any(p is None or device_of[p.name] == Device.NPU for p in producers):
        return None
    outputs = [o for n in nodes for o in n.outputs if o]
    leaving = [o for o in outputs if o in graph.outputs or any(c.name not in members for c in graph.consumers(o))]
    readers = [c for o in outputs for c in graph.consumers(o) if c.name not in members]
    if not readers or any(device_of[c.name] == Device.NPU for c in readers):
        return None

    def link_ns(name: str) -> float:
        info = graph.tensors[name]
        return transfer_time_ns(info.size * precision_itemsize(info.dtype, dtype), target)

    # An input another NPU op also reads is copied to the device anyway.
    dma = sum(link_ns(i) for i in reads
              if all(c.name in members or device_of[c.name] == Device.HOST for c in graph.consumers(i)))
    dma += sum(link_ns(o) for o in leaving)
    return MoveDecision(group, dma, sum(host_node_time_ns(n, graph, target) for n in nodes),
                        sum(estimate_node(n, graph, target, dtype).time_ns for n in nodes))


def _slot_device(slot: int) -> Device:
    return Device.NPU if slot % 2 == 0 else Device.HOST


def _named(node: Node, op_types: frozenset[str]) -> bool:
    return node.op_type in op_types or node.qualified_type in op_types


def _op_names(values: Iterable[str] | str) -> list[str]:
    """Op types from a list or a comma-separated string ("Softmax,TopK")."""
    if isinstance(values, str):
        values = [values]
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def _us(ns: float) -> str:
    return f"{ns / 1e3:.1f} us"
