"""Reads a .rbln file into an Artifact without trusting it; constants stay zero-copy views.

Identifier, footer, version and checksum first, then a structural walk of the FlatBuffer
(verify.py), then the meaning of every offset, size, shape, index and name, before the data
section is used. Nothing in the file is ever executed."""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import ArtifactError
from ..quant_params import QuantParams
from ..target import TargetSpec
from . import rbln_generated as fb
from .artifact import (
    ALIGNMENT, FILE_IDENTIFIER, FOOTER_MAGIC, FORMAT_VERSION, Artifact, Command, CommandKind,
    CompileOptions, Device, FallbackReason, LayerPrecision, MemoryRegion, NpuProgram, Partition, Tensor,
    TensorKind, Transfer, TransferDirection, ValueInfo,
)
from .verify import VerifyError, load_schema, verify_flatbuffer
from .writer import FOOTER

_MIN_SIZE = 8 + FOOTER.size  # root offset + identifier, footer
# Byte sizes past this would wrap the int64 arithmetic of numpy and of the reports.
MAX_TENSOR_BYTES = 2**63 - 1
# numpy's limit before 2.0 (64 since); no model has tensors of more dimensions.
MAX_RANK = 32
_UNDEFINED = fb.DType.UNDEFINED


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
    except OSError as exc:  # a FIFO, a device, an unreadable mount
        raise ArtifactError(path, f"cannot be read ({exc.strerror or exc})") from None
    return parse_artifact(data, path, verify_checksum=verify_checksum)


def parse_artifact(data, origin: object = "<bytes>", *, verify_checksum: bool = True) -> Artifact:
    """Parse from any buffer (bytes, mmap). Arrays of constants are views into `data`."""
    view = memoryview(data).cast("B")
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
    version = _read_version(flatbuffer)
    if version is not None and version > FORMAT_VERSION:
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
        verify_flatbuffer(flatbuffer)
    except VerifyError as exc:
        raise ArtifactError(origin, f"corrupt model structure at {exc.where}: {exc.problem}") from None
    if not version:
        raise ArtifactError(origin, f"format version {version or 0} is not one rblnc ever wrote (1..{FORMAT_VERSION})")
    try:
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(flatbuffer, 0))
    except Exception as exc:  # a gap in the verifier: still one clear line, never a traceback
        raise ArtifactError(origin, f"corrupt model ({type(exc).__name__}: {exc})") from None
    return _Reader(model, view, fb_size, origin).artifact()


def _read_version(flatbuffer: memoryview) -> int | None:
    """Model.version, read with every offset checked (None when they do not lead to it), so
    that a file from a newer rblnc gets "upgrade rblnc" rather than a structure error."""
    schema = load_schema()
    slot = next(f.slot for f in schema.tables[schema.root_type] if f.name == "version")
    size = len(flatbuffer)

    def read(fmt: str, at: int):
        if at < 0 or at + struct.calcsize(fmt) > size:
            raise IndexError(at)
        return struct.unpack_from(fmt, flatbuffer, at)[0]

    try:
        root = read("<I", 0)
        vtable = root - read("<i", root)
        vtable_size = read("<H", vtable)
        entry = 4 + 2 * slot
        field_offset = read("<H", vtable + entry) if entry + 2 <= vtable_size else 0
        return read("<I", root + field_offset) if field_offset else 0
    except IndexError:
        return None


