"""Recognition of decomposed SiLU, GELU, HardSwish, LayerNorm and Softmax, hand-built and as torch exports them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import make_onnx
from onnx import helper

from rblnc.importers import import_onnx
from rblnc.passes.testing import rewrite_and_compare

N = helper.make_node
rng = np.random.default_rng(0)


def graph_of(nodes, inputs, outputs, initializers=()):
    return import_onnx(make_onnx(nodes, inputs, outputs, initializers))


def scalar(value):
    return np.array(value, np.float32)


def test_silu_either_operand_order():
    g = graph_of([N("Sigmoid", ["x"], ["s"]), N("Mul", ["s", "x"], ["a"]),
                  N("Sigmoid", ["a"], ["t"]), N("Mul", ["a", "t"], ["y"])],
                 [("x", [2, 8])], [("y", [2, 8])])
    after, _ = rewrite_and_compare(g, ["recognize_silu"])
    assert after.op_counts() == {"ai.rblnc::SiLU": 2}


def test_sigmoid_times_another_tensor_is_not_silu():
    g = graph_of([N("Sigmoid", ["x"], ["s"]), N("Mul", ["s", "z"], ["y"])], [("x", [4]), ("z", [4])], [("y", [4])])
    after, _ = rewrite_and_compare(g, ["recognize_silu"])
    assert after.op_counts() == {"Sigmoid": 1, "Mul": 1}


GELU_TAILS = {
    # (1 + erf) * x * 0.5, as torch exports it
    "x_then_half": lambda: [N("Mul", ["x", "p"], ["m"]), N("Mul", ["m", "half"], ["y"])],
    "half_then_x": lambda: [N("Mul", ["p", "half"], ["m"]), N("Mul", ["x", "m"], ["y"])],
    "half_x_first": lambda: [N("Mul", ["half", "x"], ["h"]), N("Mul", ["h", "p"], ["y"])],
}


@pytest.mark.parametrize("tail", list(GELU_TAILS))
@pytest.mark.parametrize("scaled_by", ["Div", "Mul"])
def test_gelu_erf_forms(tail, scaled_by):
    k = math.sqrt(2) if scaled_by == "Div" else 1 / math.sqrt(2)
    g = graph_of([N(scaled_by, ["x", "k"], ["d"]), N("Erf", ["d"], ["e"]), N("Add", ["e", "one"], ["p"]),
                  *GELU_TAILS[tail]()],
                 [("x", [2, 16])], [("y", [2, 16])], [("k", scalar(k)), ("one", scalar(1)), ("half", scalar(0.5))])
    after, _ = rewrite_and_compare(g, ["recognize_gelu"])
    (gelu,) = after.nodes
    assert gelu.qualified_type == "ai.rblnc::Gelu" and gelu.attrs["approximate"] == "none" and len(gelu.source_ops) == 5


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_gelu_tanh_form(cube):
    cube_nodes = ([N("Pow", ["x", "three"], ["c"])] if cube == "pow"
                  else [N("Mul", ["x", "x"], ["sq"]), N("Mul", ["sq", "x"], ["c"])])
    g = graph_of([*cube_nodes, N("Mul", ["c", "k1"], ["ck"]), N("Add", ["x", "ck"], ["inner"]),
                  N("Mul", ["inner", "k2"], ["arg"]), N("Tanh", ["arg"], ["t"]), N("Add", ["t", "one"], ["p"]),
                  N("Mul", ["x", "half"], ["h"]), N("Mul", ["h", "p"], ["y"])],
                 [("x", [2, 16])], [("y", [2, 16])],
                 [("three", scalar(3)), ("k1", scalar(0.044715)), ("k2", scalar(math.sqrt(2 / math.pi))),
                  ("one", scalar(1)), ("half", scalar(0.5))])
    after, _ = rewrite_and_compare(g, ["recognize_gelu"])
    (gelu,) = after.nodes
    assert gelu.attrs["approximate"] == "tanh"


def test_gelu_with_an_intermediate_read_elsewhere_is_left_alone():
    g = graph_of([N("Div", ["x", "k"], ["d"]), N("Erf", ["d"], ["e"]), N("Add", ["e", "one"], ["p"]),
                  N("Mul", ["x", "p"], ["m"]), N("Mul", ["m", "half"], ["y"]), N("Relu", ["e"], ["z"])],
                 [("x", [8])], [("y", [8]), ("z", [8])],
                 [("k", scalar(math.sqrt(2))), ("one", scalar(1)), ("half", scalar(0.5))])
    after, _ = rewrite_and_compare(g, ["recognize_gelu"])
    assert "ai.rblnc::Gelu" not in after.op_counts()


def test_gelu_with_wrong_constant_is_not_gelu():
    g = graph_of([N("Div", ["x", "k"], ["d"]), N("Erf", ["d"], ["e"]), N("Add", ["e", "one"], ["p"]),
                  N("Mul", ["x", "p"], ["m"]), N("Mul", ["m", "half"], ["y"])],
                 [("x", [8])], [("y", [8])], [("k", scalar(1.5)), ("one", scalar(1)), ("half", scalar(0.5))])
    after, _ = rewrite_and_compare(g, ["recognize_gelu"])
    assert after.op_counts() == g.op_counts()


HARDSWISH_FORMS = {
    "hardsigmoid": lambda: [N("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5), N("Mul", ["x", "h"], ["y"])],
    "div_after": lambda: [N("Add", ["x", "three"], ["a"]), N("Clip", ["a", "zero", "six"], ["c"]),
                          N("Mul", ["x", "c"], ["m"]), N("Div", ["m", "six"], ["y"])],
    "times_sixth": lambda: [N("Add", ["three", "x"], ["a"]), N("Clip", ["a", "zero", "six"], ["c"]),
                            N("Mul", ["c", "x"], ["m"]), N("Mul", ["sixth", "m"], ["y"])],
    "gate_first": lambda: [N("Add", ["x", "three"], ["a"]), N("Clip", ["a", "zero", "six"], ["c"]),
                           N("Div", ["c", "six"], ["g"]), N("Mul", ["g", "x"], ["y"])],
}


@pytest.mark.parametrize("form", list(HARDSWISH_FORMS))
def test_hardswish_forms(form):
    g = graph_of(HARDSWISH_FORMS[form](), [("x", [2, 16])], [("y", [2, 16])],
                 [("three", scalar(3)), ("zero", scalar(0)), ("six", scalar(6)), ("sixth", scalar(1 / 6))])
    after, _ = rewrite_and_compare(g, ["recognize_hardswish", "remove_dead_nodes"])
    assert after.op_counts() == {"HardSwish": 1}


def test_se_gate_times_another_tensor_is_not_hardswish():
    g = graph_of([N("HardSigmoid", ["z"], ["h"], alpha=1 / 6, beta=0.5), N("Mul", ["x", "h"], ["y"])],
                 [("x", [4]), ("z", [4])], [("y", [4])])
    after, _ = rewrite_and_compare(g, ["recognize_hardswish"])
    assert after.op_counts() == {"HardSigmoid": 1, "Mul": 1}


def layer_norm_nodes(square="Pow", affine=True, divide=True):
    nodes = [N("ReduceMean", ["x"], ["mu"], axes=[-1]), N("Sub", ["x", "mu"], ["d"]),
             N("Pow", ["d", "two"], ["sq"]) if square == "Pow" else N("Mul", ["d", "d"], ["sq"]),
             N("ReduceMean", ["sq"], ["var"], axes=[-1]), N("Add", ["var", "eps"], ["ve"]),
             N("Sqrt", ["ve"], ["sd"])]
    out = "y" if not affine else "n"
    nodes += ([N("Div", ["d", "sd"], [out])] if divide
              else [N("Reciprocal", ["sd"], ["inv"]), N("Mul", ["d", "inv"], [out])])
    if affine:
        nodes += [N("Mul", ["n", "gamma"], ["g"]), N("Add", ["g", "beta"], ["y"])]
    return nodes


LN_CONSTANTS = [("two", scalar(2)), ("eps", scalar(1e-5)), ("gamma", rng.uniform(0.5, 1.5, 16).astype(np.float32)),
                ("beta", rng.standard_normal(16).astype(np.float32))]


@pytest.mark.parametrize("square,affine,divide", [("Pow", True, True), ("Mul", False, True), ("Pow", True, False)])
def test_layer_norm_forms(square, affine, divide):
    g = graph_of(layer_norm_nodes(square, affine, divide), [("x", [2, 5, 16])], [("y", [2, 5, 16])], LN_CONSTANTS)
    after, _ = rewrite_and_compare(g, ["recognize_layer_norm", "remove_dead_nodes"], rtol=1e-4, atol=1e-5)
    (ln,) = after.nodes
    assert ln.op_type == "LayerNormalization" and ln.attrs["axis"] == 2
    assert ln.attrs["epsilon"] == pytest.approx(1e-5)
    assert len(ln.inputs) == (3 if affine else 2)


def test_layer_norm_over_a_leading_axis_is_not_recognized():
    nodes = layer_norm_nodes()
    nodes[0] = N("ReduceMean", ["x"], ["mu"], axes=[1])
    nodes[3] = N("ReduceMean", ["sq"], ["var"], axes=[1])
    g = graph_of(nodes, [("x", [2, 16, 16])], [("y", [2, 16, 16])], LN_CONSTANTS)
    after, _ = rewrite_and_compare(g, ["recognize_layer_norm"], rtol=1e-4)
    assert "LayerNormalization" not in after.op_counts()


@pytest.mark.parametrize("with_max", [True, False])
def test_softmax_forms(with_max):
    head = ([N("ReduceMax", ["x"], ["mx"], axes=[1]), N("Sub", ["x", "mx"], ["z"]), N("Exp", ["z"], ["e"])]
            if with_max else [N("Exp", ["x"], ["e"])])
    g = graph_of([*head, N("ReduceSum", ["e", "axes"], ["s"]), N("Div", ["e", "s"], ["y"])],
                 [("x", [2, 6, 3])], [("y", [2, 6, 3])], [("axes", np.array([1], np.int64))])
    after, _ = rewrite_and_compare(g, ["recognize_softmax", "remove_dead_nodes"])
    (softmax,) = after.nodes
    assert softmax.op_type == "Softmax" and softmax.attrs["axis"] == 1


def test_softmax_with_mismatched_axes_is_not_recognized():
    g = graph_of([N("ReduceMax", ["x"], ["mx"], axes=[2]), N("Sub", ["x", "mx"], ["z"]), N("Exp", ["z"], ["e"]),
                  N("ReduceSum", ["e", "axes"], ["s"]), N("Div", ["e", "s"], ["y"])],
                 [("x", [2, 6, 3])], [("y", [2, 6, 3])], [("axes", np.array([1], np.int64))])
    after, _ = rewrite_and_compare(g, ["recognize_softmax"])
    assert "Softmax" not in after.op_counts()


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)

    def forward(self, x):
        return self.norm(torch.nn.functional.gelu(self.fc(x))) * torch.nn.functional.hardswish(x).sum()


def test_forms_torch_exports_at_an_old_opset_are_recognized(tmp_path):
    """At opset 12 torch writes LayerNorm and GELU as arithmetic and hardswish as HardSigmoid * x."""
    torch.manual_seed(0)
    path = tmp_path / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Block().eval(), (torch.randn(2, 4, 16),), str(path), dynamo=False, opset_version=12)
    g = import_onnx(path)
    assert {"Erf", "ReduceMean", "Sqrt", "HardSigmoid"} <= set(g.op_counts())
    after, _ = rewrite_and_compare(g, 2, rtol=1e-4, atol=1e-5)
    counts = after.op_counts()
    assert counts.get("LayerNormalization") == 1 and counts.get("HardSwish") == 1
    assert counts.get("ai.rblnc::FusedMatMul") == 1 and "Erf" not in counts
    (fc,) = [n for n in after.nodes if n.op_type == "FusedMatMul"]
    assert fc.attrs["activation"] == "Gelu"


@pytest.mark.parametrize("negation", ["neg_then_scale", "negative_scale"])
def test_gelu_erfc_form_from_tensorflow(negation):
    """TF's exact GELU is 0.5 x erfc(-x / sqrt 2); our tf2onnx handler writes erfc(z) as 1 - Erf(z)."""
    head = ([N("Neg", ["x"], ["nx"]), N("Mul", ["nx", "k"], ["d"])] if negation == "neg_then_scale"
            else [N("Mul", ["x", "k"], ["d"])])
    k = 1 / math.sqrt(2) if negation == "neg_then_scale" else -1 / math.sqrt(2)
    g = graph_of([*head, N("Erf", ["d"], ["e"]), N("Sub", ["one", "e"], ["p"]),
                  N("Mul", ["half", "x"], ["h"]), N("Mul", ["h", "p"], ["y"])],
                 [("x", [2, 16])], [("y", [2, 16])], [("k", scalar(k)), ("one", scalar(1)), ("half", scalar(0.5))])
    after, _ = rewrite_and_compare(g, ["recognize_gelu"])
    (gelu,) = after.nodes
    assert gelu.qualified_type == "ai.rblnc::Gelu" and gelu.attrs["approximate"] == "none"


def test_one_plus_erf_of_minus_x_is_not_gelu():
    """1 + Erf(-x / sqrt 2) is 0.5 x erfc(x / sqrt 2)-shaped, not GELU: only 1 - Erf(-x/sqrt 2) is."""
    g = graph_of([N("Neg", ["x"], ["nx"]), N("Mul", ["nx", "k"], ["d"]), N("Erf", ["d"], ["e"]),
                  N("Add", ["one", "e"], ["p"]), N("Mul", ["half", "x"], ["h"]), N("Mul", ["h", "p"], ["y"])],
                 [("x", [2, 16])], [("y", [2, 16])],
                 [("k", scalar(1 / math.sqrt(2))), ("one", scalar(1)), ("half", scalar(0.5))])
    after, _ = rewrite_and_compare(g, ["recognize_gelu"])
    assert "ai.rblnc::Gelu" not in after.op_counts()
