"""Serializes an Artifact to a .rbln file: FlatBuffer, aligned data section, checksummed footer."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np

from .. import dtypes
from ..errors import ArtifactWriteError
from . import rbln_generated as fb
from .artifact import (
    ALIGNMENT, FILE_IDENTIFIER, FOOTER_MAGIC, Artifact, Command, LayerPrecision, NpuProgram,
    Partition, Tensor, ValueInfo,
)

FOOTER = struct.Struct("<QI4s")  # FlatBuffer size, CRC-32, magic


def save_artifact(artifact: Artifact, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, renamed over `path` when complete."""
    path = Path(path)
    directory = check_output_path(path)
    flatbuffer, blobs = serialize(artifact)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ArtifactWriteError(f"cannot write {path}: {exc.strerror or exc} in the folder {directory}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, flatbuffer, blobs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise ArtifactWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def check_output_path(path: str | os.PathLike) -> Path:
    """The folder `path` would be written to; ArtifactWriteError when it cannot hold the file
    (checked before compiling too, so a typo in -o does not cost a whole compile)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise ArtifactWriteError(f"cannot write {path}: the folder {directory} {what}")
    if path.is_dir():
        raise ArtifactWriteError(f"cannot write {path}: it is a folder")
    return directory


def serialize(artifact: Artifact) -> tuple[bytes, list[memoryview]]:
    """The FlatBuffer (with final buffer offsets) and the data blobs in buffer order."""
    blobs = _BlobTable()
    model = _model(artifact, blobs)
    flatbuffer = _pack(model)
    # Buffer is a struct, so filling in the offsets does not change the FlatBuffer's size.
    offset = _align(len(flatbuffer))
    for buffer, blob in zip(model.buffers[1:], blobs.blobs):
        buffer.offset = offset
        offset = _align(offset + len(blob))
    final = _pack(model)
    assert len(final) == len(flatbuffer), "FlatBuffer size changed when offsets were filled in"
    return final, blobs.blobs


def _write(f, flatbuffer: bytes, blobs: list[memoryview]) -> None:
    crc = 0

    def emit(data) -> None:
        nonlocal crc
        f.write(data)
        crc = zlib.crc32(data, crc)

    position = 0
    for chunk in [flatbuffer, *blobs]:
        pad = _align(position) - position
        if pad:
            emit(b"\0" * pad)
        emit(chunk)
        position += pad + len(chunk)
    size_field = struct.pack("<Q", len(flatbuffer))
    emit(size_field)
    f.write(struct.pack("<I4s", crc, FOOTER_MAGIC))


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _pack(model: fb.ModelT) -> bytes:
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


class _BlobTable:
    """Data-section blobs; index i + 1 in Model.buffers (0 is the empty sentinel)."""

    def __init__(self) -> None:
        self.blobs: list[memoryview] = []

    def add(self, data) -> int:
        if isinstance(data, np.ndarray):
            if data.dtype == object:
                raise TypeError("string tensors cannot be stored in the data section")
            data = np.ascontiguousarray(data)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            data = data.reshape(-1).view(np.uint8)  # also for dtypes buffers cannot name (bfloat16)
        self.blobs.append(memoryview(data).cast("B"))
        return len(self.blobs)


def _model(artifact: Artifact, blobs: _BlobTable) -> fb.ModelT:
    model = fb.ModelT()
    model.version = artifact.version
    model.producer = artifact.producer
    model.options = fb.CompileOptionsT()
    model.options.dtype = artifact.options.dtype
    model.options.optLevel = artifact.options.opt_level
    model.options.invocation = artifact.options.invocation
    model.options.sourceFramework = artifact.options.source_framework
    model.target = _target(artifact)
    model.opset = artifact.opset
    model.inputs = [_value_info(v) for v in artifact.inputs]
    model.outputs = [_value_info(v) for v in artifact.outputs]
    model.partitions = [_partition(p, blobs) for p in artifact.partitions]
    model.nodesBeforePasses = artifact.nodes_before_passes
    model.nodesAfterPasses = artifact.nodes_after_passes
    model.layerPrecision = [_layer_precision(layer) for layer in artifact.layer_precision] or None
    model.outputSqnr = [_output_sqnr(name, value) for name, value in artifact.output_sqnr.items()] or None
    model.buffers = [fb.BufferT() for _ in range(len(blobs.blobs) + 1)]
    for buffer, blob in zip(model.buffers[1:], blobs.blobs):
        buffer.size = len(blob)
    return model


def _output_sqnr(name: str, value: float) -> fb.OutputSqnrT:
    out = fb.OutputSqnrT()
    out.name = name
    out.sqnrDb = float(value)
    return out


def _layer_precision(layer: LayerPrecision) -> fb.LayerPrecisionT:
    out = fb.LayerPrecisionT()
    out.name = layer.name
    out.opType = layer.op_type
    out.precision = layer.precision
    out.sqnrDb = float(layer.sqnr_db)
    out.reason = layer.reason
    return out


def _target(artifact: Artifact) -> fb.TargetT:
    spec = artifact.target
    target = fb.TargetT()
    target.name = spec.name
    target.sramBytes = spec.sram_bytes
    target.dramBytes = spec.dram_bytes
    target.dramBandwidth = spec.dram_bandwidth
    target.sramBandwidth = spec.sram_bandwidth
    target.hostLinkBandwidth = spec.host_link_bandwidth
    target.hostLinkLatencyNs = spec.host_link_latency_ns
    target.commandOverheadNs = spec.command_overhead_ns
    target.peak = []
    for precision, flops in sorted(spec.peak_flops.items()):
        peak = fb.PeakFlopsT()
        peak.dtype = dtypes.to_onnx(_PRECISION_DTYPES.get(precision, "int8"))
        peak.flopsPerS = flops
        target.peak.append(peak)
    target.specJson = spec.to_json()
    return target


_PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


def _value_info(value: ValueInfo) -> fb.ValueInfoT:
    info = fb.ValueInfoT()
    info.name = value.name
    info.dtype = dtypes.to_onnx(value.dtype)
    info.shape = None if value.shape is None else [-1 if d is None else int(d) for d in value.shape]
    info.layout = value.layout
    return info


def _partition(partition: Partition, blobs: _BlobTable) -> fb.PartitionT:
    out = fb.PartitionT()
    out.name = partition.name
    out.device = int(partition.device)
    out.inputs = [_value_info(v) for v in partition.inputs]
    out.outputs = [_value_info(v) for v in partition.outputs]
    if partition.npu_program is not None:
        out.npuProgram = _program(partition.npu_program, blobs)
    if partition.host_onnx is not None:
        out.hostSubgraph = fb.HostSubgraphT()
        out.hostSubgraph.onnxBuffer = blobs.add(partition.host_onnx)
    out.fallbackReasons = []
    for reason in partition.fallback_reasons:
        item = fb.FallbackReasonT()
        item.opName, item.opType, item.reason = reason.op_name, reason.op_type, reason.reason
        item.estSavingNs = float(reason.est_saving_ns)
        out.fallbackReasons.append(item)
    out.transfers = []
    for transfer in partition.transfers:
        item = fb.TransferT()
        item.direction = int(transfer.direction)
        item.tensor = transfer.tensor
        item.bytes = transfer.bytes
        item.estTimeNs = transfer.est_time_ns
        out.transfers.append(item)
    out.estTimeNs = partition.est_time_ns
    return out


def _program(program: NpuProgram, blobs: _BlobTable) -> fb.NpuProgramT:
    out = fb.NpuProgramT()
    out.tensors = [_tensor(t, blobs) for t in program.tensors]
    out.commands = [_command(c, blobs) for c in program.commands]
    out.peakSramBytes = program.peak_sram_bytes
    out.peakDramBytes = program.peak_dram_bytes
    out.weightBytes = program.weight_bytes
    return out


def _tensor(tensor: Tensor, blobs: _BlobTable) -> fb.TensorT:
    out = fb.TensorT()
    out.name = tensor.name
    out.dtype = dtypes.to_onnx(tensor.dtype)
    out.shape = [int(d) for d in tensor.shape]
    out.kind = int(tensor.kind)
    out.buffer = blobs.add(tensor.data) if tensor.data is not None else 0
    out.region = int(tensor.region)
    out.offset = tensor.offset
    out.size = tensor.size
    if tensor.quantization is not None:
        out.quantization = fb.QuantizationT()
        out.quantization.scale = [float(v) for v in tensor.quantization.scale]
        out.quantization.zeroPoint = [int(v) for v in tensor.quantization.zero_point]
        out.quantization.quantizedDimension = tensor.quantization.axis
    return out


def _command(command: Command, blobs: _BlobTable) -> fb.CommandT:
    out = fb.CommandT()
    out.kind = int(command.kind)
    out.opType = command.op_type
    out.domain = command.domain
    out.attributes = [_attribute(k, v, blobs) for k, v in sorted(command.attributes.items())]
    out.inputs = list(command.inputs)
    out.outputs = list(command.outputs)
    out.name = command.name
    out.sourceOps = list(command.source_ops)
    out.sourceLocation = command.source_location
    out.flops = command.flops
    out.sramBytes = command.sram_bytes
    out.dramBytes = command.dram_bytes
    out.estTimeNs = command.est_time_ns
    return out


def _attribute(name: str, value: Any, blobs: _BlobTable) -> fb.AttributeT:
    attr = fb.AttributeT()
    attr.name = name
    kind = fb.AttributeType
    if isinstance(value, np.ndarray):
        attr.type = kind.TENSOR
        attr.tensorBuffer = blobs.add(value)
        attr.tensorDtype = dtypes.to_onnx(value.dtype)
        attr.tensorShape = list(value.shape)
    elif isinstance(value, (bool, int, np.integer)):
        attr.type, attr.i = kind.INT, int(value)
    elif isinstance(value, (float, np.floating)):
        attr.type, attr.f = kind.FLOAT, float(value)
    elif isinstance(value, str):
        attr.type, attr.s = kind.STRING, value
    elif isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value) and value:
            attr.type, attr.strings = kind.STRINGS, list(value)
        elif any(isinstance(v, (float, np.floating)) for v in value):
            attr.type, attr.floats = kind.FLOATS, [float(v) for v in value]
        else:
            attr.type, attr.ints = kind.INTS, [int(v) for v in value]
    else:
        raise TypeError(f"attribute {name!r}: cannot store a {type(value).__name__} in an NPU command")
    return attr
