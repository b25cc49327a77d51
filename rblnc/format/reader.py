"""Reads a .rbln file into an Artifact: checks identifier, version and checksum first, then
maps the data section so constants are used in place (zero-copy)."""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .. import dtypes
from ..errors import ArtifactError
from ..target import TargetSpec
from . import rbln_generated as fb
from .artifact import (
    FILE_IDENTIFIER, FOOTER_MAGIC, FORMAT_VERSION, Artifact, Command, CommandKind,
    CompileOptions, Device, FallbackReason, MemoryRegion, NpuProgram, Partition, Tensor,
    TensorKind, Transfer, TransferDirection, ValueInfo,
)
from .writer import FOOTER

_MIN_SIZE = 8 + FOOTER.size  # root offset + identifier, footer


def load_artifact(path: str | os.PathLike, *, verify_checksum: bool = True) -> Artifact:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _MIN_SIZE:
                raise ArtifactError(path, f"file is truncated ({size} bytes, not an .rbln model)")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ArtifactError(path, "no such file") from None
    except IsADirectoryError:
        raise ArtifactError(path, "is a directory, not an .rbln file") from None
    except PermissionError:
        raise ArtifactError(path, "permission denied") from None
    return parse_artifact(data, path, verify_checksum=verify_checksum)


def parse_artifact(data, origin: object = "<bytes>", *, verify_checksum: bool = True) -> Artifact:
    """Parse from any buffer (bytes, mmap). Arrays of constants are views into `data`."""
    view = memoryview(data)
    size = len(view)
    if size < _MIN_SIZE:
        raise ArtifactError(origin, f"file is truncated ({size} bytes, not an .rbln model)")
    identifier = bytes(view[4:8])
    if identifier != FILE_IDENTIFIER:
        raise ArtifactError(origin, f"not an .rbln file (identifier {identifier!r}, expected {FILE_IDENTIFIER!r})")
    fb_size, crc, magic = FOOTER.unpack_from(view, size - FOOTER.size)
    if magic != FOOTER_MAGIC or not _MIN_SIZE - FOOTER.size <= fb_size <= size - FOOTER.size:
        raise ArtifactError(origin, "file is truncated or damaged (no valid footer at its end)")
    flatbuffer = view[:fb_size]
    try:
        root = fb.Model.GetRootAs(flatbuffer, 0)
        version = root.Version()
    except (struct.error, IndexError, ValueError) as exc:
        raise ArtifactError(origin, f"corrupt model header ({exc})") from None
    if version > FORMAT_VERSION:
        raise ArtifactError(
            origin, f"format version {version} is newer than this rblnc reads ({FORMAT_VERSION}); "
            "upgrade rblnc"
        )
    if verify_checksum:
        actual = zlib.crc32(view[: size - FOOTER.size + 8])
        if actual != crc:
            raise ArtifactError(
                origin, f"checksum mismatch (stored {crc:08x}, computed {actual:08x}): the file is corrupt"
            )
    try:
        model = fb.ModelT.InitFromObj(root)
        return _artifact(model, view, origin)
    except ArtifactError:
        raise
    except Exception as exc:  # the generated accessors raise whatever struct/numpy raise
        raise ArtifactError(origin, f"corrupt model ({type(exc).__name__}: {exc})") from None


class _Buffers:
    def __init__(self, model: fb.ModelT, view: memoryview, origin: object):
        self.entries = model.buffers or []
        self.view = view
        self.origin = origin
        self.data_end = len(view) - FOOTER.size

    def bytes_of(self, index: int) -> memoryview:
        if not 0 <= index < len(self.entries):
            raise ArtifactError(self.origin, f"buffer index {index} out of range ({len(self.entries)} buffers)")
        entry = self.entries[index]
        if entry.offset + entry.size > self.data_end:
            raise ArtifactError(self.origin, f"buffer {index} runs past the end of the data section")
        return self.view[entry.offset: entry.offset + entry.size]

    def array(self, index: int, dtype: np.dtype, shape: tuple, what: str) -> np.ndarray:
        raw = self.bytes_of(index)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != len(raw):
            raise ArtifactError(
                self.origin, f"{what}: {len(raw)} bytes stored for shape {list(shape)} of {dtype.name}"
            )
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def _artifact(model: fb.ModelT, view: memoryview, origin: object) -> Artifact:
    buffers = _Buffers(model, view, origin)
    options = model.options or fb.CompileOptionsT()
    target_json = model.target.specJson if model.target else None
    if not target_json:
        raise ArtifactError(origin, "the file records no target spec")
    return Artifact(
        version=model.version,
        producer=model.producer or "",
        options=CompileOptions(
            dtype=options.dtype or "fp32",
            opt_level=options.optLevel,
            invocation=options.invocation or "",
            source_framework=options.sourceFramework or "",
        ),
        target=TargetSpec.from_json(target_json),
        opset=model.opset,
        inputs=[_value_info(v) for v in model.inputs or []],
        outputs=[_value_info(v) for v in model.outputs or []],
        partitions=[_partition(p, buffers) for p in model.partitions or []],
        nodes_before_passes=model.nodesBeforePasses,
        nodes_after_passes=model.nodesAfterPasses,
    )


