"""The graph IR: building, rewiring, verification, order and the text dump."""

from __future__ import annotations

import numpy as np
import pytest

from rblnc.ir import Graph, GraphError, Node, TensorInfo, dump, infer_shapes, verify_graph

F32 = np.dtype(np.float32)


def small_graph() -> Graph:
    g = Graph("g")
    g.add_input("x", TensorInfo(F32, (1, 4)))
    g.add_constant("w", np.ones((4, 2), np.float32))
    g.add_node(Node("mm", "MatMul", ["x", "w"], ["h"]))
    g.add_node(Node("relu", "Relu", ["h"], ["y"]))
    g.outputs = ["y"]
    infer_shapes(g)
    return g


def test_shapes_are_inferred_and_graph_verifies():
    g = small_graph()
    verify_graph(g)
    assert g.tensors["h"] == TensorInfo(F32, (1, 2)) and g.tensors["y"].shape == (1, 2)


def test_edges_follow_inputs():
    g = small_graph()
    assert list(g.nx.edges(keys=True)) == [("mm", "relu", "h")]
    assert g.producer("h").name == "mm" and [n.name for n in g.consumers("h")] == ["relu"]


def test_replace_all_uses_rewires_consumers_and_outputs():
    g = small_graph()
    g.add_node(Node("sig", "Sigmoid", ["h"], ["s"]), [TensorInfo(F32, (1, 2))])
    g.replace_all_uses("y", "s")
    assert g.outputs == ["s"]
    g.remove_node("relu")
    verify_graph(g)
    assert [n.name for n in g.topological_order()] == ["mm", "sig"]


def test_defining_a_tensor_twice_is_refused():
    g = small_graph()
    with pytest.raises(GraphError, match="defined twice"):
        g.add_node(Node("again", "Relu", ["x"], ["h"]))


def test_verifier_catches_dangling_input():
    g = small_graph()
    g.node("relu").inputs[0] = "nowhere"
    with pytest.raises(GraphError, match="input 'nowhere' is never defined"):
        verify_graph(g)


def test_topological_order_is_deterministic():
    g = Graph()
    g.add_input("x", TensorInfo(F32, (2,)))
    for name in ["c", "a", "b"]:
        g.add_node(Node(name, "Relu", ["x"], [f"{name}_out"]))
    assert [n.name for n in g.topological_order()] == ["c", "a", "b"]


def test_copy_is_independent():
    g = small_graph()
    h = g.copy()
    h.remove_node("relu")
    assert "relu" in g.nx and "relu" not in h.nx
    verify_graph(g)


def test_dump_shows_types_and_ops():
    text = dump(small_graph())
    assert "input  x: float32[1,4]" in text and "h: float32[1,2] = MatMul(x, w)" in text and "return y" in text
