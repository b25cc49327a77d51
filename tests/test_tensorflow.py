"""The TensorFlow importer: every way in (tf.function, Keras, GraphDef, SavedModel, .keras, CLI), naming, layout and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import rblnc  # noqa: E402
from rblnc.errors import DynamicShapeError, ModelImportError, UnsupportedOpError  # noqa: E402
from rblnc.importers.tensorflow_importer import import_tf_function  # noqa: E402
from rblnc.report import build_report, render_text  # noqa: E402
from rblnc.zoo.keras_models import KERAS_ZOO, frozen_graph_def  # noqa: E402

UNET = KERAS_ZOO["unet"]
UNET_SHAPE = list(UNET.small_input_shape)
UNET_INFO = [("x", UNET_SHAPE, np.float32)]
FP32 = dict(rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def unet():
    return UNET.build_model(small=True, seed=0)


@pytest.fixture(scope="module")
def unet_io(unet):
    x = UNET.example_inputs(small=True)
    return x, np.asarray(unet(x, training=False))


@pytest.fixture(scope="module")
def saved_unet(unet, tmp_path_factory):
    """The small UNet as a .keras file, a model.export() SavedModel, a tf.saved_model.save()
    SavedModel and a frozen GraphDef .pb."""
    folder = tmp_path_factory.mktemp("tf")
    unet.save(folder / "unet.keras")
    unet.export(str(folder / "exported"), verbose=False)
    tf.saved_model.save(unet, str(folder / "saved"))
    (folder / "unet.pb").write_bytes(frozen_graph_def(unet).SerializeToString())
    return folder


def run(compiled, *inputs):
    return compiled.create_runtime().run(*inputs)


def rblnc_cli(*args):
    """In-process, so TF is imported once for the module rather than per command."""
    from click.testing import CliRunner

    from rblnc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- ways in


def test_keras_model_compiles_directly_with_its_own_names(unet, unet_io):
    compiled = rblnc.compile_from_tf_function(unet, input_info=UNET_INFO, dtype="fp32")
    assert compiled.input_names == ["x"] and compiled.output_names == ["logits"]
    np.testing.assert_allclose(run(compiled, unet_io[0]), unet_io[1], **FP32)


def test_keras_model_without_input_info_names_the_dynamic_batch(unet):
    with pytest.raises(DynamicShapeError, match=r"Keras model 'unet': input 'x' has shape \[\?, 64, 64, 3\].*"
                                                r"--input x:1x64x64x3:float32"):
        rblnc.compile_from_tf_function(unet, dtype="fp32")


def test_keras_model_with_two_inputs_and_two_heads():
    import keras

    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Concatenate()([keras.layers.Dense(5)(a), b])
    model = keras.Model([a, b], [keras.layers.Dense(2, name="head1")(hidden), keras.layers.Dense(1, name="head2")(hidden)])
    compiled = rblnc.compile_from_tf_function(model, input_info=[("a", [2, 4], "float32"), ("b", [2, 3], "float32")],
                                              dtype="fp32")
    assert compiled.input_names == ["a", "b"] and compiled.output_names == ["head1", "head2"]
    xa, xb = np.random.default_rng(0).random((2, 4), np.float32), np.random.default_rng(1).random((2, 3), np.float32)
    for actual, expected in zip(run(compiled, xa, xb), model([xa, xb])):
        np.testing.assert_allclose(actual, np.asarray(expected), **FP32)


def test_graph_def_proto_and_pb_path(unet_io, saved_unet):
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((saved_unet / "unet.pb").read_bytes())
    for source in (graph_def, saved_unet / "unet.pb"):
        compiled = rblnc.compile_from_tf_graph_def(source, dtype="fp32")
        assert compiled.input_names == ["x"] and compiled.output_names == ["Identity"]
        np.testing.assert_allclose(run(compiled, unet_io[0]), unet_io[1], **FP32)


def test_graph_def_with_dynamic_batch_takes_input_info():
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="v")])
    def double(v):
        return tf.identity(v * 2.0, name="doubled")

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    graph_def = convert_variables_to_constants_v2(double.get_concrete_function()).graph.as_graph_def()
    with pytest.raises(DynamicShapeError, match=r"input 'v' has shape \[\?, 3\]"):
        rblnc.compile_from_tf_graph_def(graph_def, dtype="fp32")
    compiled = rblnc.compile_from_tf_graph_def(graph_def, input_info=[("v", [2, 3], np.float32)], dtype="fp32")
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(compiled, v), v * 2)
    assert graph_def.node[0].attr["shape"].shape.dim[0].size == -1, "the caller's GraphDef was modified"


@pytest.mark.parametrize("folder, input_name", [("exported", "x"), ("saved", "inputs"), ("unet.keras", "x")])
def test_saved_model_directories_and_keras_file(folder, input_name, unet_io, saved_unet):
    info = [(input_name, UNET_SHAPE, np.float32)]
    compiled = rblnc.compile_from_tf_saved_model(saved_unet / folder, input_info=info, dtype="fp32")
    assert compiled.input_names == [input_name]
    np.testing.assert_allclose(run(compiled, unet_io[0]), unet_io[1], **FP32)


def test_saved_model_errors(saved_unet, tmp_path):
    with pytest.raises(ModelImportError, match=r"no signature 'predict'; the SavedModel has 'serve', 'serving_default'"):
        rblnc.compile_from_tf_saved_model(saved_unet / "exported", input_info=UNET_INFO, signature="predict")
    with pytest.raises(ModelImportError, match="a directory without saved_model.pb is not a SavedModel"):
        rblnc.compile_from_tf_saved_model(tmp_path)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelImportError, match=r"broken.keras: Keras cannot load the model"):
        rblnc.compile_from_tf_saved_model(tmp_path / "broken.keras")


def test_concrete_function_signature_from_a_loaded_saved_model(unet_io, saved_unet):
    loaded = tf.saved_model.load(str(saved_unet / "exported"))
    compiled = rblnc.compile_from_tf_function(loaded.signatures["serving_default"], input_info=UNET_INFO,
                                              dtype="fp32")
    assert compiled.output_names == ["output_0"]
    np.testing.assert_allclose(run(compiled, unet_io[0]), unet_io[1], **FP32)


def test_tf_function_with_input_signature_needs_no_input_info():
    @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32, name="a"), tf.TensorSpec([2, 4], tf.float32)])
    def blend(a, b):
        return tf.nn.sigmoid(a) * b

    compiled = rblnc.compile_from_tf_function(blend, dtype="fp32")
    assert compiled.input_names == ["a", "b"]  # TF names an unnamed spec after its argument
    a, b = np.random.default_rng(0).standard_normal((2, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(run(compiled, a, b), blend(a, b).numpy(), **FP32)


def test_variables_captured_by_a_tf_function_become_constants():
    weights = tf.Variable(np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32))
    offset = tf.constant(np.float32(0.5))

    compiled = rblnc.compile_from_tf_function(tf.function(lambda v: tf.matmul(v, weights) + offset),
                                              input_info=[("v", [2, 4], "float32")], dtype="fp32")
    v = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run(compiled, v), v @ weights.numpy() + 0.5, **FP32)


def test_functional_control_flow_is_converted():
    @tf.function
    def halve_until_small(v):
        return tf.while_loop(lambda t: tf.reduce_max(t) > 1.0, lambda t: t / 2.0, [v])[0]

    compiled = rblnc.compile_from_tf_function(halve_until_small, input_info=[("v", [3], "float32")], dtype="fp32")
    for v in (np.array([8.0, 3.0, 1.0], np.float32), np.array([0.5, 0.25, 0.0], np.float32)):
        np.testing.assert_array_equal(run(compiled, v), halve_until_small(v).numpy())


# --------------------------------------------------------------------------- names, outputs, layout


def test_dict_and_tuple_outputs_are_named_by_their_structure():
    @tf.function
    def two(v):
        return {"scaled": v * 3.0, "activated": tf.nn.relu(v)}

    compiled = rblnc.compile_from_tf_function(two, input_info=[("v", [2, 3], "float32")], dtype="fp32")
    assert compiled.output_names == ["activated", "scaled"]  # tf.nest order: sorted keys
    v = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    activated, scaled = run(compiled, v)
    np.testing.assert_array_equal(activated, np.maximum(v, 0))
    np.testing.assert_allclose(scaled, v * 3.0, **FP32)

    pair = rblnc.compile_from_tf_function(tf.function(lambda v: (v + 1.0, v - 1.0)),
                                          input_info=[("v", [2, 3], "float32")], dtype="fp32")
    assert pair.output_names == ["output_0", "output_1"]


def test_outputs_pick_an_inner_tensor_and_drop_the_rest():
    @tf.function
    def net(v):
        hidden = tf.nn.relu(v - 0.5, name="hidden")
        return tf.math.lgamma(hidden + 1.0)  # unsupported, but cut away by outputs=

    compiled = rblnc.compile_from_tf_function(net, input_info=[("v", [4], "float32")], outputs=["hidden"],
                                              dtype="fp32")
    assert compiled.output_names == ["hidden"]
    v = np.array([0.0, 0.4, 0.6, 2.0], np.float32)
    np.testing.assert_allclose(run(compiled, v), np.maximum(v - 0.5, 0), **FP32)


def test_unknown_output_name_suggests_close_ones(unet):
    with pytest.raises(ModelImportError, match=r"output 'unet_1/down0_a_relu/Relu' names no tensor of the graph; "
                                                r"did you mean 'unet_1/down0_a_relu_1/Relu'"):
        import_tf_function(tf.function(lambda x: unet(x)), UNET_INFO, outputs=["unet_1/down0_a_relu/Relu"])


@pytest.mark.parametrize("layout, expected", [("NHWC", "NHWC"), ("NCHW", "NCHW"), (None, "")])
def test_layout_tags_four_dimensional_inputs_only(layout, expected):
    function = tf.function(lambda image, scale: image * tf.reshape(scale, [1, 1, 1, 2]))
    info = [("image", [1, 4, 4, 2], "float32"), ("scale", [2], "float32")]
    compiled = rblnc.compile_from_tf_function(function, input_info=info, layout=layout, dtype="fp32")
    assert [(v.name, v.layout) for v in compiled.artifact.inputs] == [("image", expected), ("scale", "")]


def test_inspect_counts_the_transposes_left(unet):
    compiled = rblnc.compile_from_tf_function(tf.function(lambda x: unet(x)), input_info=UNET_INFO, dtype="fp32")
    report = build_report(compiled.artifact)
    transposes = [op for p in report["partitions"] for op in p["ops"] if op["op_type"] == "Transpose"]
    # NHWC in, NCHW convolutions, NHWC out: one Transpose at each end; tf2onnx's optimiser
    # cancelled the pair it wrapped around each of the 23 convolutions.
    assert report["transposes"] == len(transposes) == 2
    assert "transposes: 2 left after the passes" in render_text(report)
    assert report["inputs"][0]["layout"] == "NHWC"


# --------------------------------------------------------------------------- errors


def test_unmapped_op_is_named_with_its_node():
    @tf.function
    def special(v):
        return tf.math.lgamma(v, name="log_gamma") + tf.math.digamma(v, name="psi")

    with pytest.raises(UnsupportedOpError) as caught:
        rblnc.compile_from_tf_function(special, input_info=[("v", [4], "float32")], dtype="fp32")
    message = str(caught.value)
    assert message.startswith("tf.function 'special': TensorFlow ops with no ONNX mapping in tf2onnx")
    assert "Digamma (node 'psi')" in message and "Lgamma (node 'log_gamma')" in message


def test_tf_function_without_signature_or_input_info():
    with pytest.raises(ModelImportError, match=r"tf.function '<lambda>' has no input_signature; give input_info"):
        rblnc.compile_from_tf_function(tf.function(lambda v: v + 1.0), dtype="fp32")


def test_tracing_failure_reports_the_cause(unet):
    with pytest.raises(ModelImportError, match=r"tracing with inputs \(x: float32\[1x64x64\]\) failed: "
                                                r"Invalid input shape .* Expected shape \(None, 64, 64, 3\)"):
        rblnc.compile_from_tf_function(tf.function(lambda x: unet(x)), input_info=[("x", [1, 64, 64], "float32")])


def test_input_info_must_match_a_signature(saved_unet):
    loaded = tf.saved_model.load(str(saved_unet / "exported"))
    signature = loaded.signatures["serving_default"]
    with pytest.raises(ModelImportError, match=r"input_info names 'image', but the inputs are 'x'"):
        import_tf_function(signature, [("image", UNET_SHAPE, "float32")])
    with pytest.raises(ModelImportError, match=r"input 'x' is float32 in the model, input_info says float16"):
        import_tf_function(signature, [("x", UNET_SHAPE, "float16")])
    with pytest.raises(ModelImportError, match=r"input 'x' has shape \[\?, 64, 64, 3\] in the model, "
                                                r"input_info gives \[1, 32, 32, 3\]"):
        import_tf_function(signature, [("x", [1, 32, 32, 3], "float32")])


def test_graph_def_errors(tmp_path):
    with pytest.raises(ModelImportError, match=r"<bytes>: not a serialized GraphDef"):
        rblnc.compile_from_tf_graph_def(b"\xff\xff not a proto")
    with pytest.raises(ModelImportError, match=r"no such file"):
        rblnc.compile_from_tf_graph_def(tmp_path / "missing.pb")
    weights = tf.Variable([1.0, 2.0])
    graph = tf.function(lambda v: v * weights).get_concrete_function(tf.TensorSpec([2])).graph.as_graph_def()
    with pytest.raises(ModelImportError, match=r"GraphDef: the GraphDef reads variables \(.*ReadVariableOp.*\); "
                                                r"freeze it first"):
        rblnc.compile_from_tf_graph_def(graph)


def test_bad_layout_and_unknown_option():
    with pytest.raises(ModelImportError, match=r"layout must be one of NHWC, NCHW \(or None\), got 'CHWN'"):
        rblnc.compile_from_tf_function(tf.function(lambda v: v), input_info=[("v", [1], "float32")], layout="CHWN")
    with pytest.raises(TypeError, match=r"compile_from_tf_function\(\) got unknown option\(s\) precision"):
        rblnc.compile_from_tf_function(tf.function(lambda v: v), input_info=[("v", [1], "float32")], precision="x")


def test_optimiser_failure_falls_back_to_tf2onnx_safe_path(monkeypatch):
    from tf2onnx import optimizer

    real = optimizer.optimize_graph
    calls = []

    def flaky(graph, catch_errors=True, optimizers=None):
        calls.append(catch_errors)
        if not catch_errors:
            raise RuntimeError("optimiser bug")
        return real(graph, catch_errors, optimizers)

    monkeypatch.setattr(optimizer, "optimize_graph", flaky)
    compiled = rblnc.compile_from_tf_function(tf.function(lambda v: tf.nn.relu(v) * 2.0),
                                              input_info=[("v", [3], "float32")], dtype="fp32")
    assert calls == [False, True]
    np.testing.assert_array_equal(run(compiled, np.array([-1, 0, 2], np.float32)), [0, 0, 4])


# --------------------------------------------------------------------------- packaging and CLI


def test_import_rblnc_does_not_import_tensorflow():
    code = ("import sys, rblnc; rblnc.compile_from_tf_function; rblnc.compile_from_tf_graph_def; "
            "assert 'tensorflow' not in sys.modules and 'tf2onnx' not in sys.modules, 'TF imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("source", ["exported", "unet.keras"])
def test_cli_compiles_saved_model_and_keras_file(source, saved_unet, unet_io, tmp_path):
    output = tmp_path / "unet.rbln"
    result = rblnc_cli("compile", saved_unet / source, "-o", output, "--input", "x:1x64x64x3:float32", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    assert f"compiling {saved_unet / source} (tensorflow)" in result.stderr
    np.testing.assert_allclose(rblnc.Runtime(output).run(unet_io[0]), unet_io[1], **FP32)
    report = json.loads(rblnc_cli("inspect", output, "--json").stdout)
    assert report["options"]["source_framework"] == "tensorflow"
    assert report["transposes"] == 2 and report["inputs"][0]["layout"] == "NHWC"


def test_cli_dynamic_batch_is_one_line_exit_1(saved_unet, tmp_path):
    result = rblnc_cli("compile", saved_unet / "exported", "-o", tmp_path / "x.rbln")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: {saved_unet / 'exported'}: input 'x' has shape [?, 64, 64, 3]; fix its dynamic "
                    "dimensions with input_info=[('x', [...], 'float32')] or --input x:1x64x64x3:float32")
    assert not (tmp_path / "x.rbln").exists()


def test_keras3_exact_gelu_and_grouped_conv_match_keras():
    """Keras 3's exact GELU is TF's Erfc (tf2onnx has no handler: we register one), and its
    grouped Conv2D (ConvNeXt's depthwise) is a call XLA must compile (grappler would not inline
    it). Both import, GELU is recognised as one NPU op, and the result matches Keras."""
    keras = pytest.importorskip("keras")
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", groups=4)(inputs)
    x = keras.layers.Activation("gelu")(x)
    x = keras.layers.Dense(6, activation=keras.activations.gelu)(x)
    model = keras.Model(inputs, x)
    x_in = np.random.default_rng(0).standard_normal((1, 8, 8, 4)).astype(np.float32) * 3
    compiled = rblnc.compile_from_tf_function(model, input_info=[("x", [1, 8, 8, 4], np.float32)], dtype="fp32")
    assert not [r.op_type for p in compiled.artifact.partitions for r in p.fallback_reasons]
    expected = np.asarray(model(x_in))
    np.testing.assert_allclose(compiled.create_runtime().run(x_in), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
