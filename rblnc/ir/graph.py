"""The graph IR: ops with ONNX semantics as networkx nodes, tensors as typed edges."""

from __future__ import annotations

import copy
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np

from ..quant_params import QuantParams

# Our own (fused) ops live in this domain; everything in domain "" has ONNX semantics.
RBLNC_DOMAIN = "ai.rblnc"
# The opset whose semantics passes and NPU kernels implement. Importers bring graphs to it
# when ONNX's version converter can; a graph that keeps another opset sends the ops whose
# semantics differ to the host.
CANONICAL_OPSET = 17

@dataclass(frozen=True)
class TensorInfo:
    """Element type and shape of a tensor. A None dimension is only known at run time;
    a None shape means even the rank is unknown (outputs of data-dependent host ops)."""

    dtype: np.dtype
    shape: tuple | None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    @property
    def size(self) -> int:
        """Number of elements (static shapes only)."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.name}[...]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


@dataclass
class Node:
    """One op. `inputs` are tensor names in ONNX positional order ("" = omitted optional)."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    # Names of the source-model ops this node computes; a fused node lists all it absorbed.
    source_ops: list[str] = field(default_factory=list)
    # Where the op came from in the user's code (module scope, file:line), when known.
    source_location: str = ""
    # Outer-scope tensors read by subgraph attributes (If/Loop bodies): real dependencies
    # that are not positional inputs.
    implicit_inputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.source_ops:
            self.source_ops = [self.name]

    @property
    def qualified_type(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type


class GraphError(Exception):
    """An IR invariant is broken (a bug in an importer or a pass, not in the user's model)."""


class Graph:
    """A dataflow graph. The networkx MultiDiGraph holds one node per op and one edge per
    (producer, consumer, tensor); `Node.inputs` keeps the positional order that edges lack.

    Graph inputs and constants have no producer node: they are in `inputs` / `constants`.
    """

    def __init__(self, name: str = "graph", opset: int = CANONICAL_OPSET):
        self.name = name
        self.opset = opset
        self.nx = nx.MultiDiGraph()
        self.tensors: dict[str, TensorInfo] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.input_layouts: dict[str, str] = {}
        # Model-local ONNX functions (custom ops defined in the model), by (domain, name): a host
        # subgraph that calls one carries its definition.
        self.functions: dict[tuple[str, str], bytes] = {}
        # Integer tensors that stand for real values (int8 activations and weights, int32 biases
        # of quantised ops), by tensor name: set by the quantize stage (rblnc/quantize/).
        self.quantization: dict[str, QuantParams] = {}
        self._producer: dict[str, str] = {}
        self._consumers: dict[str, dict[str, None]] = {}  # ordered set of node names
        self._next_order = 0  # insertion rank, for a deterministic topological order

    # -- building ---------------------------------------------------------------------

    def add_input(self, name: str, info: TensorInfo, layout: str = "") -> None:
        self._claim(name)
        self.inputs.append(name)
        self.tensors[name] = info
        if layout:
            self.input_layouts[name] = layout

    def add_constant(self, name: str, value: np.ndarray) -> str:
        self._claim(name)
        value = np.asarray(value)
        self.constants[name] = value
        self.tensors[name] = TensorInfo(value.dtype, tuple(value.shape))
        return name

    def add_node(self, node: Node, output_infos: Iterable[TensorInfo] | None = None) -> Node:
        if node.name in self.nx:
            raise GraphError(f"node name {node.name!r} is used twice")
        for out in node.outputs:
            if out:
                self._claim(out)
        self.nx.add_node(node.name, node=node, order=self._next_order)
        self._next_order += 1
        for out in node.outputs:
            if out:
                self._producer[out] = node.name
                for consumer in self._consumers.get(out, ()):
                    self.nx.add_edge(node.name, consumer, key=out)
        for inp in node.inputs + node.implicit_inputs:
            self._link_input(node.name, inp)
        if output_infos is not None:
            for out, info in zip(node.outputs, output_infos):
                self.tensors[out] = info
        return node

    def remove_node(self, name: str) -> Node:
        node = self.node(name)
        for inp in set(node.inputs + node.implicit_inputs):
            if inp:
                self._consumers[inp].pop(name, None)
        for out in node.outputs:
            if self._producer.get(out) == name:
                del self._producer[out]
                if not self._consumers.get(out):
                    self.tensors.pop(out, None)
        self.nx.remove_node(name)
        return node

    def set_input(self, node: Node, index: int, tensor: str) -> None:
        """Point one input of `node` at another tensor, keeping the edges true."""
        old = node.inputs[index]
        node.inputs[index] = tensor
        if old and old not in node.inputs + node.implicit_inputs:
            self._unlink_input(node.name, old)
        self._link_input(node.name, tensor)

    def replace_all_uses(self, old: str, new: str) -> None:
        """Every consumer of `old`, and the graph outputs, now read `new`; an If/Loop/Scan body
        that reads `old` from this graph reads `new`."""
        for consumer in list(self.consumers(old)):
            for i, name in enumerate(consumer.inputs):
                if name == old:
                    self.set_input(consumer, i, new)
            if old in consumer.implicit_inputs:
                self._rename_implicit_input(consumer, old, new)
        self.outputs = [new if o == old else o for o in self.outputs]

    def _rename_implicit_input(self, node: Node, old: str, new: str) -> None:
        for value in node.attrs.values():
            for body in value if isinstance(value, list) else [value]:
                if hasattr(body, "node") and hasattr(body, "output"):  # an onnx GraphProto
                    _rename_outer_read(body, old, new)
        node.implicit_inputs = list(dict.fromkeys(new if i == old else i for i in node.implicit_inputs))
        if old not in node.inputs:
            self._unlink_input(node.name, old)
        self._link_input(node.name, new)

    def _unlink_input(self, node_name: str, tensor: str) -> None:
        """`node_name` no longer reads `tensor`: its consumer entry and producer edges go."""
        self._consumers[tensor].pop(node_name, None)
        producer = self._producer.get(tensor)
        if producer is not None:
            while self.nx.has_edge(producer, node_name, key=tensor):
                self.nx.remove_edge(producer, node_name, key=tensor)

    def remove_constant(self, name: str) -> None:
        del self.constants[name]
        del self.tensors[name]

    def unique_name(self, base: str) -> str:
        """A name no node or tensor has yet, derived from `base`."""
        if base not in self.tensors and base not in self.nx:
            return base
        for i in itertools.count(1):
            candidate = f"{base}_{i}"
            if candidate not in self.tensors and candidate not in self.nx:
                return candidate
        raise AssertionError("unreachable")

    # -- queries ----------------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self.nx.nodes[name]["node"]
        except KeyError:
            raise GraphError(f"no node named {name!r}") from None

    @property
    def nodes(self) -> Iterator[Node]:
        """All nodes in insertion order (not necessarily topological)."""
        return (data["node"] for _, data in self.nx.nodes(data=True))

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def producer(self, tensor: str) -> Node | None:
        name = self._producer.get(tensor)
        return None if name is None else self.node(name)

    def consumers(self, tensor: str) -> list[Node]:
        return [self.node(n) for n in self._consumers.get(tensor, ())]

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def topological_order(self) -> list[Node]:
        """Deterministic: among ready nodes, the one of lowest rank (insertion order; fused nodes
        take fractional ranks) comes first. Kahn's algorithm on networkx's adjacency dicts
        directly: passes walk the graph some forty times per compile, and networkx's generic
        lexicographical sort was most of their time on a ResNet."""
        nodes = self.nx.nodes
        pred, succ = self.nx.pred, self.nx.succ
        waiting = {name: len(pred[name]) for name in pred}
        # Ties in rank fall back to insertion, as networkx's lexicographical sort does.
        key = {name: (data["order"], i) for i, (name, data) in enumerate(nodes.items())}
        ready = [(key[name], name) for name in key if not waiting[name]]
        heapq.heapify(ready)
        result = []
        while ready:
            _, name = heapq.heappop(ready)
            result.append(nodes[name]["node"])
            for successor in succ[name]:
                waiting[successor] -= 1
                if not waiting[successor]:
                    heapq.heappush(ready, (key[successor], successor))
        if len(result) != len(waiting):
            raise GraphError("the graph has a cycle")
        return result

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.qualified_type] = counts.get(node.qualified_type, 0) + 1
        return counts

    def copy(self) -> "Graph":
        """A deep copy of the structure; constant arrays are shared (passes never mutate them)."""
        other = copy.copy(self)
        other.nx = nx.MultiDiGraph()
        for name, data in self.nx.nodes(data=True):
            other.nx.add_node(name, node=copy.deepcopy(data["node"]), order=data["order"])
        other.nx.add_edges_from(self.nx.edges(keys=True))
        other.tensors = dict(self.tensors)
        other.constants = dict(self.constants)
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.input_layouts = dict(self.input_layouts)
        other.quantization = dict(self.quantization)
        other._producer = dict(self._producer)
        other._consumers = {k: dict(v) for k, v in self._consumers.items()}
        return other

    # -- internals --------------------------------------------------------------------

    def _claim(self, tensor: str) -> None:
        if tensor in self._producer or tensor in self.constants or tensor in self.inputs:
            raise GraphError(f"tensor {tensor!r} is defined twice")

    def _link_input(self, node_name: str, tensor: str) -> None:
        if not tensor:
            return
        self._consumers.setdefault(tensor, {})[node_name] = None
        producer = self._producer.get(tensor)
        if producer is not None and not self.nx.has_edge(producer, node_name, key=tensor):
            self.nx.add_edge(producer, node_name, key=tensor)


def _rename_outer_read(body, old: str, new: str) -> None:
    """In an ONNX GraphProto (a subgraph attribute) and the bodies nested in it, reads of the
    enclosing scope's `old` become reads of `new`. A name the body defines itself is its own."""
    defined = {i.name for i in body.input} | {t.name for t in body.initializer}
    defined.update(o for n in body.node for o in n.output)
    if old in defined:
        return
    for node in body.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for nested in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_outer_read(nested, old, new)
    for output in body.output:
        if output.name == old:
            output.name = new
