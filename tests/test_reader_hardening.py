"""The reader on hostile files: forged offsets, lengths, shapes, indices, enums and names, each
with a valid checksum, each refused with one clear ArtifactError line naming file and place;
and the verifier's schema description checked against the code flatc generated."""

from __future__ import annotations

import inspect
import json
import re
import struct
from pathlib import Path

import flatbuffers
import numpy as np
import pytest

import rblnc
from artifact_forge import assemble, field_position, fix_crc, offset_target, patch, repack, root, split
from conftest import conv_relu_model, mixed_model
from rblnc.errors import ArtifactError
from rblnc.format import rbln_generated as fb
from rblnc.format.reader import load_artifact, parse_artifact
from rblnc.format.verify import SCHEMA_PATH, SchemaError, VerifyError, load_schema, parse_schema, verify_flatbuffer

# --------------------------------------------------------------------------------------------
# The schema description is the schema


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


_FLAGS = {"bool": "Bool", "byte": "Int8", "ubyte": "Uint8", "short": "Int16", "ushort": "Uint16",
          "int": "Int32", "uint": "Uint32", "long": "Int64", "ulong": "Uint64", "float": "Float32",
          "double": "Float64"}
_ENUM_BASE = {"b": "byte", "B": "ubyte", "h": "short", "H": "ushort", "i": "int", "I": "uint",
              "q": "long", "Q": "ulong"}


def _scalar_name(kind) -> str:
    return kind.name if kind.kind == "scalar" else _ENUM_BASE[kind.format]


