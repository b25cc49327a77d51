"""The pass manager and pipelines: order, fixed point, verification, failures that name the passes before, and the CLI flags."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import make_onnx
from onnx import helper

from rblnc.importers import import_onnx
from rblnc.ir import Graph, GraphError
from rblnc.passes import ALL_PASSES, PIPELINES, PassContext, PassFailure, PassManager, graph_pass, pipeline
from rblnc.passes.rewriting import RewriteError, rewrite_each

N = helper.make_node
rng = np.random.default_rng(0)


def conv_bn_relu_onnx() -> onnx.ModelProto:
    return make_onnx(
        [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         N("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]), N("Relu", ["n"], ["y"])],
        [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])],
        [("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)), ("g", np.ones(4, np.float32)),
         ("b", np.zeros(4, np.float32)), ("m", np.zeros(4, np.float32)), ("v", np.ones(4, np.float32))])


def test_levels_grow_and_every_level_ends_with_dead_code_elimination():
    names = {level: [p.name for p in passes] for level, passes in PIPELINES.items()}
    assert names[0] == ["fold_static_shapes", "fold_constants", "inline_known_branches", "refine_shapes", "remove_dead_nodes"]
    for level in (1, 2, 3):
        assert set(names[level - 1]) <= set(names[level]) and names[level][-1] == "remove_dead_nodes"
    assert "fuse_elementwise_chains" in names[3] and "fuse_elementwise_chains" not in names[2]
    o2 = names[2]
    assert o2.index("fold_batchnorm") < o2.index("fuse_bias") < o2.index("fuse_activation")
    assert o2.index("fuse_residual_add") < o2.index("fuse_activation")
    assert o2.index("recognize_silu") < o2.index("fuse_activation")
    assert o2.index("sink_transposes") < o2.index("fold_batchnorm")


def test_disable_by_name_and_unknown_names():
    assert "fold_batchnorm" not in [p.name for p in pipeline(2, {"fold_batchnorm"})]
    with pytest.raises(ValueError, match="unknown pass\\(es\\) to disable: fold_batchnrom; known: .*fold_batchnorm"):
        pipeline(2, {"fold_batchnrom"})
    with pytest.raises(ValueError, match="optimisation level must be one of"):
        pipeline(4)


def test_every_pass_has_a_description():
    assert all(p.description for p in ALL_PASSES.values())


def test_manager_repeats_until_nothing_changes_and_is_bounded():
    calls = []

    @graph_pass("always_changes")
    def always_changes(graph, ctx):
        calls.append(1)
        return 1

    report = PassManager([always_changes], max_iterations=3).run(Graph())
    assert report.iterations == 3 and len(calls) == 3 and report.stats["always_changes"].rewrites == 3

    g = import_onnx(conv_bn_relu_onnx())
    report = PassManager(pipeline(2)).run(g)
    assert report.iterations == 2  # one that changed the graph, one that found nothing left
    assert report.nodes_before == 3 and report.nodes_after == 1


def test_failing_pass_names_the_passes_run_before_it():
    @graph_pass("explodes")
    def explodes(graph, ctx):
        raise ValueError("boom")

    g = import_onnx(conv_bn_relu_onnx())
    with pytest.raises(PassFailure, match=r"pass 'explodes' failed in iteration 1: boom "
                                          r"\(passes run before it, latest last: fold_constants, fold_batchnorm\)"):
        PassManager([ALL_PASSES["fold_constants"], ALL_PASSES["fold_batchnorm"], explodes]).run(g)


def test_verify_each_catches_a_pass_that_breaks_the_ir():
    @graph_pass("breaks_ir")
    def breaks_ir(graph, ctx):
        next(iter(graph.nodes)).inputs[0] = "nowhere"
        return 1

    with pytest.raises(PassFailure, match="pass 'breaks_ir' failed.*the IR is broken after it: .*'nowhere' is never defined"):
        PassManager([breaks_ir], verify_each=True).run(import_onnx(conv_bn_relu_onnx()))


def test_a_rewrite_that_raises_names_the_node_and_its_source_ops():
    g = import_onnx(conv_bn_relu_onnx())
    PassManager(pipeline(2)).run(g)
    (fused,) = g.nodes

    def rule(graph, node, ctx):
        raise KeyError("missing")

    with pytest.raises(RewriteError, match=r"at Conv_0 \(ai.rblnc::FusedConv, from Conv_0, BatchNormalization_1, "
                                           r"Relu_2\): KeyError"):
        rewrite_each(g, PassContext(), rule)
    assert issubclass(RewriteError, GraphError)


def test_dump_after_a_pass_and_unknown_dump_names():
    dumps = []
    g = import_onnx(conv_bn_relu_onnx())
    PassManager(pipeline(2), dump_after=["fold_batchnorm"], on_dump=lambda name, text: dumps.append((name, text))).run(g)
    assert len(dumps) == 1 and dumps[0][0] == "fold_batchnorm"
    assert "BatchNormalization" not in dumps[0][1] and "Relu(" in dumps[0][1]
    with pytest.raises(ValueError, match="not in this pipeline: fuse_activation; it runs fold_static_shapes, fold_constants, inline_known_branches, refine_shapes, remove_dead_nodes"):
        PassManager(pipeline(0), dump_after=["fuse_activation"])


def test_report_lists_what_was_not_rewritten_and_why():
    g = import_onnx(make_onnx(
        [N("Conv", ["x", "w"], ["c"]), N("Relu", ["c"], ["r"]), N("Add", ["c", "r"], ["y"])],
        [("x", [1, 3, 4, 4])], [("y", [1, 2, 4, 4])], [("w", rng.standard_normal((2, 3, 1, 1)).astype(np.float32))]))
    report = PassManager(pipeline(2)).run(g)
    table = report.table()
    assert "fuse_activation" in table and "not rewritten (1):" in table
    assert "fuse_activation: Relu_1: not fused into Conv_0: its input is also read by Add_2" in table


def rblnc(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "rblnc.cli", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"rblnc {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def test_cli_pass_flags(tmp_path):
    onnx.save(conv_bn_relu_onnx(), tmp_path / "m.onnx")
    out = rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.rbln", "-O3", "--verify-each", "--pass-stats",
                "--dump-ir-after", "fuse_activation")
    assert "--- IR after fuse_activation ---" in out.stdout and "ai.rblnc::FusedConv(x, " in out.stdout
    assert "fold_batchnorm" in out.stdout and "nodes 3 -> 1 in 2 iteration(s)" in out.stdout
    report = json.loads(rblnc("inspect", tmp_path / "m.rbln", "--json").stdout)
    (op,) = report["partitions"][0]["ops"]
    assert op["op_type"] == "FusedConv" and op["source_ops"] == ["Conv_0", "BatchNormalization_1", "Relu_2"]
    assert "nodes: 3 before passes, 1 after" in rblnc("inspect", tmp_path / "m.rbln").stdout

    rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "d.rbln", "--disable-pass", "fuse_activation")
    report = json.loads(rblnc("inspect", tmp_path / "d.rbln", "--json").stdout)
    assert [o["op_type"] for o in report["partitions"][0]["ops"]] == ["Conv", "Relu"]

    bad = rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "e.rbln", "--disable-pass", "fuse_everything", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "unknown pass(es) to disable: fuse_everything" in bad.stderr
    bad = rblnc("compile", tmp_path / "m.onnx", "-o", tmp_path / "e.rbln", "-O0", "--dump-ir-after", "fold_batchnorm",
                check=False)
    assert bad.returncode == 1 and "not in this pipeline: fold_batchnorm" in bad.stderr
    assert not (tmp_path / "e.rbln").exists()


def test_the_irs_topological_order_is_networkx_lexicographical_sort_by_rank():
    import networkx as nx

    def reference(graph):
        rank = nx.get_node_attributes(graph.nx, "order")
        return list(nx.lexicographical_topological_sort(graph.nx, key=rank.__getitem__))

    g = import_onnx(conv_bn_relu_onnx())
    assert [n.name for n in g.topological_order()] == reference(g)
    PassManager(pipeline(1)).run(g)
    g2 = import_onnx(make_onnx(
        [N("Relu", ["x"], ["a"]), N("Sigmoid", ["x"], ["b"]), N("Add", ["a", "b"], ["c"]), N("Relu", ["c"], ["y"])],
        [("x", [4])], [("y", [4])]))
    PassManager(pipeline(3)).run(g2)  # fused nodes take fractional ranks
    assert [n.name for n in g2.topological_order()] == reference(g2)


def test_docs_list_every_pass():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "passes.md").read_text()
    assert not [name for name in ALL_PASSES if f"`{name}`" not in text]


def test_graphs_kept_at_another_opset_are_only_folded_and_cleaned():
    """Clip took its bounds as attributes before opset 11: reading it as opset 17 does would
    fuse Clip(0, 6) as an unbounded clip, so rules leave such graphs alone and say why."""
    from rblnc.ir import Node, TensorInfo

    g = Graph("old", opset=9)
    g.add_input("x", TensorInfo(np.dtype(np.float32), (1, 3, 4, 4)))
    g.add_constant("w", rng.standard_normal((2, 3, 1, 1)).astype(np.float32))
    g.add_node(Node("conv", "Conv", ["x", "w"], ["c"]), [TensorInfo(np.dtype(np.float32), (1, 2, 4, 4))])
    g.add_node(Node("clip", "Clip", ["c"], ["y"], {"min": 0.0, "max": 6.0}), [TensorInfo(np.dtype(np.float32), (1, 2, 4, 4))])
    g.outputs = ["y"]
    ctx = PassContext()
    report = PassManager(pipeline(3)).run(g, ctx)
    assert g.op_counts() == {"Conv": 1, "Clip": 1} and report.nodes_after == 2
    assert ("fuse_activation", "old", "left as is: the graph is at opset 9, the rewrites read ops as opset 17 defines them") \
        in ctx.notes
