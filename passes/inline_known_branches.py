"""An If whose condition is a compile-time constant becomes the nodes of the branch it takes.

    If(cond=true, then_branch=G, else_branch=H) -> G's nodes, G's outputs renamed to the If's

An exported model often branches on a configuration input (a sample rate, a mode flag) or on a
shape; once that is known (an input bound with `--const`, a shape folded) the If is dead
weight: left in place it runs the whole branch on the host, through onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rblnc.ir import Graph, Node
from rblnc.ir.onnx_bridge import constant_node_value, node_from_onnx, outer_scope_reads
from rblnc.ir.shape_inference import infer_node

from .manager import PassContext, graph_pass


@graph_pass("inline_known_branches")
def inline_known_branches(graph: Graph, ctx: PassContext) -> int:
    """Replace an If on a constant condition by the nodes of the branch it takes."""
    inlined = 0
    for node in graph.topological_order():
        if node.op_type != "If" or node.domain or not graph.is_constant(node.inputs[0]):
            continue
        condition = np.asarray(graph.constants[node.inputs[0]])
        if condition.size != 1:
            continue
        branch = node.attrs["then_branch" if bool(condition.reshape(())) else "else_branch"]
        if _inline(graph, node, branch, ctx):
            inlined += 1
    return inlined


def _inline(graph: Graph, node: Node, branch: onnx.GraphProto, ctx: PassContext) -> bool:
    # ONNX names are unique across a model and its subgraphs, so the branch's own names can
    # move into the outer graph unchanged; a clash means a malformed model, left as it was.
    own = [t.name for t in branch.initializer] + [o for n in branch.node for o in n.output if o]
    clash = [name for name in own if name in graph.tensors]
    if clash:
        ctx.note(node.name, f"branch value {clash[0]!r} clashes with a name outside it")
        return False
    if len(branch.output) != len([o for o in node.outputs if o]):
        return False
    graph.remove_node(node.name)
    for tensor in branch.initializer:
        graph.add_constant(tensor.name, numpy_helper.to_array(tensor))
    for index, proto in enumerate(branch.node):
        if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
            graph.add_constant(proto.output[0], constant_node_value(proto))
            continue
        inner = node_from_onnx(proto, graph.unique_name(proto.name or f"{node.name}_{proto.op_type}_{index}"))
        inner.implicit_inputs = outer_scope_reads(proto)
        graph.add_node(inner)
        _set_types(graph, inner)
    for out, result in zip(node.outputs, branch.output):
        if not out:
            continue
        identity = Node(name=graph.unique_name(f"{node.name}_{out}"), op_type="Identity",
                        inputs=[result.name], outputs=[out])
        graph.add_node(identity)
        _set_types(graph, identity)
    return True


def _set_types(graph: Graph, node: Node) -> None:
    for out, info in zip(node.outputs, infer_node(graph, node)):
        if out:
            graph.tensors[out] = info