def test_description_matches_the_generated_code():
    """Every table's fields, vtable slots and kinds agree with what flatc generated from the same
    schema; a construct the parser misreads, or a regenerated file it does not match, fails here."""
    schema = load_schema()
    generated_tables = {name for name, obj in vars(fb).items()
                        if inspect.isclass(obj) and hasattr(obj, "GetRootAs")}
    assert set(schema.tables) == generated_tables
    for table, fields in schema.tables.items():
        cls = getattr(fb, table)
        source = inspect.getsource(cls)
        slots_in_code = {(int(n) - 4) // 2 for n in re.findall(r"self\._tab\.Offset\((\d+)\)", source)}
        assert slots_in_code == {f.slot for f in fields if not f.deprecated}, table
        for f in fields:
            accessor = inspect.getsource(getattr(cls, _camel(f.name)))
            assert f"self._tab.Offset({4 + 2 * f.slot})" in accessor, f"{table}.{f.name}"
            if f.vector:
                assert hasattr(cls, _camel(f.name) + "Length"), f"{table}.{f.name} is not a vector"
            if f.type.kind == "string":
                assert ("self._tab.String(" in accessor), f"{table}.{f.name}"
            elif f.type.kind == "table":
                assert "self._tab.Indirect(" in accessor and f"obj = {f.type.name}()" in accessor
            elif f.type.kind == "struct":
                assert f"* {f.type.size}" in accessor and f"obj = {f.type.name}()" in accessor
            else:
                assert f"number_types.{_FLAGS[_scalar_name(f.type)]}Flags" in accessor, f"{table}.{f.name}"
    for struct_name, (size, _) in schema.struct_layouts.items():
        assert getattr(fb, struct_name).SizeOf() == size
    for enum_name, kind in schema.enums.items():
        members = {v for k, v in vars(getattr(fb, enum_name)).items() if not k.startswith("_")}
        assert members == set(kind.values), enum_name
    assert schema.file_identifier == "RBLN" and schema.root_type == "Model"


def test_description_is_read_from_the_schema_file():
    """Appending a field to the schema (the only change its rules allow) is picked up."""
    text = SCHEMA_PATH.read_text()
    extended = text.replace(
        "  quantization: Quantization;\n}",
        "  quantization: Quantization;\n"
        "  quant_scales: [float];\n  note: string (required);\n}", 1)
    assert extended != text
    before = load_schema().tables["Tensor"]
    after = parse_schema(extended).tables["Tensor"]
    assert [f.name for f in after[: len(before)]] == [f.name for f in before]
    scales, note = after[-2:]
    assert (scales.name, scales.slot, scales.vector, scales.type.name) == ("quant_scales", len(before), True, "float")
    assert (note.name, note.slot, note.required, note.type.kind) == ("note", len(before) + 1, True, "string")


@pytest.mark.parametrize("construct", [
    "union Payload { Tensor, Command }",
    'include "other.fbs";',
    "table Odd { values: [int:4]; }",
    "table Odd { value: int (nested_flatbuffer: \"Model\"); }",
    "enum Flags : ubyte (bit_flags) { A, B }",
])
def test_unsupported_schema_constructs_are_refused(construct):
    with pytest.raises(SchemaError):
        parse_schema(SCHEMA_PATH.read_text() + "\n" + construct + "\n")


# --------------------------------------------------------------------------------------------
# Seeds: real compiled models


@pytest.fixture(scope="module")
def npu_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("seed") / "conv.rbln"
    # -O0 keeps Conv and Relu as two commands (the fusions would make one), which the
    # command-order forgeries need.
    rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32", opt_level=0).save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("seed") / "mixed.rbln"
    rblnc.compile_from_onnx(mixed_model(), dtype="fp32").save(path)
    return path.read_bytes()


def refused(tmp_path, data: bytes, *fragments: str) -> str:
    """Load `data` from a file: it must fail with one ArtifactError line naming the file."""
    path = tmp_path / "forged.rbln"
    path.write_bytes(data)
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_seeds_load_and_run(npu_file, mixed_file):
    for data in (npu_file, mixed_file):
        artifact = parse_artifact(data)
        x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
        assert np.isfinite(rblnc.Runtime(artifact).run(x)).all()


# --------------------------------------------------------------------------------------------
# Structure: the verifier, reached through a valid checksum


def _partition0(data: bytes):
    return root(data).Partitions(0)


def test_giant_vector_length(tmp_path, npu_file):
    program = _partition0(npu_file).NpuProgram()
    tensors = offset_target(npu_file, field_position(program, 0))
    message = refused(tmp_path, patch(npu_file, tensors, "<I", 0xFFFFFFF0),
                      "Model.partitions[0].npu_program.tensors", "vector of 4294967280 x 4 bytes", "runs past")
    assert "corrupt model structure" in message


def test_giant_string_length(tmp_path, npu_file):
    name = offset_target(npu_file, field_position(_partition0(npu_file), 0))
    refused(tmp_path, patch(npu_file, name, "<I", 0x7FFFFFFF), "Model.partitions[0].name", "string of 2147483647")


def test_string_not_utf8(tmp_path, npu_file):
    name = offset_target(npu_file, field_position(_partition0(npu_file), 0))
    refused(tmp_path, patch(npu_file, name + 4, "<B", 0xFF), "Model.partitions[0].name", "not UTF-8")


def test_string_not_terminated(tmp_path, npu_file):
    name = offset_target(npu_file, field_position(_partition0(npu_file), 0))
    length = struct.unpack_from("<I", npu_file, name)[0]
    refused(tmp_path, patch(npu_file, name + 4 + length, "<B", 0x41), "not zero-terminated")


def test_root_offset_past_the_end(tmp_path, npu_file):
    refused(tmp_path, patch(npu_file, 0, "<I", len(split(npu_file)[0]) + 100), "Model", "past the end")


def test_vtable_outside_the_buffer(tmp_path, npu_file):
    table = _partition0(npu_file)._tab.Pos
    refused(tmp_path, patch(npu_file, table, "<i", -0x7FFF0000), "Model.partitions[0]", "vtable")


def test_field_outside_its_table(tmp_path, npu_file):
    partition = _partition0(npu_file)
    vtable = partition._tab.Pos - struct.unpack_from("<i", npu_file, partition._tab.Pos)[0]
    refused(tmp_path, patch(npu_file, vtable + 4, "<H", 0xFFF0), "Model.partitions[0].name",
            "lies outside the")


def test_offset_zero(tmp_path, npu_file):
    refused(tmp_path, patch(npu_file, field_position(_partition0(npu_file), 0), "<I", 0), "invalid offset 0")


def test_unknown_enum_value(tmp_path, npu_file):
    program = _partition0(npu_file).NpuProgram()
    tensor = program.Tensors(0)
    refused(tmp_path, patch(npu_file, field_position(tensor, 3), "<b", 9),
            "tensors[0].kind", "9 is not a value of enum TensorKind")


def test_unknown_dtype_code(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.inputs[0], "dtype", 99)),
            "Model.inputs[0].dtype", "99 is not a value of enum DType")