class _Reader:
    """Turns the verified object tree into an Artifact, checking what the structure cannot
    say: buffer spans, sizes against shapes, indices, enum meanings and dataflow."""

    def __init__(self, model: fb.ModelT, view: memoryview, fb_size: int, origin: object):
        self.model = model
        self.view = view
        self.origin = origin
        self.data_start = (fb_size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        self.data_end = len(view) - FOOTER.size
        self.buffers = model.buffers or []

    def fail(self, where: str, problem: str):
        raise ArtifactError(self.origin, f"{where}: {problem}" if where else problem)

    # -- whole model ------------------------------------------------------------------------

    def artifact(self) -> Artifact:
        model = self.model
        self._check_buffers()
        options = model.options or fb.CompileOptionsT()
        target = self._target()
        inputs = [self._value_info(v, f"model input {i}") for i, v in enumerate(model.inputs or [])]
        outputs = [self._value_info(v, f"model output {i}") for i, v in enumerate(model.outputs or [])]
        partitions = [self._partition(p, i, target) for i, p in enumerate(model.partitions or [])]
        self._check_dataflow(inputs, outputs, partitions)
        return Artifact(
            version=model.version,
            producer=model.producer or "",
            options=CompileOptions(
                dtype=options.dtype or "fp32",
                opt_level=options.optLevel,
                invocation=options.invocation or "",
                source_framework=options.sourceFramework or "",
            ),
            target=target,
            opset=model.opset,
            inputs=inputs,
            outputs=outputs,
            partitions=partitions,
            nodes_before_passes=model.nodesBeforePasses,
            nodes_after_passes=model.nodesAfterPasses,
            layer_precision=[self._layer_precision(layer, i) for i, layer in enumerate(model.layerPrecision or [])],
            output_sqnr=self._output_sqnr(model.outputSqnr or []),
        )

    def _output_sqnr(self, entries: list) -> dict[str, float]:
        result = {}
        for index, entry in enumerate(entries):
            if not math.isfinite(entry.sqnrDb):
                self.fail(f"output_sqnr {index} ({entry.name})", f"sqnr_db is {entry.sqnrDb}, not a finite number")
            if entry.name in result:
                self.fail(f"output_sqnr {index} ({entry.name})", "the output is listed twice")
            result[entry.name] = float(entry.sqnrDb)
        return result

    def _layer_precision(self, layer: fb.LayerPrecisionT, index: int) -> LayerPrecision:
        if not math.isfinite(layer.sqnrDb):
            self.fail(f"layer_precision {index} ({layer.name})", f"sqnr_db is {layer.sqnrDb}, not a finite number")
        return LayerPrecision(layer.name, layer.opType or "", layer.precision or "", float(layer.sqnrDb),
                              layer.reason or "")

    def _check_buffers(self) -> None:
        if self.buffers and (self.buffers[0].offset, self.buffers[0].size) != (0, 0):
            self.fail("buffer 0", "the empty sentinel has data (offset "
                                  f"{self.buffers[0].offset}, {self.buffers[0].size} bytes)")
        for index, entry in enumerate(self.buffers[1:], start=1):
            if entry.offset % ALIGNMENT:
                self.fail(f"buffer {index}", f"offset {entry.offset} is not a multiple of {ALIGNMENT}")
            if entry.offset < self.data_start or entry.offset + entry.size > self.data_end:
                self.fail(f"buffer {index}", f"{entry.size} bytes at offset {entry.offset} lie outside the "
                                             f"data section [{self.data_start}, {self.data_end})")

    def _target(self) -> TargetSpec:
        text = self.model.target.specJson if self.model.target else None
        if not text:
            self.fail("", "the file records no target spec")
        try:
            spec = TargetSpec.from_json(text)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            self.fail("target spec", f"not a valid spec ({type(exc).__name__}: {_first_line(exc)})")
        for f in dataclasses.fields(TargetSpec):
            value = getattr(spec, f.name)
            if f.type in ("int", "float"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value < 0:
                    self.fail("target spec", f"{f.name} must be a non-negative number, got {repr(value)[:60]}")
            elif f.type == "str" and not isinstance(value, str):
                self.fail("target spec", f"{f.name} must be a string, got {type(value).__name__}")
        if not isinstance(spec.peak_flops, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in spec.peak_flops.items()):
            self.fail("target spec", "peak_flops must map precision names to numbers")
        if not all(isinstance(op, str) for op in spec.supported_ops):
            self.fail("target spec", "supported_ops must be a list of op names")
        if not isinstance(spec.extra, dict):
            self.fail("target spec", "extra must be a table")
        return spec

    def _check_dataflow(self, inputs, outputs, partitions) -> None:
        available = {v.name for v in inputs}
        for partition in partitions:
            for value in partition.inputs:
                if value.name not in available:
                    self.fail(f"partition {_quote(partition.name)}", f"reads {_quote(value.name)}, which no model input "
                                                               "or earlier partition provides")
            available.update(v.name for v in partition.outputs)
        for value in outputs:
            if value.name not in available:
                self.fail(f"model output {_quote(value.name)}", "no partition produces it")

    # -- pieces -----------------------------------------------------------------------------

    def _dtype(self, code: int, where: str, *, npu: bool = False) -> np.dtype:
        try:
            dtype = dtypes.from_onnx(code) if code != _UNDEFINED else None
        except dtypes.DTypeError:
            dtype = None
        if dtype is None or (npu and dtype == np.dtype(object)):
            self.fail(where, f"element type code {code} is not one an {'NPU tensor' if npu else 'rblnc value'} "
                             "can have")
        return dtype

    def _shape(self, values, where: str, dtype: np.dtype, *, unknown_allowed: bool) -> tuple:
        shape = tuple(int(v) for v in values) if values is not None else ()
        if len(shape) > MAX_RANK:
            self.fail(where, f"rank {len(shape)} is more than the {MAX_RANK} dimensions rblnc supports")
        lowest = -1 if unknown_allowed else 0
        for axis, dim in enumerate(shape):
            if dim < lowest:
                self.fail(where, f"dimension {dim} at axis {axis} of shape {_dims(shape)}")
        # Zero-sized dimensions do not excuse huge ones: numpy refuses [0, 2**62, 2**62] too.
        count = math.prod(max(d, 1) for d in shape)
        if count * max(dtype.itemsize, 1) > MAX_TENSOR_BYTES:
            self.fail(where, f"shape {_dims(shape)} of {dtype.name} is larger than any tensor can be")
        return shape

    def _value_info(self, info: fb.ValueInfoT, where: str) -> ValueInfo:
        where = f"{where} {_quote(info.name)}"
        dtype = self._dtype(info.dtype, where)
        shape = None
        if info.shape is not None:
            dims = self._shape(info.shape, where, dtype, unknown_allowed=True)
            shape = tuple(None if d < 0 else d for d in dims)
        return ValueInfo(name=info.name, dtype=dtype, shape=shape, layout=info.layout or "")

    def _buffer(self, index: int, where: str) -> memoryview:
        if not 0 <= index < len(self.buffers):
            self.fail(where, f"buffer index {index} out of range ({len(self.buffers)} buffers)")
        entry = self.buffers[index]
        return self.view[entry.offset: entry.offset + entry.size]

    def _array(self, index: int, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
        raw = self._buffer(index, where)
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            self.fail(where, f"{len(raw)} bytes stored for shape {_dims(shape)} of {dtype.name} "
                             f"({count * dtype.itemsize} expected)")
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _partition(self, p: fb.PartitionT, index: int, target: TargetSpec) -> Partition:
        where = f"partition {index} {_quote(p.name)}"
        device = Device(p.device)  # the verifier checked the enum value
        partition = Partition(
            name=p.name,
            device=device,
            inputs=[self._value_info(v, f"{where} input {i}") for i, v in enumerate(p.inputs or [])],
            outputs=[self._value_info(v, f"{where} output {i}") for i, v in enumerate(p.outputs or [])],
            fallback_reasons=[FallbackReason(r.opName, r.opType or "", r.reason or "", r.estSavingNs)
                              for r in p.fallbackReasons or []],
            transfers=[Transfer(TransferDirection(t.direction), t.tensor, t.bytes, t.estTimeNs)
                       for t in p.transfers or []],
            est_time_ns=p.estTimeNs,
        )
        if device == Device.NPU:
            if p.npuProgram is None:
                self.fail(where, "NPU partition has no program")
            partition.npu_program = self._program(p.npuProgram, where, target)
            self._check_program_boundary(partition, where)
        else:
            if p.hostSubgraph is None or not p.hostSubgraph.onnxBuffer:
                self.fail(where, "host partition has no ONNX subgraph")
            partition.host_onnx = self._buffer(p.hostSubgraph.onnxBuffer, f"{where} ONNX subgraph")
            if not len(partition.host_onnx):
                self.fail(where, "host partition's ONNX subgraph is empty")
        return partition

    def _check_program_boundary(self, partition: Partition, where: str) -> None:
        """The program's inputs are the partition's inputs, its outputs cover the partition's.
        A floating input may be held in the program's precision (bf16, fp16): the runtime
        converts it on the way in."""
        program = partition.npu_program
        declared = {v.name: v for v in partition.inputs}
        produced = {}
        for t in program.tensors:
            if t.kind == TensorKind.PROGRAM_INPUT:
                value = declared.get(t.name)
                if value is None:
                    self.fail(where, f"program input {_quote(t.name)} is not an input of the partition")
                if not _boundary_types_agree(value.dtype, t.dtype) or value.shape != t.shape:
                    self.fail(where, f"program input {_quote(t.name)} is {t.dtype.name}{_dims(t.shape)}, the "
                                     f"partition declares {value.dtype.name}{_dims(value.shape)}")
            elif t.kind == TensorKind.PROGRAM_OUTPUT:
                produced[t.name] = t
        for value in partition.outputs:
            if value.name not in produced:
                self.fail(where, f"output {_quote(value.name)} is not an output of its program")

    def _program(self, program: fb.NpuProgramT, where: str, target: TargetSpec) -> NpuProgram:
        tensors = [self._tensor(t, i, where, target) for i, t in enumerate(program.tensors or [])]
        commands = [self._command(c, i, tensors, where) for i, c in enumerate(program.commands or [])]
        self._check_program_dataflow(tensors, commands, where)
        return NpuProgram(tensors, commands, program.peakSramBytes, program.peakDramBytes, program.weightBytes)

    def _tensor(self, t: fb.TensorT, index: int, where: str, target: TargetSpec) -> Tensor:
        where = f"{where} tensor {index} {_quote(t.name)}"
        dtype = self._dtype(t.dtype, where, npu=True)
        shape = self._shape(t.shape, where, dtype, unknown_allowed=False)
        kind, region = TensorKind(t.kind), MemoryRegion(t.region)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > target.dram_bytes:
            self.fail(where, f"shape {_dims(shape)} of {dtype.name} ({nbytes} bytes) exceeds the device's "
                             f"{target.dram_bytes} bytes of DRAM")
        if kind != TensorKind.CONSTANT:
            capacity = target.sram_bytes if region == MemoryRegion.SRAM else target.dram_bytes
            if t.offset + t.size > capacity:
                self.fail(where, f"placed at {region.name} bytes [{t.offset}, {t.offset + t.size}), past the "
                                 f"{capacity} bytes of {region.name}")
        data = self._array(t.buffer, dtype, shape, where) if kind == TensorKind.CONSTANT else None
        quantization = self._quantization(t.quantization, shape, where) if t.quantization is not None else None
        return Tensor(t.name, dtype, shape, kind, data, region, t.offset, t.size, quantization)

    def _quantization(self, q: fb.QuantizationT, shape: tuple, where: str) -> QuantParams:
        scale = np.asarray(q.scale if q.scale is not None else [], dtype=np.float32)
        zero_point = np.asarray(q.zeroPoint if q.zeroPoint is not None else [], dtype=np.int64)
        axis = q.quantizedDimension
        if scale.size == 0 or scale.size != zero_point.size:
            self.fail(where, f"quantization has {scale.size} scale(s) and {zero_point.size} zero point(s); "
                             "it needs the same number, at least one")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            self.fail(where, "quantization scale is not a positive finite number")
        if scale.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scale.size):
            self.fail(where, f"{scale.size} per-channel scales do not match dimension {axis} of shape {_dims(shape)}")
        return QuantParams(scale, zero_point, axis if scale.size > 1 else -1)

    def _command(self, c: fb.CommandT, index: int, tensors: list[Tensor], where: str) -> Command:
        where = f"{where} command {index} {_quote(c.name or '')}"
        inputs, outputs = _ints(c.inputs), _ints(c.outputs)
        for i in inputs + outputs:
            if not -1 <= i < len(tensors):
                self.fail(where, f"addresses tensor {i}, the program has {len(tensors)}")
        attributes = {}
        for a in c.attributes or []:
            if a.name in attributes:
                self.fail(where, f"attribute {_quote(a.name)} appears twice")
            attributes[a.name] = self._attribute_value(a, f"{where} attribute {_quote(a.name)}")
        return Command(
            op_type=c.opType or "",
            inputs=inputs,
            outputs=outputs,
            name=c.name or "",
            attributes=attributes,
            domain=c.domain or "",
            kind=CommandKind(c.kind),
            source_ops=_strings(c.sourceOps),
            source_location=c.sourceLocation or "",
            flops=c.flops,
            sram_bytes=c.sramBytes,
            dram_bytes=c.dramBytes,
            est_time_ns=c.estTimeNs,
        )

    def _check_program_dataflow(self, tensors: list[Tensor], commands: list[Command], where: str) -> None:
        """Commands run in order: each reads constants, program inputs or earlier outputs, and
        writes only activations and program outputs. A DMA command counts like a kernel: the
        copy it makes (a spill or prefetch) is a value later commands may read."""
        ready = {i for i, t in enumerate(tensors) if t.kind in (TensorKind.CONSTANT, TensorKind.PROGRAM_INPUT)}
        for index, command in enumerate(commands):
            for i in command.inputs:
                if i >= 0 and i not in ready:
                    self.fail(f"{where} command {index} {_quote(command.name)}",
                              f"reads tensor {i} {_quote(tensors[i].name)} before any command writes it")
            for i in command.outputs:
                if i >= 0 and tensors[i].kind not in (TensorKind.ACTIVATION, TensorKind.PROGRAM_OUTPUT):
                    self.fail(f"{where} command {index} {_quote(command.name)}",
                              f"writes tensor {i} {_quote(tensors[i].name)}, a {tensors[i].kind.name.lower()}")
                ready.add(i)
        for i, t in enumerate(tensors):
            if t.kind == TensorKind.PROGRAM_OUTPUT and i not in ready:
                self.fail(where, f"program output {_quote(t.name)} is written by no command")

    def _attribute_value(self, attr: fb.AttributeT, where: str) -> Any:
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
            return _ints(attr.ints)
        if attr.type == kind.STRINGS:
            return _strings(attr.strings)
        if attr.type == kind.TENSOR:
            dtype = self._dtype(attr.tensorDtype, where, npu=True)
            shape = self._shape(attr.tensorShape, where, dtype, unknown_allowed=False)
            return self._array(attr.tensorBuffer, dtype, shape, where)
        self.fail(where, f"unknown attribute type {attr.type}")


def _strings(values) -> list[str]:
    """Vectors of strings come back from the object API as bytes (the verifier checked UTF-8)."""
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values or []]


def _ints(values) -> list[int]:
    return [int(v) for v in values] if values is not None else []


def _quote(name: str, limit: int = 60) -> str:
    """A name as it appears in messages: quoted and escaped (one line), cut when forged long."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _dims(shape) -> str:
    """A shape for a message; forged shapes can be long."""
    if shape is None:
        return "[?]"
    dims = ["?" if d is None else str(d) for d in shape]
    return "[" + ", ".join(dims if len(dims) <= 8 else dims[:6] + [f"... {len(dims)} dims"]) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _boundary_types_agree(host: np.dtype, device: np.dtype) -> bool:
    return host == device or (dtypes.is_float(host) and dtypes.is_float(device))
