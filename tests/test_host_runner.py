"""Host partitions run on onnxruntime whenever it can load them, not on the slow reference evaluator."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rblnc.runtime.host import HostSubgraphRunner


def _branchy_model():
    """If(flag) then Relu(x) else Transpose(Squeeze(x)): with x declared (1, 1, 8) the else
    branch squeezes to rank 1 and onnxruntime's type inference rejects the whole model, though
    a request with flag set never runs it (silero-vad's 8 kHz branch given 16 kHz frames)."""
    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["relu"])], "then", [],
                                    [helper.make_tensor_value_info("relu", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Squeeze", ["x"], ["squeezed"]),
                                     helper.make_node("Transpose", ["squeezed"], ["turned"], perm=[0, 2, 1])],
                                    "else", [], [helper.make_tensor_value_info("turned", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)], "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_subgraph_whose_static_shapes_break_onnxruntime_inference_still_runs_on_onnxruntime():
    model = _branchy_model()
    with pytest.raises(Exception, match="Transpose"):  # the premise: as lowered, onnxruntime refuses it
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runner = HostSubgraphRunner(model.SerializeToString())
    assert isinstance(runner._session, ort.InferenceSession)
    x = np.random.default_rng(0).standard_normal((1, 1, 8)).astype(np.float32)
    np.testing.assert_array_equal(runner.run({"x": x, "flag": np.array(True)})["y"], np.maximum(x, 0))