def test_required_field_missing(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.partitions[0], "name", None)),
            "Model.partitions[0].name", "required field is missing")


def test_shared_offsets_cannot_multiply_the_work(tmp_path):
    """A vector whose 10,000 entries all point at one table: few bytes, many visits."""
    builder = flatbuffers.Builder(1024)
    name = builder.CreateString("x")
    fb.ValueInfoStart(builder)
    fb.ValueInfoAddName(builder, name)
    shared = fb.ValueInfoEnd(builder)
    fb.ModelStartInputsVector(builder, 10_000)
    for _ in range(10_000):
        builder.PrependUOffsetTRelative(shared)
    inputs = builder.EndVector()
    fb.ModelStart(builder)
    fb.ModelAddVersion(builder, 1)
    fb.ModelAddInputs(builder, inputs)
    builder.Finish(fb.ModelEnd(builder), file_identifier=b"RBLN")
    flatbuffer = bytes(builder.Output())
    with pytest.raises(VerifyError, match="objects in a"):
        verify_flatbuffer(flatbuffer)
    refused(tmp_path, assemble(flatbuffer, b""), "offsets are shared or overlap")


def test_flatbuffer_too_small_for_a_root():
    with pytest.raises(VerifyError, match="too small"):
        verify_flatbuffer(b"\0" * 4)


# --------------------------------------------------------------------------------------------
# Meaning: what a well-formed FlatBuffer can still get wrong


def _tensor(model, index):
    return model.partitions[0].npuProgram.tensors[index]


def _constant_index(model) -> int:
    return next(i for i, t in enumerate(model.partitions[0].npuProgram.tensors) if t.kind == fb.TensorKind.CONSTANT)


def test_version_zero(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m, "version", 0)), "format version 0")


FOOTER_SIZE = 16


def test_newer_version_says_upgrade_before_anything_else(tmp_path, npu_file):
    forged = bytearray(repack(npu_file, lambda m: setattr(m, "version", 7)))
    forged[-FOOTER_SIZE - 1] ^= 0xFF  # and a wrong checksum: the version still speaks first
    refused(tmp_path, bytes(forged), "format version 7 is newer", "upgrade rblnc")


def test_buffer_outside_data_section(tmp_path, npu_file):
    def forge(model, data_start):
        model.buffers[1].offset = data_start + 64 * 1000
    refused(tmp_path, repack(npu_file, mutate_buffers=forge), "buffer 1", "lie outside the data section")


def test_buffer_into_the_flatbuffer(tmp_path, npu_file):
    def forge(model, data_start):
        model.buffers[1].offset = 0
    refused(tmp_path, repack(npu_file, mutate_buffers=forge), "buffer 1", "lie outside the data section")


def test_buffer_size_overflowing(tmp_path, npu_file):
    def forge(model, data_start):
        model.buffers[1].size = 2**64 - 1
    refused(tmp_path, repack(npu_file, mutate_buffers=forge), "buffer 1", "lie outside the data section")