def _strings(values) -> list[str]:
    """Vectors of strings come back from the object API as bytes."""
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values or []]


def _shape(values) -> tuple:
    return tuple(int(v) for v in values) if values is not None else ()


def _value_info(info: fb.ValueInfoT) -> ValueInfo:
    return ValueInfo(
        name=info.name,
        dtype=dtypes.from_onnx(info.dtype),
        shape=None if info.shape is None else tuple(None if d < 0 else d for d in _shape(info.shape)),
        layout=info.layout or "",
    )


def _partition(p: fb.PartitionT, buffers: _Buffers) -> Partition:
    device = Device(p.device)
    partition = Partition(
        name=p.name,
        device=device,
        inputs=[_value_info(v) for v in p.inputs or []],
        outputs=[_value_info(v) for v in p.outputs or []],
        fallback_reasons=[FallbackReason(r.opName, r.opType or "", r.reason or "")
                          for r in p.fallbackReasons or []],
        transfers=[Transfer(TransferDirection(t.direction), t.tensor, t.bytes, t.estTimeNs)
                   for t in p.transfers or []],
        est_time_ns=p.estTimeNs,
    )
    if device == Device.NPU:
        if p.npuProgram is None:
            raise ArtifactError(buffers.origin, f"NPU partition {p.name!r} has no program")
        partition.npu_program = _program(p.npuProgram, buffers)
    else:
        if p.hostSubgraph is None or not p.hostSubgraph.onnxBuffer:
            raise ArtifactError(buffers.origin, f"host partition {p.name!r} has no ONNX subgraph")
        partition.host_onnx = buffers.bytes_of(p.hostSubgraph.onnxBuffer)
    return partition


def _program(program: fb.NpuProgramT, buffers: _Buffers) -> NpuProgram:
    tensors = []
    for t in program.tensors or []:
        dtype, shape, kind = dtypes.from_onnx(t.dtype), _shape(t.shape), TensorKind(t.kind)
        data = None
        if kind == TensorKind.CONSTANT:
            data = buffers.array(t.buffer, dtype, shape, f"constant {t.name!r}")
        tensors.append(Tensor(t.name, dtype, shape, kind, data, MemoryRegion(t.region), t.offset, t.size))
    commands = []
    for c in program.commands or []:
        for index in list(_shape(c.inputs)) + list(_shape(c.outputs)):
            if not -1 <= index < len(tensors):
                raise ArtifactError(buffers.origin, f"command {c.name!r} addresses tensor {index} of {len(tensors)}")
        commands.append(Command(
            op_type=c.opType or "",
            inputs=list(_shape(c.inputs)),
            outputs=list(_shape(c.outputs)),
            name=c.name or "",
            attributes={a.name: _attribute_value(a, buffers) for a in c.attributes or []},
            domain=c.domain or "",
            kind=CommandKind(c.kind),
            source_ops=_strings(c.sourceOps),
            source_location=c.sourceLocation or "",
            flops=c.flops,
            sram_bytes=c.sramBytes,
            dram_bytes=c.dramBytes,
            est_time_ns=c.estTimeNs,
        ))
    return NpuProgram(tensors, commands, program.peakSramBytes, program.peakDramBytes, program.weightBytes)


def _attribute_value(attr: fb.AttributeT, buffers: _Buffers):
    kind = fb.AttributeType
    if attr.type == kind.FLOAT:
        return attr.f
    if attr.type == kind.INT:
        return attr.i
    if attr.type == kind.STRING:
        return attr.s or ""
    if attr.type == kind.FLOATS:
        return [float(v) for v in (attr.floats if attr.floats is not None else [])]
    if attr.type == kind.INTS:
        return list(_shape(attr.ints))
    if attr.type == kind.STRINGS:
        return _strings(attr.strings)
    if attr.type == kind.TENSOR:
        dtype = dtypes.from_onnx(attr.tensorDtype)
        return buffers.array(attr.tensorBuffer, dtype, _shape(attr.tensorShape), f"attribute {attr.name!r}")
    raise ArtifactError(buffers.origin, f"attribute {attr.name!r} has unknown type {attr.type}")
