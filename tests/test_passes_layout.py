"""Layout passes on tiny graphs: transpose sinking and cancellation (NHWC<->NCHW), Pad folding."""

from __future__ import annotations

import math

import numpy as np
from conftest import make_onnx
from onnx import helper

from rblnc.importers import import_onnx
from rblnc.passes import PassContext
from rblnc.passes.testing import rewrite_and_compare, run_passes

N = helper.make_node
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
rng = np.random.default_rng(0)


def graph_of(nodes, inputs, outputs, initializers=()):
    return import_onnx(make_onnx(nodes, inputs, outputs, initializers))


def weights(*shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.3


def tensorflow_style_convs():
    """NHWC model: x -> T(NCHW) -> Conv -> T(NHWC) -> BiasAdd -> Relu -> T(NCHW) -> Conv -> T(NHWC)."""
    return graph_of(
        [N("Transpose", ["x"], ["x_nchw"], perm=TO_NCHW), N("Conv", ["x_nchw", "w1"], ["c1"], pads=[1, 1, 1, 1]),
         N("Transpose", ["c1"], ["c1_nhwc"], perm=TO_NHWC), N("Add", ["c1_nhwc", "b1"], ["a1"]),
         N("Relu", ["a1"], ["r1"]), N("Transpose", ["r1"], ["r1_nchw"], perm=TO_NCHW),
         N("Conv", ["r1_nchw", "w2"], ["c2"]), N("Transpose", ["c2"], ["y"], perm=TO_NHWC)],
        [("x", [1, 8, 8, 3])], [("y", [1, 8, 8, 5])],
        [("w1", weights(4, 3, 3, 3)), ("b1", weights(4)), ("w2", weights(5, 4, 1, 1))])


def test_tensorflow_style_transposes_around_convs_cancel():
    g = tensorflow_style_convs()
    after, _ = rewrite_and_compare(g, ["sink_transposes", "collapse_transposes", "remove_dead_nodes"])
    assert g.op_counts()["Transpose"] == 4
    assert after.op_counts() == {"Transpose": 2, "Conv": 2, "Add": 1, "Relu": 1}
    assert after.producer("x_nchw").op_type == "Transpose"  # the input's and the output's remain
    assert after.producer("y").op_type == "Transpose"
    (add,) = [n for n in after.nodes if n.op_type == "Add"]
    bias = after.constants[add.inputs[1]]
    assert bias.shape == (1, 4, 1, 1)  # the NHWC bias now broadcasts over NCHW


def test_then_the_whole_level_2_pipeline_fuses_the_convs():
    g = tensorflow_style_convs()
    after, _ = rewrite_and_compare(g, 2)
    assert after.op_counts() == {"Transpose": 2, "ai.rblnc::FusedConv": 1, "Conv": 1}


def test_transposes_sink_through_concat_and_reductions():
    g = graph_of(
        [N("Transpose", ["a"], ["ta"], perm=TO_NHWC), N("Transpose", ["b"], ["tb"], perm=TO_NHWC),
         N("Concat", ["ta", "tb"], ["cat"], axis=3), N("ReduceMean", ["cat"], ["y"], axes=[1, 2], keepdims=0)],
        [("a", [1, 2, 4, 4]), ("b", [1, 3, 4, 4])], [("y", [1, 5])])
    after, _ = rewrite_and_compare(g, ["sink_transposes", "remove_dead_nodes"])
    assert after.op_counts() == {"Concat": 1, "ReduceMean": 1}  # the mean over H, W needs no layout
    mean = after.producer("y")
    assert mean.attrs["axes"] == [2, 3] and after.producer(mean.inputs[0]).attrs["axis"] == 1


def test_transpose_does_not_sink_past_an_op_with_a_plain_second_input():
    g = graph_of(
        [N("Transpose", ["x"], ["t"], perm=TO_NHWC), N("Add", ["t", "z"], ["y"])],
        [("x", [1, 2, 3, 4]), ("z", [1, 3, 4, 2])], [("y", [1, 3, 4, 2])])
    after, report = rewrite_and_compare(g, ["sink_transposes"])
    assert after.op_counts() == {"Transpose": 1, "Add": 1}
    assert report.stats["sink_transposes"].rewrites == 0


def test_transpose_pair_that_does_not_cancel_keeps_one_transpose():
    g = graph_of(
        [N("Transpose", ["x"], ["t"], perm=TO_NHWC), N("Relu", ["t"], ["r"]),
         N("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3])],
        [("x", [1, 2, 3, 4])], [("y", [1, 4, 3, 2])])
    after, _ = rewrite_and_compare(g, ["sink_transposes", "collapse_transposes", "remove_dead_nodes"])
    assert after.op_counts() == {"Relu": 1, "Transpose": 1}
    assert after.producer("y").attrs["perm"] == [0, 3, 2, 1]


def test_transpose_with_two_readers_stays():
    g = graph_of(
        [N("Transpose", ["x"], ["t"], perm=TO_NHWC), N("Relu", ["t"], ["y1"]), N("Sigmoid", ["t"], ["y2"])],
        [("x", [1, 2, 3, 4])], [("y1", [1, 3, 4, 2]), ("y2", [1, 3, 4, 2])])
    after, _ = rewrite_and_compare(g, ["sink_transposes"])
    assert after.producer("y1").inputs == ["t"] and after.op_counts()["Transpose"] == 1


def test_zero_pad_folds_into_conv_and_average_pool():
    g = graph_of(
        [N("Pad", ["x", "pads"], ["p"]), N("Conv", ["p", "w"], ["c"], pads=[0, 1, 0, 1]),
         N("Pad", ["c", "pads"], ["q"]),
         N("AveragePool", ["q"], ["y"], kernel_shape=[3, 3], count_include_pad=1)],
        [("x", [1, 2, 6, 6])], [("y", [1, 3, 6, 8])],
        [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), ("w", weights(3, 2, 3, 3))])
    after, _ = rewrite_and_compare(g, ["fold_pads", "remove_dead_nodes"])
    assert after.op_counts() == {"Conv": 1, "AveragePool": 1}
    assert after.producer("c").attrs["pads"] == [1, 2, 1, 2]
    assert after.producer("y").attrs["pads"] == [1, 1, 1, 1]
    assert set(after.producer("c").source_ops) == {"Pad_0", "Conv_1"}


def test_pads_that_must_not_fold():
    g = graph_of(
        [N("Pad", ["x", "pads", "one"], ["p1"]), N("Conv", ["p1", "w"], ["y1"]),                 # pads with 1
         N("Pad", ["x", "pads"], ["p2"]), N("AveragePool", ["p2"], ["y2"], kernel_shape=[3, 3]),  # excludes pads
         N("Pad", ["x", "pads"], ["p3"]), N("MaxPool", ["p3"], ["y3"], kernel_shape=[3, 3]),      # zeros, not -inf
         N("Pad", ["x", "channel_pads"], ["p4"]), N("Relu", ["p4"], ["y4"])],
        [("x", [1, 2, 6, 6])],
        [("y1", [1, 3, 6, 6]), ("y2", [1, 2, 6, 6]), ("y3", [1, 2, 6, 6]), ("y4", [1, 4, 6, 6])],
        [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), ("one", np.array(1.0, np.float32)),
         ("channel_pads", np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)), ("w", weights(3, 2, 3, 3))])
    ctx = PassContext()
    before = g.op_counts()
    run_passes(g, ["fold_pads"], ctx=ctx)
    assert g.op_counts() == before
    reasons = " | ".join(why for _, _, why in ctx.notes)
    assert "pads with zeros, this Pad with 1" in reasons
    assert "count_include_pad=0" in reasons and "MaxPool pads with -inf" in reasons