def test_buffer_misaligned(tmp_path, npu_file):
    def forge(model, data_start):
        model.buffers[1].offset += 4
    refused(tmp_path, repack(npu_file, mutate_buffers=forge), "buffer 1", "not a multiple of 64")


def test_sentinel_buffer_with_data(tmp_path, npu_file):
    def forge(model, data_start):
        model.buffers[0].size = 8
    refused(tmp_path, repack(npu_file, mutate_buffers=forge), "buffer 0", "sentinel")


def test_buffer_index_out_of_range(tmp_path, npu_file):
    def forge(model):
        _tensor(model, _constant_index(model)).buffer = 999
    refused(tmp_path, repack(npu_file, forge), "tensor", "buffer index 999 out of range")


def test_constant_size_against_shape(tmp_path, npu_file):
    def forge(model):
        tensor = _tensor(model, _constant_index(model))
        tensor.shape = list(tensor.shape[:-1]) + [tensor.shape[-1] + 1]
    refused(tmp_path, repack(npu_file, forge), "bytes stored for shape", "expected)")


def test_negative_dimension(tmp_path, npu_file):
    def forge(model):
        _tensor(model, _constant_index(model)).shape = [-3, 4]
    refused(tmp_path, repack(npu_file, forge), "dimension -3 at axis 0")


def test_shape_product_overflowing_int64(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.inputs[0], "shape", [2**40, 2**40, 2**40])),
            "model input 0 'x'", "larger than any tensor can be")


def test_constant_shape_larger_than_the_device(tmp_path, npu_file):
    """Caught before any array is made: np.prod would wrap, a lazy reader would allocate."""
    def forge(model):
        _tensor(model, _constant_index(model)).shape = [2**20, 2**20, 2**10]
    refused(tmp_path, repack(npu_file, forge), "exceeds the device's", "bytes of DRAM")


def test_tensor_placed_past_device_memory(tmp_path, npu_file):
    def forge(model):
        tensor = _tensor(model, 0)
        tensor.region, tensor.offset = fb.MemoryRegion.SRAM, 2**40
    refused(tmp_path, repack(npu_file, forge), "placed at SRAM bytes")


def test_string_dtype_in_npu_program(tmp_path, npu_file):
    def forge(model):
        _tensor(model, 0).dtype = fb.DType.STRING
    refused(tmp_path, repack(npu_file, forge), "element type code 8 is not one an NPU tensor can have")


def test_command_index_out_of_range(tmp_path, npu_file):
    def forge(model):
        model.partitions[0].npuProgram.commands[0].inputs = [0, 99]
    refused(tmp_path, repack(npu_file, forge), "command 0", "addresses tensor 99")


def test_command_reads_before_write(tmp_path, npu_file):
    def forge(model):
        commands = model.partitions[0].npuProgram.commands
        commands.reverse()
    refused(tmp_path, repack(npu_file, forge), "before any command writes it")


def test_command_writes_a_constant(tmp_path, npu_file):
    def forge(model):
        model.partitions[0].npuProgram.commands[0].outputs = [_constant_index(model)]
    refused(tmp_path, repack(npu_file, forge), "writes tensor", "a constant")


def test_duplicate_attribute(tmp_path, npu_file):
    def forge(model):
        command = model.partitions[0].npuProgram.commands[0]
        command.attributes = command.attributes + command.attributes[:1]
    refused(tmp_path, repack(npu_file, forge), "appears twice")


def test_tensor_attribute_with_forged_shape(tmp_path, npu_file):
    def forge(model):
        attribute = fb.AttributeT()
        attribute.name, attribute.type = "table", fb.AttributeType.TENSOR
        attribute.tensorBuffer, attribute.tensorDtype, attribute.tensorShape = 1, fb.DType.FLOAT32, [2**62]
        model.partitions[0].npuProgram.commands[0].attributes.append(attribute)
    refused(tmp_path, repack(npu_file, forge), "attribute 'table'", "larger than any tensor can be")


