"""The compiled model in memory: what the writer serializes and the reader returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..quant_params import QuantParams
from ..target import TargetSpec

# 2: quantised tensors (Tensor.quantization); 3: int8 sensitivity (Model.layer_precision, .output_sqnr);
# see the revision history in schemas/rbln.fbs.
FORMAT_VERSION = 3
FILE_IDENTIFIER = b"RBLN"
FOOTER_MAGIC = b"RBLE"
ALIGNMENT = 64


class Device(enum.IntEnum):
    NPU = 0
    HOST = 1


class TensorKind(enum.IntEnum):
    CONSTANT = 0
    ACTIVATION = 1
    PROGRAM_INPUT = 2
    PROGRAM_OUTPUT = 3


class MemoryRegion(enum.IntEnum):
    SRAM = 0
    DRAM = 1


class CommandKind(enum.IntEnum):
    KERNEL = 0
    DMA = 1


class TransferDirection(enum.IntEnum):
    HOST_TO_DEVICE = 0
    DEVICE_TO_HOST = 1


@dataclass
class ValueInfo:
    name: str
    dtype: np.dtype
    # Ints; a None dimension (or a None shape: rank unknown) only for host-only values.
    shape: tuple | None
    layout: str = ""

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class Tensor:
    name: str
    dtype: np.dtype
    shape: tuple
    kind: TensorKind
    # CONSTANT only. Read back from a file it is a read-only view of the memory map.
    data: np.ndarray | None = None
    region: MemoryRegion = MemoryRegion.DRAM
    offset: int = 0
    size: int = 0
    # Integer tensors of int8 programs: how their values map to reals (None for the others).
    quantization: QuantParams | None = None


@dataclass
class Command:
    op_type: str
    inputs: list[int]
    outputs: list[int]
    name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    kind: CommandKind = CommandKind.KERNEL
    source_ops: list[str] = field(default_factory=list)
    source_location: str = ""
    flops: int = 0
    sram_bytes: int = 0
    dram_bytes: int = 0
    est_time_ns: float = 0.0


@dataclass
class NpuProgram:
    tensors: list[Tensor]
    commands: list[Command]
    peak_sram_bytes: int = 0
    peak_dram_bytes: int = 0
    weight_bytes: int = 0


@dataclass
class FallbackReason:
    op_name: str
    op_type: str
    reason: str
    # Set when the cost model moved an NPU-supported op to the host: modelled saving (ns).
    est_saving_ns: float = 0.0


@dataclass
class Transfer:
    direction: TransferDirection
    tensor: str
    bytes: int
    est_time_ns: float = 0.0


@dataclass
class Partition:
    name: str
    device: Device
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    npu_program: NpuProgram | None = None
    # HOST only: a serialized ONNX model whose inputs/outputs are named like the partition's.
    host_onnx: bytes | memoryview | None = None
    fallback_reasons: list[FallbackReason] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    est_time_ns: float = 0.0


@dataclass
class CompileOptions:
    dtype: str = "fp32"
    opt_level: int = 2
    invocation: str = ""
    source_framework: str = "onnx"


@dataclass
class LayerPrecision:
    """An op rblnc's own int8 quantisation considered: the precision it computes in, its output's
    SQNR (dB) against the float model on the calibration data, and why it stays float ("" if int8)."""

    name: str
    op_type: str
    precision: str
    sqnr_db: float
    reason: str = ""


@dataclass
class Artifact:
    options: CompileOptions
    target: TargetSpec
    opset: int
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    partitions: list[Partition]
    producer: str = ""
    version: int = FORMAT_VERSION
    nodes_before_passes: int = 0
    nodes_after_passes: int = 0
    # Since version 3; empty unless quantised by rblnc from calibration data.
    layer_precision: list[LayerPrecision] = field(default_factory=list)
    # Since version 3: {model output: SQNR in dB against the float model once quantised}; empty
    # unless rblnc's own quantisation put some op in int8.
    output_sqnr: dict[str, float] = field(default_factory=dict)

    def constant_bytes(self) -> int:
        return sum(
            t.data.nbytes
            for p in self.partitions if p.npu_program
            for t in p.npu_program.tensors if t.data is not None
        )
