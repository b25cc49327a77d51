"""Our fused ops: shape rules agree with ONNX's inference of their decompositions, and the emulator
kernels agree with the decompositions run by onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from rblnc.emulator import KERNELS
from rblnc.ir import Graph, Node, TensorInfo, infer_node
from rblnc.ir.fused_ops import ACTIVATIONS, FUSED_OP_TYPES
from rblnc.ir.graph import GraphError
from rblnc.ir.onnx_bridge import make_model
from rblnc.ir.shape_inference import info_from_onnx_type
from rblnc.passes.testing import evaluate

F32 = np.dtype(np.float32)
rng = np.random.default_rng(0)

PARAMS = {"Clip": [-0.5, 0.7], "LeakyRelu": [0.1], "HardSigmoid": [0.2, 0.4]}
CONV_ATTRS = {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2], "group": 2}


def case(op_type, inputs, attrs):
    """A graph with one ai.rblnc node over random inputs (index 1+ of FusedConv/Gemm are constants)."""
    g = Graph("case")
    names = []
    for i, value in enumerate(inputs):
        name = f"in{i}"
        names.append(name if value is not None else "")
        if value is None:
            continue
        if i == 0 or op_type in ("FusedElementwise", "FusedMatMul"):
            g.add_input(name, TensorInfo(value.dtype, value.shape))
        else:
            g.add_constant(name, value)
    node = Node("fused", op_type, names, ["out"], attrs, domain="ai.rblnc")
    g.add_node(node)
    (info,) = infer_node(g, node)
    g.tensors["out"] = info
    g.outputs = ["out"]
    return g, node


def values(*shapes):
    return [None if s is None else rng.standard_normal(s).astype(np.float32) for s in shapes]


CASES = {
    **{f"FusedConv-{act or 'none'}": ("FusedConv", values((1, 4, 7, 9), (6, 2, 3, 3), (6,), (1, 6, 4, 6)),
                                     dict(CONV_ATTRS, activation=act, activation_params=PARAMS.get(act, [])))
       for act in ["", *ACTIVATIONS]},
    "FusedConv-no-bias": ("FusedConv", values((1, 4, 7, 9), (6, 2, 3, 3), None, (1, 6, 4, 6)),
                          dict(CONV_ATTRS, activation="Relu", activation_params=[])),
    "FusedGemm": ("FusedGemm", values((5, 3), (4, 5), (4,)),
                  {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0, "activation": "SiLU", "activation_params": []}),
    "FusedMatMul": ("FusedMatMul", values((2, 5, 3), (3, 4), (4,)), {"activation": "Gelu", "activation_params": []}),
    "FusedMatMul-1d": ("FusedMatMul", values((3,), (2, 3, 4)), {"activation": "", "activation_params": []}),
    "Gelu": ("Gelu", values((3, 7)), {"approximate": "none"}),
    "GeluTanh": ("Gelu", values((3, 7)), {"approximate": "tanh"}),
    "SiLU": ("SiLU", values((3, 7)), {}),
    "FusedElementwise": ("FusedElementwise", values((2, 3), (3,), (2, 1)),
                         {"ops": ["Mul", "Sub", "Clip", "Exp", "Max", "HardSigmoid"], "operands": [1, 2, -1, -1, 1, -1],
                          "swapped": [0, 1, 0, 0, 0, 0], "params": [-1.0, 1.0, 0.3, 0.5]}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shape_rule_matches_onnx_inference_of_the_decomposition(name):
    op_type, inputs, attrs = CASES[name]
    g, node = case(op_type, inputs, attrs)
    model = make_model(g, [node], [i for i in g.inputs], ["out"], initializers=list(g.constants))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info("out"))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert info_from_onnx_type(inferred.graph.output[0].type) == g.tensors["out"]


@pytest.mark.parametrize("name", list(CASES))
def test_emulator_kernel_matches_the_decomposition_under_onnxruntime(name):
    op_type, inputs, attrs = CASES[name]
    g, node = case(op_type, inputs, attrs)
    feeds = {n: v for n, v in zip(node.inputs, inputs) if n in g.inputs}
    (expected,) = evaluate(g, feeds)
    args = [None if v is None else torch.from_numpy(v) for v in inputs]
    with torch.inference_mode():
        (actual,) = KERNELS[f"ai.rblnc::{op_type}"](args, attrs)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.std(expected) > 1e-3  # not a trivially constant case


def test_every_fused_op_has_a_kernel_and_every_activation_a_case():
    assert {f"ai.rblnc::{op}" for op in FUSED_OP_TYPES} <= set(KERNELS)
    assert {f"FusedConv-{a}" for a in ACTIVATIONS} <= set(CASES)


def test_bad_elementwise_steps_are_named():
    g, node = case("FusedElementwise", values((2, 3)), {"ops": ["Relu"], "operands": [-1], "swapped": [0], "params": []})
    node.attrs = {"ops": ["Add"], "operands": [3], "swapped": [0], "params": []}
    with pytest.raises(GraphError, match="step Add reads input 3, which does not exist"):
        infer_node(g, node)
    node.attrs = {"ops": ["Softmax"], "operands": [-1], "swapped": [0], "params": []}
    with pytest.raises(GraphError, match="'Softmax' cannot be a FusedElementwise step"):
        infer_node(g, node)


def test_clip_without_bounds_is_identity_in_the_kernel():
    x = torch.tensor([-1e30, 0.0, 1e30])
    (y,) = KERNELS["ai.rblnc::FusedElementwise"]([x], {"ops": ["Clip"], "operands": [-1], "swapped": [0],
                                                       "params": [-math.inf, math.inf]})
    assert torch.equal(x, y)