def test_partition_reads_unknown_value(tmp_path, mixed_file):
    def forge(model):
        model.partitions[1].inputs[0].name = "nowhere"
    refused(tmp_path, repack(mixed_file, forge), "reads 'nowhere'", "no model input or earlier partition")


def test_model_output_not_produced(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.outputs[0], "name", "ghost")),
            "model output 'ghost'", "no partition produces it")


def test_program_input_not_a_partition_input(tmp_path, npu_file):
    def forge(model):
        _tensor(model, 0).name = "stranger"
    refused(tmp_path, repack(npu_file, forge), "program input 'stranger' is not an input of the partition")


def test_partition_output_not_in_program(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.partitions[0].outputs[0], "name", "ghost")),
            "output 'ghost' is not an output of its program")


def test_npu_partition_without_program(tmp_path, npu_file):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.partitions[0], "npuProgram", None)),
            "NPU partition has no program")


def test_host_partition_without_subgraph(tmp_path, mixed_file):
    refused(tmp_path, repack(mixed_file, lambda m: setattr(m.partitions[1], "hostSubgraph", None)),
            "host partition has no ONNX subgraph")


@pytest.mark.parametrize("spec, fragment", [
    ("{not json", "not a valid spec (JSONDecodeError"),
    ("[1, 2]", "not a valid spec"),
    ("{}", "not a valid spec (KeyError"),
])
def test_target_spec_not_a_spec(tmp_path, npu_file, spec, fragment):
    refused(tmp_path, repack(npu_file, lambda m: setattr(m.target, "specJson", spec)), "target spec", fragment)


def test_target_spec_with_wrong_types(tmp_path, npu_file):
    def forge(model):
        spec = json.loads(model.target.specJson)
        spec["dram_bytes"] = "lots"
        model.target.specJson = json.dumps(spec)
    refused(tmp_path, repack(npu_file, forge), "dram_bytes must be a non-negative number")


# --------------------------------------------------------------------------------------------
# Loading is followed by preparing a runtime: host ONNX bytes and NPU ops are used there


def _replace_host_onnx(data: bytes, new_bytes: bytes) -> bytes:
    """Swap the host partition's ONNX blob (the data section is re-laid out)."""
    model = fb.ModelT.InitFromObj(root(data))
    flatbuffer, section = split(data)
    index = model.partitions[1].hostSubgraph.onnxBuffer
    start = len(section) + 64 - len(section) % 64 if len(section) % 64 else len(section)
    section = section + b"\0" * (start - len(section)) + new_bytes

    def forge(m, data_start):
        m.buffers[index].offset = data_start + start
        m.buffers[index].size = len(new_bytes)
    return repack(assemble(flatbuffer, section), mutate_buffers=forge)


@pytest.mark.parametrize("payload", [b"\x08\x07not onnx at all", b"\xff" * 64, b"\x0a"])
def test_host_bytes_that_are_not_onnx(tmp_path, mixed_file, payload):
    path = tmp_path / "host.rbln"
    path.write_bytes(_replace_host_onnx(mixed_file, payload))
    load_artifact(path)  # the reader does not parse ONNX (inspect stays cheap) ...
    with pytest.raises(ArtifactError) as info:  # ... the runtime does, and says where
        rblnc.Runtime(path)
    message = str(info.value)
    assert message.startswith(f"{path}: partition ") and "(host)" in message, message
    assert "cannot be loaded by onnxruntime" in message and "\n" not in message


def test_host_subgraph_with_other_names(tmp_path, mixed_file):
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["q"], ["r"])], "g",
                              [helper.make_tensor_value_info("q", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1])])
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    other.ir_version = 8
    path = tmp_path / "names.rbln"
    path.write_bytes(_replace_host_onnx(mixed_file, other.SerializeToString()))
    with pytest.raises(ArtifactError, match=r"its ONNX subgraph reads 'q', which the partition does not take"):
        rblnc.Runtime(path)


