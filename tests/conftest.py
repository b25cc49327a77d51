"""Shared fixtures: the ONNX package's light models and builders of tiny ONNX models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem for p in LIGHT_DIR.glob("*.onnx"))

sys.path.insert(0, str(Path(__file__).parent))


def make_onnx(nodes, inputs, outputs, initializers=(), opset=17, name="tiny") -> onnx.ModelProto:
    """A model from helper.make_node nodes; inputs/outputs as (name, shape[, elem_type])."""

    def vi(spec):
        name, shape, *rest = spec
        return helper.make_tensor_value_info(name, rest[0] if rest else TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes, name, [vi(i) for i in inputs], [vi(o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_onnx(module, examples, path, input_names=("x",), output_names=("y",)) -> Path:
    """A torch module exported as the int8 tests read it: TorchScript exporter, opset 17."""
    import torch

    torch.onnx.export(module, examples, str(path), input_names=list(input_names), output_names=list(output_names),
                      opset_version=17, dynamo=False)
    return Path(path)


def conv_relu_model(channels: int = 4, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> Relu -> y, with random weights: the smallest NPU-only model."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    return make_onnx(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        [("x", [1, 3, size, size])], [("y", [1, channels, size, size])], [("w", w), ("b", b)],
    )


def mixed_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Erf (host) -> Conv: an unsupported op in the middle, so NPU/host/NPU."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32) * 0.3
    return make_onnx(
        [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Erf", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "w2"], ["y"])],
        [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])], [("w1", w1), ("w2", w2)],
    )


@pytest.fixture
def light_dir() -> Path:
    return LIGHT_DIR


def relative_errors(actual, expected) -> tuple[float, float]:
    """A whole model's error against its fp32 reference, as docs/precision.md bounds it:
    max|y - ref| / max|ref| and ||y - ref|| / ||ref||."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return (float(np.abs(actual - expected).max() / np.abs(expected).max()),
            float(np.linalg.norm(actual - expected) / np.linalg.norm(expected)))