def test_minus_infinity_pad_folds_into_max_pool():
    g = graph_of([N("Pad", ["x", "pads", "low"], ["p"]), N("MaxPool", ["p"], ["y"], kernel_shape=[3, 3])],
                 [("x", [1, 2, 6, 6])], [("y", [1, 2, 6, 6])],
                 [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), ("low", np.array(-math.inf, np.float32))])
    after, _ = rewrite_and_compare(g, ["fold_pads", "remove_dead_nodes"])
    assert after.op_counts() == {"MaxPool": 1} and after.producer("y").attrs["pads"] == [1, 1, 1, 1]


def test_zero_pad_of_relu_output_folds_into_max_pool_only_while_every_window_sees_data():
    g = graph_of(
        [N("Relu", ["x"], ["r"]), N("Pad", ["r", "pads"], ["p"]),
         N("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
         N("Pad", ["r", "wide"], ["q"]), N("MaxPool", ["q"], ["z"], kernel_shape=[2, 2])],
        [("x", [1, 2, 7, 7])], [("y", [1, 2, 4, 4]), ("z", [1, 2, 8, 8])],
        [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), ("wide", np.array([0, 0, 2, 2, 0, 0, 0, 0], np.int64))])
    after, _ = rewrite_and_compare(g, ["fold_pads", "remove_dead_nodes"])
    assert after.producer("y").inputs == ["r"] and after.producer("y").attrs["pads"] == [1, 1, 1, 1]
    assert after.producer("z").inputs == ["q"]  # a 2x2 window inside the 2-wide zero border has no data
