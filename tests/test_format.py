"""The .rbln format: exact round trip, layout, and clear errors for damaged files."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from ml_dtypes import bfloat16

from rblnc.errors import ArtifactError
from rblnc.format.artifact import (
    ALIGNMENT, FORMAT_VERSION, Artifact, Command, CommandKind, CompileOptions, Device,
    FallbackReason, LayerPrecision, MemoryRegion, NpuProgram, Partition, Tensor, TensorKind, Transfer,
    TransferDirection, ValueInfo,
)
from rblnc.format.reader import load_artifact
from rblnc.format.writer import FOOTER, save_artifact, serialize
from rblnc.target import load_target


def full_artifact() -> Artifact:
    """An artifact that sets every field of the format to a non-default value."""
    rng = np.random.default_rng(0)
    tensors = [
        Tensor("x", np.dtype(np.float32), (1, 3, 4, 4), TensorKind.PROGRAM_INPUT, region=MemoryRegion.SRAM,
               offset=0, size=192),
        Tensor("w", np.dtype(np.float32), (2, 3, 3, 3), TensorKind.CONSTANT,
               data=rng.standard_normal((2, 3, 3, 3)).astype(np.float32)),
        Tensor("w16", np.dtype(np.float16), (7,), TensorKind.CONSTANT, data=np.arange(7, dtype=np.float16)),
        Tensor("wbf", np.dtype(bfloat16), (3,), TensorKind.CONSTANT, data=np.array([1.5, -2, 3], dtype=bfloat16)),
        Tensor("shape", np.dtype(np.int64), (2,), TensorKind.CONSTANT, data=np.array([1, -1], np.int64)),
        Tensor("a", np.dtype(np.float32), (1, 2, 4, 4), TensorKind.ACTIVATION, region=MemoryRegion.DRAM,
               offset=256, size=128),
        Tensor("y", np.dtype(np.float32), (1, 32), TensorKind.PROGRAM_OUTPUT, offset=512, size=128),
    ]
    commands = [
        Command("Conv", [0, 1, -1], [5], "conv1",
                attributes={"pads": [1, 1, 1, 1], "group": 1, "alpha": 0.1, "auto_pad": "NOTSET",
                            "names": ["a", "b"], "scales": [0.5, 2.0], "table": np.arange(6, dtype=np.int32).reshape(2, 3),
                            "empty": []},
                domain="", kind=CommandKind.KERNEL, source_ops=["conv1", "bn1"], source_location="model.py:12",
                flops=1234, sram_bytes=99, dram_bytes=77, est_time_ns=12.5),
        Command("Reshape", [5, 4], [6], "reshape", domain="ai.rblnc", kind=CommandKind.DMA),
    ]
    program = NpuProgram(tensors, commands, peak_sram_bytes=4096, peak_dram_bytes=8192, weight_bytes=272)
    return Artifact(
        options=CompileOptions(dtype="fp32", opt_level=3, invocation="rblnc compile m.onnx", source_framework="onnx"),
        target=load_target(),
        opset=17,
        inputs=[ValueInfo("x", np.dtype(np.float32), (1, 3, 4, 4), "NCHW")],
        outputs=[ValueInfo("z", np.dtype(np.float32), (None, 4)), ValueInfo("k", np.dtype(np.int64), None)],
        partitions=[
            Partition("p0_npu", Device.NPU, [ValueInfo("x", np.dtype(np.float32), (1, 3, 4, 4))],
                      [ValueInfo("y", np.dtype(np.float32), (1, 32))], npu_program=program,
                      transfers=[Transfer(TransferDirection.HOST_TO_DEVICE, "x", 192, 100.0),
                                 Transfer(TransferDirection.DEVICE_TO_HOST, "y", 128, 50.0)],
                      est_time_ns=1e3),
            Partition("p1_host", Device.HOST, [ValueInfo("y", np.dtype(np.float32), (1, 32))],
                      [ValueInfo("z", np.dtype(np.float32), (None, 4)), ValueInfo("k", np.dtype(np.int64), None)],
                      host_onnx=b"\x08\x07fake onnx bytes",
                      fallback_reasons=[FallbackReason("nms", "NonMaxSuppression", "data-dependent output shape")],
                      est_time_ns=2e3),
        ],
        producer="rblnc test",
        version=FORMAT_VERSION,
        nodes_before_passes=10,
        nodes_after_passes=4,
        layer_precision=[LayerPrecision("conv1", "Conv", "int8", 41.25),
                         LayerPrecision("fc", "Gemm", "bf16", 12.5, "SQNR 12.5 dB < min_sqnr_db 20 dB")],
        output_sqnr={"z": 31.5, "k": 100.0},
    )


def assert_same(a, b, path="artifact"):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (bytes, memoryview)):
        assert bytes(a) == bytes(b), path
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def test_round_trip_is_exact(tmp_path):
    original = full_artifact()
    path = save_artifact(original, tmp_path / "m.rbln")
    loaded = load_artifact(path)
    assert_same(original, loaded)
    # Writing what was read gives the same bytes: nothing is lost or reordered.
    again = save_artifact(loaded, tmp_path / "again.rbln")
    assert again.read_bytes() == path.read_bytes()


def test_layout_identifier_alignment_footer(tmp_path):
    artifact = full_artifact()
    path = save_artifact(artifact, tmp_path / "m.rbln")
    data = path.read_bytes()
    assert data[4:8] == b"RBLN"
    fb_size, crc, magic = FOOTER.unpack_from(data, len(data) - FOOTER.size)
    assert magic == b"RBLE"
    assert crc == zlib.crc32(data[: len(data) - FOOTER.size + 8])
    flatbuffer, blobs = serialize(artifact)
    assert fb_size == len(flatbuffer)
    from rblnc.format import rbln_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    assert model.Buffers(0).Offset() == 0 and model.Buffers(0).Size() == 0  # the sentinel
    for i in range(1, model.BuffersLength()):
        buffer = model.Buffers(i)
        assert buffer.Offset() % ALIGNMENT == 0 and buffer.Offset() >= fb_size
        assert bytes(data[buffer.Offset(): buffer.Offset() + buffer.Size()]) == bytes(blobs[i - 1])


def test_layer_precision_bytes_and_files_without_it(tmp_path):
    """Version 3's Model.layer_precision: each entry's sqnr_db is a little-endian float32 in its
    table; a file whose artifact has none writes no vector at all (as version 2 wrote), and reads
    back with an empty list."""
    from rblnc.format import rbln_generated as fb

    data = save_artifact(full_artifact(), tmp_path / "m.rbln").read_bytes()
    model = fb.Model.GetRootAs(data, 0)
    assert model.Version() == FORMAT_VERSION == 3 and model.LayerPrecisionLength() == 2
    entry = model.LayerPrecision(1)
    assert (entry.Name(), entry.OpType(), entry.Precision()) == (b"fc", b"Gemm", b"bf16")
    assert entry.Reason() == b"SQNR 12.5 dB < min_sqnr_db 20 dB"
    field = entry._tab.Offset(4 + 2 * 3)  # sqnr_db: the table's fourth field
    assert field and data[entry._tab.Pos + field: entry._tab.Pos + field + 4] == struct.pack("<f", 12.5)
    # Model.output_sqnr, in the artifact's order: name, then sqnr_db as a float32.
    assert model.OutputSqnrLength() == 2 and model.OutputSqnr(0).Name() == b"z"
    output = model.OutputSqnr(0)
    field = output._tab.Offset(4 + 2 * 1)  # sqnr_db: the table's second field
    assert field and data[output._tab.Pos + field: output._tab.Pos + field + 4] == struct.pack("<f", 31.5)
    older = full_artifact()
    older.layer_precision, older.output_sqnr, older.version = [], {}, 2
    path = save_artifact(older, tmp_path / "v2.rbln")
    root = fb.Model.GetRootAs(path.read_bytes(), 0)
    assert root.LayerPrecisionIsNone() and root.OutputSqnrIsNone()
    loaded = load_artifact(path)
    assert loaded.version == 2 and loaded.layer_precision == [] and loaded.output_sqnr == {}


def test_layer_precision_with_a_non_finite_sqnr_is_refused(tmp_path):
    artifact = full_artifact()
    artifact.layer_precision[1].sqnr_db = float("nan")
    path = save_artifact(artifact, tmp_path / "nan.rbln")
    with pytest.raises(ArtifactError, match=r"layer_precision 1 \(fc\): sqnr_db is nan, not a finite number"):
        load_artifact(path)


def test_output_sqnr_non_finite_or_listed_twice_is_refused(tmp_path):
    artifact = full_artifact()
    artifact.output_sqnr["k"] = float("inf")
    with pytest.raises(ArtifactError, match=r"output_sqnr 1 \(k\): sqnr_db is inf, not a finite number"):
        load_artifact(save_artifact(artifact, tmp_path / "inf.rbln"))

    class Twice(dict):  # a file written by something else: the same output twice
        def items(self):
            return [("z", 1.0), ("z", 2.0)]

    artifact.output_sqnr = Twice()
    with pytest.raises(ArtifactError, match=r"output_sqnr 1 \(z\): the output is listed twice"):
        load_artifact(save_artifact(artifact, tmp_path / "twice.rbln"))


def test_constants_are_zero_copy_views_of_the_file(tmp_path):
    path = save_artifact(full_artifact(), tmp_path / "m.rbln")
    loaded = load_artifact(path)
    weight = loaded.partitions[0].npu_program.tensors[1].data
    assert not weight.flags.owndata and not weight.flags.writeable
    assert weight.ctypes.data % ALIGNMENT == 0  # mmap is page aligned, offsets 64-aligned


def _damaged(tmp_path, name: str, change) -> str:
    data = bytearray(save_artifact(full_artifact(), tmp_path / "good.rbln").read_bytes())
    data = change(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path)


def _newer_version(tmp_path):
    artifact = full_artifact()
    artifact.version = FORMAT_VERSION + 1
    return str(save_artifact(artifact, tmp_path / "newer.rbln"))


def _flip_last_data_byte(data: bytearray) -> bytearray:
    data[-FOOTER.size - 1] ^= 0xFF
    return data


DAMAGE = {
    "truncated": (lambda tmp: _damaged(tmp, "trunc.rbln", lambda d: d[: len(d) // 2]), "truncated"),
    "tiny": (lambda tmp: _damaged(tmp, "tiny.rbln", lambda d: d[:10]), "truncated"),
    "identifier": (lambda tmp: _damaged(tmp, "ident.rbln", lambda d: d[:4] + b"ONNX" + d[8:]), "not an .rbln file"),
    "newer": (_newer_version, f"format version {FORMAT_VERSION + 1} is newer"),
    "checksum": (lambda tmp: _damaged(tmp, "crc.rbln", _flip_last_data_byte), "checksum mismatch"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_gives_clear_error(tmp_path, case):
    make, expected = DAMAGE[case]
    path = make(tmp_path)
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    message = str(info.value)
    assert path in message and expected in message
    assert isinstance(info.value, ValueError) and "\n" not in message


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_cli_exit_status_and_one_line(tmp_path, case):
    make, expected = DAMAGE[case]
    path = make(tmp_path)
    result = subprocess.run([sys.executable, "-m", "rblnc.cli", "inspect", path], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert expected in result.stderr and path in result.stderr and "Traceback" not in result.stderr


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_artifact(tmp_path / "absent.rbln")


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.rbln"
    target.write_bytes(b"old contents")
    save_artifact(full_artifact(), target)
    assert load_artifact(target).producer == "rblnc test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.rbln"]


def test_failed_save_keeps_old_file(tmp_path):
    target = tmp_path / "m.rbln"
    target.write_bytes(b"old contents")
    broken = full_artifact()
    broken.partitions[0].npu_program.commands[0].attributes["bad"] = object()
    with pytest.raises(TypeError):
        save_artifact(broken, target)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.rbln"]


def test_save_into_a_missing_folder_is_an_rblnc_error_naming_it(tmp_path):
    from rblnc import ArtifactWriteError, RBLNCompiledModel

    target = tmp_path / "no" / "such" / "m.rbln"
    with pytest.raises(ArtifactWriteError, match=rf"cannot write .*m\.rbln: the folder {tmp_path}/no/such does not exist"):
        RBLNCompiledModel(full_artifact()).save(target)
    with pytest.raises(OSError):  # also the builtin it matches
        save_artifact(full_artifact(), target)
    (tmp_path / "file").write_text("")
    with pytest.raises(ArtifactWriteError, match="the folder .*file is not a folder"):
        save_artifact(full_artifact(), tmp_path / "file" / "m.rbln")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
