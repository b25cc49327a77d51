"""The -O3 pipeline on every zoo model: the same outputs as -O0 in fp32, node counts in inspect, ResNet-50's commands."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import LIGHT_DIR, LIGHT_MODELS

import rblnc
from rblnc import zoo
from rblnc.format.artifact import CommandKind, Device
from rblnc.importers import import_onnx
from rblnc.ir.onnx_bridge import make_model
from rblnc.passes.testing import random_feeds, run_passes
from rblnc.report import build_report, render_text

TORCH_MODELS = sorted(zoo.TORCH_ZOO)
# Relative to the output's largest magnitude: folding BatchNorm into weights re-rounds every
# layer, so elements near zero differ by a few ulps of the big ones, not of themselves.
ATOL_OF_SCALE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.export_onnx(name, folder / f"{name}.onnx", small=True)
        return cache[name]

    return get


def compile_and_run(model, level, inputs):
    compiled = rblnc.compile_from_onnx(model, dtype="fp32", opt_level=level)
    outputs = compiled.create_runtime().run(*inputs) if isinstance(inputs, (list, tuple)) \
        else compiled.create_runtime().run(**inputs)
    return compiled, outputs


def assert_agree(optimised, reference):
    for actual, expected in zip(np.atleast_1d(optimised) if not isinstance(optimised, list) else optimised,
                                np.atleast_1d(reference) if not isinstance(reference, list) else reference):
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=ATOL_OF_SCALE * scale)


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torch_zoo_model_matches_unoptimised(name, exported, tmp_path):
    inputs = zoo.get(name).example_inputs(small=True)
    plain, reference = compile_and_run(exported(name), 0, inputs)
    optimised, outputs = compile_and_run(exported(name), 3, inputs)
    assert_agree(outputs, reference)
    # The fused ops' attributes survive the .rbln file: the saved artifact computes the same.
    np.testing.assert_array_equal(rblnc.Runtime(optimised.save(tmp_path / f"{name}.rbln")).run(*inputs), outputs)
    report = build_report(optimised.artifact)
    before, after = report["nodes_before_passes"], report["nodes_after_passes"]
    assert before == plain.artifact.nodes_after_passes and after < before
    assert f"nodes: {before} before passes, {after} after" in render_text(report)


def randomised_light_model(name: str, seed: int = 0) -> bytes:
    """The light model with its constant-filled weights replaced by random ones (the shipped
    ones make every output equal, which would hide any numerical difference)."""
    graph = import_onnx(LIGHT_DIR / f"{name}.onnx")
    run_passes(graph, 0)  # weights are ConstantOfShape outputs until folded
    rng = np.random.default_rng(seed)
    for node in graph.nodes:
        for position, tensor in enumerate(node.inputs):
            value = graph.constants.get(tensor)
            if value is None or value.dtype != np.float32 or position == 0:
                continue
            normal = rng.standard_normal(value.shape, dtype=np.float32)
            if node.op_type in ("Conv", "Gemm") and position == 1:
                fan_in = value[0].size if node.op_type == "Conv" or node.attrs.get("transB") else value.shape[0]
                new = normal * np.float32(np.sqrt(2.0 / fan_in))
            elif node.op_type in ("Conv", "Gemm") and position == 2:
                new = normal * np.float32(0.1)
            elif node.op_type == "BatchNormalization":
                new = rng.uniform(0.5, 1.5, value.shape).astype(np.float32) if position in (1, 4) else normal * 0.1
            else:
                continue
            graph.constants[tensor] = new
    model = make_model(graph, graph.topological_order(), graph.inputs, graph.outputs,
                       initializers=list(graph.constants))
    return model.SerializeToString()


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_unoptimised(name):
    model = randomised_light_model(name)
    feeds = {k: np.abs(v) for k, v in random_feeds(import_onnx(model)).items()}
    plain, reference = compile_and_run(model, 0, feeds)
    optimised, outputs = compile_and_run(model, 3, feeds)
    assert np.ptp(reference) > 0.01 * np.abs(reference).max()  # the outputs differ from each other
    assert_agree(outputs, reference)
    text = render_text(build_report(optimised.artifact))
    assert f"nodes: {plain.artifact.nodes_after_passes} before passes, {optimised.artifact.nodes_after_passes} after" in text
    assert optimised.artifact.nodes_after_passes < plain.artifact.nodes_after_passes


@pytest.mark.parametrize("level", [2, 3])
def test_resnet50_has_one_npu_command_per_convolution_plus_pooling_and_classifier(level, exported):
    path = exported("resnet50")
    source_ops = Counter(n.op_type for n in import_onnx(path).nodes)
    assert source_ops["Conv"] == 53 and source_ops["BatchNormalization"] == 53 and source_ops["Add"] == 16
    compiled = rblnc.compile_from_onnx(path, dtype="fp32", opt_level=level)
    (partition,) = compiled.artifact.partitions
    assert partition.device == Device.NPU
    commands = [c for c in partition.npu_program.commands if c.kind == CommandKind.KERNEL]
    kinds = Counter(c.op_type for c in commands)
    assert kinds["FusedConv"] + kinds["Conv"] == source_ops["Conv"]
    assert kinds - Counter({"FusedConv": kinds["FusedConv"], "Conv": kinds["Conv"]}) == Counter(
        {"MaxPool": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1})
    assert len(commands) == 53 + 4
    # Every BN, Relu and residual Add is inside a convolution's command, which names them.
    absorbed = Counter(op.rsplit("/", 1)[-1].split("_")[0] for c in commands for op in c.source_ops)
    assert absorbed["BatchNormalization"] == 53 and absorbed["Relu"] == 49 and absorbed["Add"] == 16


def test_keras_resnet50_through_tf2onnx_runs_on_the_npu_with_one_command_per_convolution():
    """An NHWC graph from another exporter: BN arrives as Mul + Add, the stem's zero Pad before
    MaxPool, a Squeeze before the classifier; -O3 leaves one NPU partition, one command per Conv."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    from rblnc.zoo import keras_models

    model = keras_models.KERAS_ZOO["resnet50"].build_model(small=True, seed=0)
    shape = (1, *model.inputs[0].shape[1:])
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=(tf.TensorSpec(shape, tf.float32, name="x"),),
                                          opset=17)
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    compiled = rblnc.compile_from_onnx(proto.SerializeToString(), dtype="fp32", opt_level=3)
    np.testing.assert_allclose(compiled.create_runtime().run(x), expected, rtol=1e-4,
                               atol=ATOL_OF_SCALE * float(np.abs(expected).max()))
    (partition,) = compiled.artifact.partitions
    kinds = Counter(c.op_type for c in partition.npu_program.commands)
    assert kinds["FusedConv"] + kinds["Conv"] == Counter(n.op_type for n in proto.graph.node)["Conv"] == 53
    assert not {"Mul", "Add", "Relu", "Pad"} & set(kinds)
