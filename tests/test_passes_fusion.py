"""Fusion passes on tiny graphs: BatchNorm folding, MatMul+Add, bias, residual Add, activations, elementwise chains."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_onnx
from onnx import helper

from rblnc.importers import import_onnx
from rblnc.passes import PassContext
from rblnc.passes.testing import rewrite_and_compare, run_passes

N = helper.make_node
rng = np.random.default_rng(0)


def graph_of(nodes, inputs, outputs, initializers=()):
    return import_onnx(make_onnx(nodes, inputs, outputs, initializers))


def weights(*shape, scale=0.3):
    return rng.standard_normal(shape).astype(np.float32) * scale


def bn_params(prefix, channels):
    return [(f"{prefix}_gamma", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
            (f"{prefix}_beta", weights(channels)),
            (f"{prefix}_mean", weights(channels)),
            (f"{prefix}_var", rng.uniform(0.5, 1.5, channels).astype(np.float32))]


def bn(x, y, prefix="bn"):
    return N("BatchNormalization", [x, f"{prefix}_gamma", f"{prefix}_beta", f"{prefix}_mean", f"{prefix}_var"], [y],
             epsilon=1e-3)


def test_batchnorm_folds_into_conv_with_and_without_bias():
    g = graph_of(
        [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), bn("c1", "n1", "bn1"),
         N("Conv", ["n1", "w2"], ["c2"]), bn("c2", "y", "bn2")],
        [("x", [1, 3, 6, 6])], [("y", [1, 5, 6, 6])],
        [("w1", weights(4, 3, 3, 3)), ("b1", weights(4)), ("w2", weights(5, 4, 1, 1)),
         *bn_params("bn1", 4), *bn_params("bn2", 5)])
    after, report = rewrite_and_compare(g, ["fold_batchnorm", "remove_dead_nodes"])
    assert g.op_counts() == {"Conv": 2, "BatchNormalization": 2}
    assert after.op_counts() == {"Conv": 2}
    conv = after.producer("y")
    assert conv.source_ops == ["Conv_2", "BatchNormalization_3"] and len(conv.inputs) == 3
    assert report.stats["fold_batchnorm"].rewrites == 2


def test_batchnorm_folds_into_grouped_conv_transpose_and_gemm():
    g = graph_of(
        [N("ConvTranspose", ["x", "wt"], ["t"], group=2, strides=[2, 2]), bn("t", "n", "bnt"),
         N("Flatten", ["n"], ["f"]), N("Gemm", ["f", "wg", "bg"], ["g"], transB=1, alpha=0.5, beta=2.0),
         bn("g", "y", "bng")],
        [("x", [1, 4, 3, 3])], [("y", [1, 7])],
        [("wt", weights(4, 3, 2, 2)), *bn_params("bnt", 6), ("wg", weights(7, 216)), ("bg", weights(7)),
         *bn_params("bng", 7)])
    after, _ = rewrite_and_compare(g, ["fold_batchnorm", "remove_dead_nodes"], rtol=1e-5, atol=1e-5)
    assert after.op_counts() == {"ConvTranspose": 1, "Flatten": 1, "Gemm": 1}


def test_batchnorm_does_not_fold_when_the_conv_output_is_read_twice():
    g = graph_of(
        [N("Conv", ["x", "w"], ["c"]), bn("c", "n"), N("Add", ["n", "c"], ["y"])],
        [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], [("w", weights(4, 3, 1, 1)), *bn_params("bn", 4)])
    ctx = PassContext()
    run_passes(g, ["fold_batchnorm"], ctx=ctx)
    assert g.op_counts() == {"Conv": 1, "BatchNormalization": 1, "Add": 1}
    assert ctx.notes == [("fold_batchnorm", "BatchNormalization_1", "not folded into Conv_0: its output is also read by Add_2")]


def test_batchnorm_whose_output_is_read_twice_folds_but_its_activation_does_not_fuse():
    """BN folds (its output is still produced, by the Conv now); the Relu cannot take the Conv,
    whose output the Add also reads."""
    g = graph_of(
        [N("Conv", ["x", "w"], ["c"]), bn("c", "n"), N("Relu", ["n"], ["r"]), N("Add", ["n", "r"], ["y"])],
        [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], [("w", weights(4, 3, 1, 1)), *bn_params("bn", 4)])
    after, _ = rewrite_and_compare(g, 2)
    assert after.op_counts() == {"Conv": 1, "Relu": 1, "Add": 1}
    assert after.producer("n").op_type == "Conv"


def test_matmul_add_becomes_gemm_and_batched_matmul_takes_its_bias():
    g = graph_of(
        [N("MatMul", ["a", "w"], ["m"]), N("Add", ["m", "b"], ["y1"]),
         N("MatMul", ["s", "w3"], ["m3"]), N("Add", ["b3", "m3"], ["y2"])],
        [("a", [2, 4]), ("s", [2, 5, 4])], [("y1", [2, 3]), ("y2", [2, 5, 6])],
        [("w", weights(4, 3)), ("b", weights(3)), ("w3", weights(4, 6)), ("b3", weights(6))])
    after, _ = rewrite_and_compare(g, ["fuse_matmul_add", "fuse_matmul_bias"])
    assert after.op_counts() == {"Gemm": 1, "ai.rblnc::FusedMatMul": 1}


def test_matmul_add_that_broadcasts_the_product_is_not_fused():
    g = graph_of([N("MatMul", ["a", "w"], ["m"]), N("Add", ["m", "b"], ["y"])],
                 [("a", [2, 4])], [("y", [5, 2, 3])], [("w", weights(4, 3)), ("b", weights(5, 2, 3))])
    after, _ = rewrite_and_compare(g, ["fuse_matmul_add", "fuse_matmul_bias"])
    assert after.op_counts() == {"MatMul": 1, "Add": 1}


def test_per_channel_add_and_sub_become_conv_bias_but_a_spatial_addend_does_not():
    g = graph_of(
        [N("Conv", ["x", "w"], ["c"]), N("Add", ["c", "b"], ["a"]), N("Conv", ["a", "w2", "b2"], ["c2"]),
         N("Sub", ["c2", "s"], ["d"]), N("Conv", ["d", "w3"], ["c3"]), N("Add", ["c3", "spatial"], ["y"])],
        [("x", [1, 3, 4, 4])], [("y", [1, 2, 4, 4])],
        [("w", weights(4, 3, 1, 1)), ("b", weights(1, 4, 1, 1)), ("w2", weights(4, 4, 1, 1)), ("b2", weights(4)),
         ("s", weights(4, 1, 1)), ("w3", weights(2, 4, 1, 1)), ("spatial", weights(1, 1, 4, 4))])
    ctx = PassContext()
    after, _ = rewrite_and_compare(g, ["fuse_bias", "remove_dead_nodes"])
    assert after.op_counts() == {"Conv": 3, "Add": 1}
    run_passes(g, ["fuse_bias"], ctx=ctx)
    assert any("varies along more than the channel axis" in why for _, _, why in ctx.notes)


def test_gemm_plus_constant_folds_into_its_c():
    g = graph_of([N("Gemm", ["a", "w", "c"], ["g"], beta=0.5), N("Add", ["g", "d"], ["y"])],
                 [("a", [2, 4])], [("y", [2, 3])], [("w", weights(4, 3)), ("c", weights(3)), ("d", weights(2, 3))])
    after, _ = rewrite_and_compare(g, ["fuse_bias"])
    assert after.op_counts() == {"Gemm": 1}


def resnet_block(with_downsample: bool):
    nodes = [N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), bn("c1", "n1", "bn1"), N("Relu", ["n1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), bn("c2", "n2", "bn2")]
    inits = [("w1", weights(4, 4, 3, 3)), ("w2", weights(4, 4, 3, 3)), *bn_params("bn1", 4), *bn_params("bn2", 4)]
    skip = "x"
    if with_downsample:
        nodes += [N("Conv", ["x", "wd"], ["cd"]), bn("cd", "nd", "bnd")]
        inits += [("wd", weights(4, 4, 1, 1)), *bn_params("bnd", 4)]
        skip = "nd"
    nodes += [N("Add", ["n2", skip], ["s"]), N("Relu", ["s"], ["y"])]
    return graph_of(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 4, 5, 5])], inits)


@pytest.mark.parametrize("with_downsample", [False, True])
def test_resnet_block_becomes_one_op_per_conv(with_downsample):
    g = resnet_block(with_downsample)
    after, _ = rewrite_and_compare(g, 2)
    convs = 3 if with_downsample else 2
    assert len(after) == convs
    last = after.producer("y")
    assert last.qualified_type == "ai.rblnc::FusedConv" and last.attrs["activation"] == "Relu"
    assert last.inputs[3] in (["x"] if not with_downsample else [after.producer("nd").outputs[0]])
    assert {"Add_", "Relu_"} <= {op.rstrip("0123456789") for op in last.source_ops}


@pytest.mark.parametrize("activation,attrs,extra,expected", [
    ("Relu", {}, [], ("Relu", [])),
    ("Sigmoid", {}, [], ("Sigmoid", [])),
    ("Tanh", {}, [], ("Tanh", [])),
    ("LeakyRelu", {"alpha": 0.2}, [], ("LeakyRelu", [0.2])),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, [], ("HardSigmoid", [0.25, 0.4])),
    ("HardSwish", {}, [], ("HardSwish", [])),
    ("Clip", {}, ["zero", "six"], ("Clip", [0.0, 6.0])),
])
@pytest.mark.parametrize("op", ["Conv", "Gemm", "MatMul"])
def test_each_activation_fuses_into_conv_gemm_and_matmul(op, activation, attrs, extra, expected):
    if op == "Conv":
        core, shapes, w = N("Conv", ["x", "w"], ["c"]), ([1, 3, 4, 4], [1, 2, 4, 4]), weights(2, 3, 1, 1)
    else:
        core, shapes, w = N(op, ["x", "w"], ["c"]), ([3, 5], [3, 2]), weights(5, 2)
    g = graph_of([core, N(activation, ["c", *extra], ["y"], **attrs)], [("x", shapes[0])], [("y", shapes[1])],
                 [("w", w * 5), ("zero", np.array(0, np.float32)), ("six", np.array(6, np.float32))])
    after, _ = rewrite_and_compare(g, ["fuse_activation", "remove_dead_nodes"])
    (fused,) = after.nodes
    assert fused.qualified_type == f"ai.rblnc::Fused{op}"
    assert (fused.attrs["activation"], pytest.approx(fused.attrs["activation_params"])) == expected


def test_activation_with_a_second_reader_of_its_input_does_not_fuse():
    g = graph_of([N("Conv", ["x", "w"], ["c"]), N("Relu", ["c"], ["r"]), N("Add", ["c", "r"], ["y"])],
                 [("x", [1, 3, 4, 4])], [("y", [1, 2, 4, 4])], [("w", weights(2, 3, 1, 1))])
    ctx = PassContext()
    after, _ = rewrite_and_compare(g, ["fuse_activation"])
    assert after.op_counts() == {"Conv": 1, "Relu": 1, "Add": 1}
    run_passes(g, ["fuse_activation"], ctx=ctx)
    assert ctx.notes == [("fuse_activation", "Relu_1", "not fused into Conv_0: its input is also read by Add_2")]


def test_clip_with_computed_bounds_does_not_fuse():
    g = graph_of([N("Conv", ["x", "w"], ["c"]), N("Clip", ["c", "low"], ["y"])],
                 [("x", [1, 3, 4, 4]), ("low", [])], [("y", [1, 2, 4, 4])], [("w", weights(2, 3, 1, 1))])
    after, _ = rewrite_and_compare(g, ["fuse_activation"])
    assert after.op_counts() == {"Conv": 1, "Clip": 1}


def test_add_and_activation_without_a_conv_become_one_elementwise_op():
    g = graph_of([N("Add", ["a", "b"], ["s"]), N("Relu", ["s"], ["y"])], [("a", [2, 3]), ("b", [2, 3])], [("y", [2, 3])])
    after, _ = rewrite_and_compare(g, ["fuse_residual_add"])
    (fused,) = after.nodes
    assert fused.qualified_type == "ai.rblnc::FusedElementwise" and fused.attrs["ops"] == ["Add", "Relu"]


def test_elementwise_chain_becomes_one_op_with_operands_in_order():
    g = graph_of(
        [N("Mul", ["x", "scale"], ["a"]), N("Sub", ["shift", "a"], ["b"]), N("Exp", ["b"], ["c"]),
         N("Div", ["c", "z"], ["d"]), N("LeakyRelu", ["d"], ["y"], alpha=0.3)],
        [("x", [2, 3]), ("z", [2, 3])], [("y", [2, 3])],
        [("scale", weights(3)), ("shift", weights(2, 1))])
    after, _ = rewrite_and_compare(g, ["fuse_elementwise_chains"])
    (fused,) = after.nodes
    assert fused.attrs["ops"] == ["Mul", "Sub", "Exp", "Div", "LeakyRelu"]
    assert fused.inputs == ["x", "scale", "shift", "z"] and fused.attrs["swapped"] == [0, 1, 0, 0, 0]
    assert fused.attrs["params"] == pytest.approx([0.3])
    assert len(fused.source_ops) == 5


def test_elementwise_chain_stops_at_a_value_read_twice():
    g = graph_of([N("Relu", ["x"], ["a"]), N("Exp", ["a"], ["b"]), N("Add", ["a", "b"], ["y"])],
                 [("x", [4])], [("y", [4])])
    after, _ = rewrite_and_compare(g, ["fuse_elementwise_chains"])
    assert after.op_counts() == {"Relu": 1, "ai.rblnc::FusedElementwise": 1}  # Exp + Add joined


def test_tf2onnx_batchnorm_as_mul_and_add_folds_into_conv():
    g = graph_of(
        [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("Mul", ["c", "s"], ["m"]), N("Add", ["m", "t"], ["a"]),
         N("Relu", ["a"], ["y"])],
        [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])],
        [("w", weights(4, 3, 3, 3)), ("s", rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)),
         ("t", weights(4, 1, 1))])
    after, _ = rewrite_and_compare(g, 2)
    (fused,) = after.nodes
    assert fused.op_type == "FusedConv" and fused.attrs["activation"] == "Relu" and len(fused.source_ops) == 4


def test_a_spatially_varying_factor_is_not_folded():
    g = graph_of([N("Conv", ["x", "w"], ["c"]), N("Mul", ["c", "s"], ["y"])],
                 [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])],
                 [("w", weights(4, 3, 1, 1)), ("s", weights(1, 1, 4, 4))])
    ctx = PassContext()
    after, _ = rewrite_and_compare(g, ["fold_channel_scale"])
    assert after.op_counts() == {"Conv": 1, "Mul": 1}
    run_passes(g, ["fold_channel_scale"], ctx=ctx)
    assert "varies along more than the channel axis" in ctx.notes[0][2]


def test_standalone_batchnorm_joins_the_elementwise_chain_at_level_3():
    """Pre-activation (DenseNet): Concat -> BN -> Relu -> Conv; no Conv can take the BN."""
    g = graph_of([N("Concat", ["a", "b"], ["c"], axis=1), bn("c", "n"), N("Relu", ["n"], ["r"]),
                  N("Conv", ["r", "w"], ["y"])],
                 [("a", [1, 2, 4, 4]), ("b", [1, 2, 4, 4])], [("y", [1, 3, 4, 4])],
                 [*bn_params("bn", 4), ("w", weights(3, 4, 1, 1))])
    at_2, _ = rewrite_and_compare(g, 2)
    assert at_2.op_counts() == {"Concat": 1, "BatchNormalization": 1, "Relu": 1, "Conv": 1}
    at_3, _ = rewrite_and_compare(g, 3)
    assert at_3.op_counts() == {"Concat": 1, "ai.rblnc::FusedElementwise": 1, "Conv": 1}
    (chain,) = [n for n in at_3.nodes if n.op_type == "FusedElementwise"]
    assert chain.attrs["ops"] == ["Mul", "Add", "Relu"] and chain.source_ops == ["BatchNormalization_1", "Relu_2"]
