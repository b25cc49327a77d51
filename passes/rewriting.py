"""What passes share: matching helpers and rewrites that keep the IR's invariants and traceability."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from rblnc.ir import CANONICAL_OPSET, Graph, GraphError, Node, TensorInfo

from .manager import PassContext

Rule = Callable[[Graph, Node, PassContext], bool]


class RewriteError(GraphError):
    """A rewrite failed at a node; the message names the node and the source ops it came from."""


def rewrite_each(graph: Graph, ctx: PassContext, rule: Rule, op_types: Iterable[str] | None = None) -> int:
    """Apply `rule(graph, node, ctx) -> changed?` to every node (of `op_types`, by qualified
    type) in topological order, skipping nodes an earlier rewrite removed. Returns rewrites."""
    if graph.opset != CANONICAL_OPSET:
        # Rules read ops with the canonical opset's semantics (Clip's bounds as inputs,
        # Softmax on one axis...); a graph the importer could not convert keeps its own.
        ctx.note(graph.name, f"left as is: the graph is at opset {graph.opset}, the rewrites "
                             f"read ops as opset {CANONICAL_OPSET} defines them")
        return 0
    wanted = set(op_types) if op_types is not None else None
    if wanted is not None and not any(node.qualified_type in wanted for node in graph.nodes):
        return 0  # nothing to match: skip the walk
    rewrites = 0
    for node in graph.topological_order():
        if wanted is not None and node.qualified_type not in wanted:
            continue
        if node.name not in graph.nx or graph.node(node.name) is not node:
            continue  # replaced by an earlier rewrite in this walk
        try:
            rewrites += bool(rule(graph, node, ctx))
        except RewriteError:
            raise
        except Exception as exc:
            raise RewriteError(f"at {describe(node)}: {type(exc).__name__}: {exc}") from exc
    return rewrites


def describe(node: Node) -> str:
    """A node as the user knows it: name, op and the source-model ops it computes."""
    text = f"{node.name} ({node.qualified_type}"
    if node.source_ops != [node.name]:
        text += f", from {', '.join(node.source_ops)}"
    if node.source_location:
        text += f", at {node.source_location}"
    return text + ")"


# -- matching -------------------------------------------------------------------------------


def constant(graph: Graph, name: str) -> np.ndarray | None:
    return graph.constants.get(name) if name else None


def scalar(graph: Graph, name: str) -> float | None:
    """The value of a constant holding one number (any shape of size 1), else None."""
    value = constant(graph, name)
    if value is None or value.size != 1 or value.dtype.kind not in "fiu":
        return None
    return float(value.reshape(()))


def uniform_scalar(graph: Graph, name: str) -> float | None:
    """The value of a constant whose elements are all equal, else None."""
    value = constant(graph, name)
    if value is None or value.size == 0 or value.dtype.kind not in "fiu":
        return None
    flat = value.reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def only_consumer(graph: Graph, tensor: str) -> Node | None:
    """The single node reading `tensor` (once), when nothing else (not even the graph's
    outputs) needs the value; fusing its producer into that node is then safe."""
    if not tensor or tensor in graph.outputs:
        return None
    consumers = graph.consumers(tensor)
    if len(consumers) != 1 or consumers[0].inputs.count(tensor) != 1 or tensor in consumers[0].implicit_inputs:
        return None
    return consumers[0]


def producer(graph: Graph, tensor: str, *op_types: str) -> Node | None:
    """The node producing `tensor` when its qualified type is one of `op_types` (any if none)."""
    node = graph.producer(tensor) if tensor else None
    if node is None or (op_types and node.qualified_type not in op_types):
        return None
    return node


def info(graph: Graph, tensor: str) -> TensorInfo | None:
    return graph.tensors.get(tensor) if tensor else None


def static_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    found = info(graph, tensor)
    return tuple(found.shape) if found is not None and found.is_static else None


def reduce_axes(graph: Graph, node: Node, rank: int) -> list[int] | None:
    """A reduction's axes (attribute, or constant second input from ReduceSum-13 on), sorted
    and non-negative; None when they are computed at run time or mean "all axes"."""
    if "axes" in node.attrs:
        axes = node.attrs["axes"]
    elif len(node.inputs) > 1 and node.inputs[1]:
        value = constant(graph, node.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    else:
        axes = None
    return sorted(int(a) % rank for a in axes) if axes else None


def close_to(value: float | None, expected: float, rtol: float = 1e-4) -> bool:
    return value is not None and abs(value - expected) <= rtol * abs(expected)


def internal(graph: Graph, nodes: Sequence[Node], last: Node) -> bool:
    """Whether every value `nodes` produce, except `last`'s, is read only inside `nodes`,
    so the pattern can be replaced as a whole."""
    names = {n.name for n in nodes}
    for node in nodes:
        if node is last:
            continue
        for out in node.outputs:
            if out and (out in graph.outputs or any(c.name not in names for c in graph.consumers(out))):
                return False
    return True


def other_input(node: Node, tensor: str) -> str:
    """The other operand of a binary node, one of whose inputs is `tensor`."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a == tensor else a