def test_npu_op_without_kernel(tmp_path, npu_file):
    def forge(model):
        model.partitions[0].npuProgram.commands[0].opType = "Teleport"
    path = tmp_path / "op.rbln"
    path.write_bytes(repack(npu_file, forge))
    with pytest.raises(ArtifactError, match=r"partition .* \(npu\): its program cannot be prepared .*Teleport"):
        rblnc.Runtime(path)


def test_cli_reports_forged_file_in_one_line(tmp_path, npu_file):
    import subprocess
    import sys

    path = tmp_path / "forged.rbln"
    path.write_bytes(patch(npu_file, 0, "<I", 10**6))
    for command in (["inspect", str(path)], ["run", str(path), str(tmp_path / "in.npz")]):
        np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 8, 8), np.float32))
        result = subprocess.run([sys.executable, "-m", "rblnc.cli", *command], capture_output=True, text=True)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert str(path) in result.stderr and "corrupt model structure" in result.stderr


def test_nothing_is_unpickled(tmp_path, npu_file):
    """The format has no place for code: a pickle in a string or the data section stays bytes."""
    import pickle

    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").write_text, ("x",))

    payload = pickle.dumps(Boom())
    forged = repack(npu_file, lambda m: setattr(m, "producer", payload.decode("latin-1")))
    artifact = parse_artifact(forged)
    assert artifact.producer == payload.decode("latin-1")
    rblnc.Runtime(artifact)
    assert not (tmp_path / "pwned").exists()


def test_every_truncation_is_refused(npu_file):
    """Cut at every 7th byte: always the reader's error, never another exception; once as is,
    once behind a valid footer (the cut prefix taken as the FlatBuffer), so the parser runs."""
    for cut in range(0, len(npu_file), 7):
        with pytest.raises(ArtifactError):
            parse_artifact(npu_file[:cut], "cut")
        with pytest.raises(ArtifactError):
            parse_artifact(assemble(npu_file[:cut], b""), "cut")


def test_forged_attribute_that_would_allocate_gigabytes(tmp_path, npu_file):
    """Found by the fuzzer: pads of 160 million made the Conv kernel ask for 19 GB. The declared
    output shapes contradict the attribute, which preparing the runtime now checks."""
    def forge(model):
        command = model.partitions[0].npuProgram.commands[0]
        pads = next(a for a in command.attributes if a.name == "pads")
        pads.ints = [1, 1, 1, 160432129]
    path = tmp_path / "pads.rbln"
    path.write_bytes(repack(npu_file, forge))
    with pytest.raises(ArtifactError) as info:
        rblnc.Runtime(path)
    message = str(info.value)
    assert message.startswith(f"{path}: partition 'p0_npu' (npu): attributes and declared shapes")
    assert "Conv" in message and "differ in dimension 3" in message and "\n" not in message


def test_forged_constant_shape_feeding_reshape(tmp_path):
    """Data-dependent shapes are checked too: a Reshape target forged in the constant's bytes."""
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 4])],
        [numpy_helper.from_array(np.array([4, 4], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    good = tmp_path / "reshape.rbln"
    rblnc.compile_from_onnx(model, dtype="fp32").save(good)
    data = good.read_bytes()
    assert rblnc.Runtime(good).run(np.ones((2, 8), np.float32)).shape == (4, 4)
    flatbuffer, section = split(data)
    constant = np.array([4, 4], np.int64).tobytes()
    assert section.count(constant) == 1
    forged = tmp_path / "forged.rbln"
    forged.write_bytes(assemble(flatbuffer, section.replace(constant, np.array([16, 1], np.int64).tobytes())))
    with pytest.raises(ArtifactError, match=r"Reshape.*differ in dimension 0: \(16\) vs \(4\)"):
        rblnc.Runtime(forged)
