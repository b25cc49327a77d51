"""The ONNX importer: opset conversion, input_info, dynamic shapes and bad files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LIGHT_DIR, conv_relu_model, make_onnx
from onnx import TensorProto, helper

from rblnc.errors import DynamicShapeError, ModelImportError
from rblnc.importers import import_onnx, parse_input_info, parse_input_option
from rblnc.ir import CANONICAL_OPSET, verify_graph


def test_opset9_model_is_brought_to_the_canonical_opset():
    graph = import_onnx(LIGHT_DIR / "light_squeezenet.onnx")
    assert graph.opset == CANONICAL_OPSET
    verify_graph(graph)
    assert graph.inputs == ["data_0"] and graph.tensors["data_0"].shape == (1, 3, 224, 224)


def test_opset7_model_imports():
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])], opset=7)
    assert import_onnx(model).opset == CANONICAL_OPSET


def test_older_than_opset7_is_refused():
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])], opset=6)
    with pytest.raises(ModelImportError, match="opset 6 is older than 7"):
        import_onnx(model)


def _dynamic_model():
    return make_onnx([helper.make_node("Relu", ["images"], ["y"])], [("images", ["batch", 3, 8, 8])],
                     [("y", ["batch", 3, 8, 8])])


def test_dynamic_dimension_without_input_info_names_the_input():
    with pytest.raises(DynamicShapeError, match=r"input 'images' has a dynamic dimension 'batch' at axis 0") as info:
        import_onnx(_dynamic_model())
    assert "input_info=[('images'" in str(info.value) and "--input images:1x3x8x8" in str(info.value)


def test_input_info_fixes_dynamic_dimensions():
    graph = import_onnx(_dynamic_model(), input_info=[("images", [2, 3, 8, 8], np.float32)])
    assert graph.tensors["images"].shape == (2, 3, 8, 8)
    assert graph.tensors["y"].shape == (2, 3, 8, 8)


def test_input_info_with_unknown_name():
    with pytest.raises(ModelImportError, match=r"input_info names 'x', but the model's inputs are 'images'"):
        import_onnx(_dynamic_model(), input_info=[("x", [1, 3, 8, 8], "float32")])


def test_input_info_contradicting_static_shape():
    with pytest.raises(ModelImportError, match=r"input 'x' has shape \[1, 3, 8, 8\] in the model, input_info gives \[1, 3, 9, 9\]"):
        import_onnx(conv_relu_model(), input_info=[("x", [1, 3, 9, 9], "float32")])


def test_input_info_wrong_dtype():
    with pytest.raises(ModelImportError, match="is float32 in the model, input_info says int64"):
        import_onnx(conv_relu_model(), input_info=[("x", [1, 3, 8, 8], "int64")])


def test_malformed_input_info():
    with pytest.raises(ModelImportError, match=r"input_info\[0\] must be \(name, shape, dtype\)"):
        parse_input_info([("x", [1, 2])])
    with pytest.raises(ModelImportError, match="shape must be a list of integers"):
        parse_input_info([("x", "1x2", "float32")])
    with pytest.raises(ModelImportError, match="unknown element type 'float33'"):
        parse_input_info([("x", [1], "float33")])


def test_input_option_parsing():
    spec = parse_input_option("images:1x3x640x640:float32")
    assert (spec.name, spec.shape, spec.dtype) == ("images", (1, 3, 640, 640), np.dtype(np.float32))
    assert parse_input_option("ids:1x128:int64").dtype == np.dtype(np.int64)
    with pytest.raises(ModelImportError, match="expected NAME:DIMxDIM"):
        parse_input_option("images=1x3")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xfe this is not protobuf" * 10)
    with pytest.raises(ModelImportError, match=r"junk.onnx: not a readable ONNX model"):
        import_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelImportError, match="no such file"):
        import_onnx(tmp_path / "absent.onnx")


def test_constant_nodes_become_constants():
    model = make_onnx(
        [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2])),
         helper.make_node("Add", ["x", "c"], ["y"])],
        [("x", [2])], [("y", [2])],
    )
    graph = import_onnx(model)
    assert np.array_equal(graph.constants["c"], [1, 2]) and [n.op_type for n in graph.nodes] == ["Add"]


def _paddle_style_model() -> "onnx.ModelProto":
    """Conv -> Relu -> GlobalAveragePool with every unknown dimension written as Paddle writes
    it, `dim_value: -1`, on the input, the output and a value_info."""
    rng = np.random.default_rng(0)
    model = make_onnx(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["y"])],
        [("x", [-1, 3, -1, -1])], [("y", [-1, 4, 1, 1])],
        [("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))],
    )
    model.graph.value_info.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [-1, 4, -1, -1]))
    return model


def test_minus_one_dimensions_are_dynamic_and_input_info_fixes_them():
    import onnxruntime as ort

    import rblnc

    model = _paddle_style_model()
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == -1
    compiled = rblnc.compile_from_onnx(model, input_info=[("x", [1, 3, 12, 20], np.float32)], dtype="fp32")
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 20)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = compiled.create_runtime().run(x)
    assert out.shape == (1, 4, 1, 1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_minus_one_dimension_without_input_info_is_named():
    with pytest.raises(DynamicShapeError, match=r"input 'x' has a dynamic dimension '\?' at axis 0"):
        import_onnx(_paddle_style_model())


def test_minus_one_dimensions_still_check_the_fixed_ones():
    with pytest.raises(ModelImportError, match=r"input 'x' has shape \[-1, 3, -1, -1\] in the model, input_info gives \[1, 4, 8, 8\]"):
        import_onnx(_paddle_style_model(), input_info=[("x", [1, 4, 8, 8], np.float32)])


def _if_reading_outer_values(condition: str) -> "onnx.ModelProto":
    """y = If(cond, then: Identity(a), else: Concat(a, a)) + 1, the branches reading `a`
    from the outer graph and giving different shapes (so the If's own shape is unknown and
    each node's inference must see `a`). `condition` is "shape" (x's batch == 1, known at
    compile time) or "value" (sum(x) > 0, known only at run time)."""
    then_g = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Concat", ["a", "a"], ["e"], axis=1)], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"])]
    if condition == "shape":
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
                  helper.make_node("Equal", ["batch", "one"], ["cond"])]
        initializers = [("zero", np.int64(0)), ("one", np.int64(1))]
    else:
        nodes += [helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
                  helper.make_node("Greater", ["sum", "fzero"], ["cond"])]
        initializers = [("fzero", np.float32(0))]
    nodes += [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
              helper.make_node("Add", ["y", "fone"], ["z"])]
    return make_onnx(nodes, [("x", [1, 4])], [("z", [1, "n"])], initializers + [("fone", np.float32(1))])


@pytest.mark.parametrize("condition", ["shape", "value"])
def test_if_whose_branches_read_outer_values_matches_onnxruntime(condition):
    import onnxruntime as ort

    import rblnc

    model = _if_reading_outer_values(condition)
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    fallbacks = {r.op_type for p in compiled.artifact.partitions for r in p.fallback_reasons}
    # A condition known at compile time inlines its branch: nothing is left for the host.
    assert ("If" in fallbacks) == (condition == "value")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runtime = compiled.create_runtime()
    for x in (np.array([[1, -2, 3, -4]], np.float32), np.array([[1, 2, 3, -1]], np.float32)):
        ref = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(runtime.run(x), ref, rtol=1e-6)


def test_an_opset15_model_whose_branches_read_outer_values_reaches_the_canonical_opset():
    """silero-vad's opset-15 file stayed at 15 (out of every pass, its Identities sent to the host)
    because checking an If alone puts its branches in a scope without the outer values. Here the
    branches read `b`, an Identity of `a`: remove_identities bypasses it, so the branches must be
    renamed to read `a`, and the If, whose condition is known only at run time, keeps working."""
    import onnxruntime as ort

    import rblnc

    then_g = helper.make_graph([helper.make_node("Neg", ["b"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["b"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    model = make_onnx([helper.make_node("Mul", ["x", "x"], ["a"]),
                       helper.make_node("Identity", ["a"], ["b"]),
                       helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
                       helper.make_node("Greater", ["sum", "zero"], ["cond"]),
                       helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
                      [("x", [1, 4])], [("y", [1, 4])], [("zero", np.float32(0))], opset=15)
    assert import_onnx(model).opset == CANONICAL_OPSET
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    fallbacks = {r.op_type for p in compiled.artifact.partitions for r in p.fallback_reasons}
    assert "Identity" not in fallbacks and "If" in fallbacks, fallbacks
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runtime = compiled.create_runtime()
    for x in (np.array([[1, -2, 3, -4]], np.float32), np.array([[1, 2, 3, -1]], np.float32)):
        np.testing.assert_allclose(runtime.run(x), session.run(None, {"x": x})[0], rtol=1e-6)


def _opset19_model(pad_mode: str = "constant", extra: list | None = None) -> "onnx.ModelProto":
    """Ops whose opset-17 form differs, in forms opset 17 has: Pad over listed axes (19), Split into
    num_outputs (18), ReduceMean with axes as an input (18), Resize's new attributes at their
    defaults (19), Cast with saturate (19), AveragePool with unit dilations (19)."""
    nodes = [
        helper.make_node("Pad", ["x", "pads", "", "pad_axes"], ["p"], mode=pad_mode),
        helper.make_node("Split", ["p"], ["s0", "s1"], axis=1, num_outputs=2),
        helper.make_node("AveragePool", ["s0"], ["a"], kernel_shape=[3, 3], dilations=[1, 1]),
        helper.make_node("ReduceMean", ["s1", "mean_axes"], ["m"], keepdims=1),
        helper.make_node("Add", ["a", "m"], ["sum"]),
        helper.make_node("Resize", ["sum", "", "scales"], ["r"], mode="linear", antialias=0,
                         keep_aspect_ratio_policy="stretch"),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT, saturate=1),
    ] + (extra or [])
    return make_onnx(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 2, 12, 12])],
                     [("pads", np.array([1, 1, 1, 1], np.int64)), ("pad_axes", np.array([2, 3], np.int64)),
                      ("mean_axes", np.array([2, 3], np.int64)), ("scales", np.array([1, 1, 2, 2], np.float32))],
                     opset=19)


def test_an_opset19_model_comes_down_to_opset17_and_runs_on_the_npu():
    """onnx's version converter has no adapters downwards for these ops: an opset-18/19 model
    (torch's dynamo exporter writes 18) kept its opset, ran no pass and sent each op to the host."""
    import onnxruntime as ort

    import rblnc

    model = _opset19_model()
    assert import_onnx(model).opset == CANONICAL_OPSET
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    assert not [r.reason for p in compiled.artifact.partitions for r in p.fallback_reasons]
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled.create_runtime().run(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("novelty", ["wrap", "Mish"])
def test_an_opset19_model_using_what_opset17_lacks_keeps_its_opset(novelty):
    """Pad's wrap mode (19) and Mish (18) have no opset-17 form: the model keeps opset 19, and
    those ops run on the host with the reason naming the opset."""
    import onnxruntime as ort

    import rblnc

    if novelty == "wrap":
        model = _opset19_model(pad_mode="wrap")
    else:
        model = _opset19_model(extra=[helper.make_node("Mish", ["y"], ["z"])])
        model.graph.output[0].name = "z"
    assert import_onnx(model).opset == 19
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    reasons = {r.op_type: r.reason for p in compiled.artifact.partitions for r in p.fallback_reasons}
    assert reasons["Pad"] == "Pad at opset 19 differs from opset 17, which the NPU kernels implement"
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled.create_runtime().run(x), want, rtol=1e-5, atol=1e-6)


def _mode_switch_model() -> "onnx.ModelProto":
    """y = If(mode == 1, then: Relu(x), else: Neg(x)) with `mode` an int64 input."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    return make_onnx([helper.make_node("Equal", ["mode", "one"], ["cond"]),
                      helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
                     [("x", [1, 4]), ("mode", [], TensorProto.INT64)], [("y", [1, 4])], [("one", np.int64(1))])


@pytest.mark.parametrize("mode", [1, 0])
def test_constant_args_make_an_onnx_input_a_constant_and_the_if_folds(mode):
    import onnxruntime as ort

    import rblnc

    model = _mode_switch_model()
    compiled = rblnc.compile_from_onnx(model, constant_args={"mode": mode}, dtype="fp32")
    assert compiled.input_names == ["x"]
    assert not [r for p in compiled.artifact.partitions for r in p.fallback_reasons]  # If gone, all on the NPU
    x = np.array([[1, -2, 3, -4]], np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "mode": np.array(mode, np.int64)})[0]
    np.testing.assert_array_equal(compiled.create_runtime().run(x), ref)


def test_constant_args_naming_no_onnx_input():
    with pytest.raises(ModelImportError, match=r"constant_args names 'sr', but the model's inputs are 'x', 'mode'"):
        import_onnx(_mode_switch_model(), constant_args={"sr": 1})
    with pytest.raises(ModelImportError, match=r"constant_args\['mode'\] has shape \[2\], the input's is \[\]"):
        import_onnx(_mode_switch_model(), constant_args={"mode": [1, 2]})


def test_an_inlined_branch_with_computed_shapes_runs_on_the_npu():
    """The branch reshapes x to a shape computed from Shape(x): unknown when the branch is
    inlined, static once the chain folds (refine_shapes), so nothing is left for the host."""
    import onnxruntime as ort

    import rblnc

    branch_nodes = [helper.make_node("Shape", ["x"], ["s"]),
                    helper.make_node("Gather", ["s", "i1"], ["d1"], axis=0),
                    helper.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
                    helper.make_node("Concat", ["d1", "d0"], ["shape"], axis=0),
                    helper.make_node("Reshape", ["x", "shape"], ["r"]),
                    helper.make_node("Relu", ["r"], ["t"])]
    then_g = helper.make_graph(branch_nodes, "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
                               [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("i0", 0), ("i1", 1))])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    model = make_onnx([helper.make_node("Equal", ["mode", "one"], ["cond"]),
                       helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
                       helper.make_node("Sigmoid", ["y"], ["z"])],
                      [("x", [2, 3]), ("mode", [], TensorProto.INT64)], [("z", ["a", "b"])], [("one", np.int64(1))])
    compiled = rblnc.compile_from_onnx(model, constant_args={"mode": 1}, dtype="fp32")
    assert not [r.reason for p in compiled.artifact.partitions for r in p.fallback_reasons]
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "mode": np.array(1, np.int64)})[0]
    out = compiled.create_runtime().run(x)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_onnxruntime_contrib_op_without_value_info_runs_on_the_host():
    """ddddocr's common_old.onnx uses com.microsoft::DynamicQuantizeLSTM and gives no value_info
    for it: ONNX has no shape rule, onnxruntime (the host) runs it, so its types come from there."""
    import onnxruntime as ort

    import rblnc

    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]),
             helper.make_node("Gelu", ["a"], ["g"], domain="com.microsoft"),
             helper.make_node("Relu", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    assert not any(v.name == "g" for v in model.graph.value_info)
    compiled = rblnc.compile_from_onnx(model, dtype="fp32")
    fallbacks = {r.op_type for p in compiled.artifact.partitions for r in p.fallback_reasons}
    assert "Gelu" in fallbacks
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled.create_runtime().run(x), ref, rtol=1e-6, atol=1e-7)