# -- rewriting ------------------------------------------------------------------------------


def merged_sources(nodes: Sequence[Node]) -> tuple[list[str], str]:
    """The source ops of all `nodes` in order (each once) and the first source location."""
    ops = list(dict.fromkeys(op for node in nodes for op in node.source_ops))
    location = next((n.source_location for n in nodes if n.source_location), "")
    return ops, location


def replace_nodes(graph: Graph, old: Sequence[Node], new: Sequence[Node],
                  new_infos: Mapping[str, TensorInfo] | None = None, *, inherit_sources: bool = True) -> None:
    """Replace the connected pattern `old` (in topological order) by `new`, which computes the
    same outputs. With `inherit_sources`, every new node lists all source ops of `old` (a fused
    node computes them all); otherwise new nodes keep the ones they were given. New nodes sit
    where the first old node was in the graph's order. Tensors `new` creates need an entry in
    `new_infos`; those it takes over keep their types."""
    sources, location = merged_sources(old)
    order = min(graph.nx.nodes[n.name]["order"] for n in old)
    infos = {o: graph.tensors[o] for n in new for o in n.outputs if o and o in graph.tensors}
    infos.update(new_infos or {})
    for node in reversed(old):
        graph.remove_node(node.name)
    for name in {o for n in old for o in n.outputs if o}:  # values only the pattern used
        if graph.producer(name) is None and not graph.consumers(name) and name not in graph.outputs \
                and name not in infos and name not in graph.inputs and not graph.is_constant(name):
            graph.tensors.pop(name, None)
    for rank, node in enumerate(new):
        if inherit_sources:
            node.source_ops = list(sources)
        node.source_location = node.source_location or location
        missing = [o for o in node.outputs if o and o not in infos]
        if missing:
            raise GraphError(f"{node.name}: no type given for new tensor(s) {missing}")
        graph.add_node(node, [infos[o] if o else None for o in node.outputs])
        graph.nx.nodes[node.name]["order"] = order + rank / (len(new) + 1)


def fused_node(graph: Graph, anchor: Node, op_type: str, inputs: list[str], attrs: dict,
               absorbed: Sequence[Node], domain: str = "ai.rblnc") -> Node:
    """A node named after `anchor` that replaces `absorbed` (topological order, anchor among
    them) and writes the last absorbed node's output."""
    node = Node(anchor.name, op_type, inputs, list(absorbed[-1].outputs), attrs, domain)
    replace_nodes(graph, absorbed, [node])
    return node


def bypass(graph: Graph, node: Node, source: str) -> bool:
    """Remove single-output `node`, whose output equals tensor `source`: its readers read
    `source` instead. When its output is a graph output, the producer of `source` is renamed
    to write it. Returns False (graph untouched) when neither is possible."""
    out = node.outputs[0]
    if any(o and (graph.consumers(o) or o in graph.outputs) for o in node.outputs[1:]):
        return False  # a second output (Dropout's mask) is still read
    if out not in graph.outputs:
        graph.replace_all_uses(out, source)
        graph.remove_node(node.name)
        return True
    origin = graph.producer(source)
    if origin is None or source in graph.outputs:
        return False  # a graph input or constant cannot be renamed into an output
    infos = {o: graph.tensors[o] for o in origin.outputs if o}
    infos[out] = graph.tensors.get(out, infos[source])
    order = graph.nx.nodes[origin.name]["order"]
    graph.remove_node(node.name)
    graph.remove_node(origin.name)
    origin.outputs = [out if o == source else o for o in origin.outputs]
    graph.add_node(origin, [infos[o] if o else None for o in origin.outputs])
    graph.nx.nodes[origin.name]["order"] = order
    graph.replace_all_uses(source, out)
    if graph.producer(source) is None and not graph.consumers(source):
        graph.tensors.pop(source, None)
    return True


def add_constant(graph: Graph, base: str, value: np.ndarray) -> str:
    """A new constant with a name derived from `base`."""
    return graph.add_constant(graph.unique_name(base), np.asarray(value))
