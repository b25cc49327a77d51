"""The NPU target spec: memory, links, compute and supported ops, described by data (TOML/JSON)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import RBLNError

_PRESETS = Path(__file__).parent / "targets"
DEFAULT_TARGET = "rbln-ca12"
INT8_ACTIVATION_SCHEMES = ("asymmetric", "symmetric")


class TargetSpecError(RBLNError, ValueError):
    """A target spec file is missing, malformed or incomplete."""


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    sram_bytes: int
    dram_bytes: int
    dram_bandwidth: float           # bytes/s
    sram_bandwidth: float           # bytes/s
    host_link_bandwidth: float      # bytes/s
    host_link_latency_ns: float     # per transfer
    command_overhead_ns: float      # per NPU command
    compute_efficiency: float       # fraction of peak reached by a well-shaped kernel
    peak_flops: dict[str, float]    # FLOP/s per precision name ("fp32", "fp16", "bf16", "int8")
    supported_ops: tuple[str, ...]
    max_rank: int = 6
    max_kernel_size: int = 16
    max_stride: int = 8
    extra: dict[str, Any] = field(default_factory=dict)  # sections this version does not read
    # Peak FLOP/s of the vector unit (elementwise, pooling, normalisation) per precision; an
    # absent precision falls back to a sixteenth of `peak_flops` (see docs/targets.md).
    vector_flops: dict[str, float] = field(default_factory=dict)
    # A DMA between device DRAM and on-chip SRAM (a spill or a reload): setup time per transfer.
    dma_latency_ns: float = 500.0
    # The host CPU that runs fallback partitions, as a roofline: FLOP/s in fp32 reached by its
    # kernels, memory bandwidth, and the dispatch cost per op.
    host_flops: float = 1.0e12
    host_memory_bandwidth: float = 50e9
    host_op_overhead_ns: float = 5_000.0
    # Per op type: attribute -> the values the NPU kernels implement (others go to the host).
    op_attributes: dict[str, dict[str, list]] = field(default_factory=dict)
    # How the NPU's int8 activations are quantised by rblnc's own calibration: "asymmetric" (a
    # zero point per tensor, TFLite's and onnxruntime's default) or "symmetric" (zero point 0,
    # as TensorRT and NPUs without zero-point hardware take them).
    int8_activations: str = "asymmetric"

    def peak(self, precision: str, *, vector: bool = False) -> float:
        """FLOP/s of the matrix engines (or, with `vector`, the vector unit) in `precision`."""
        if precision not in self.peak_flops:
            raise TargetSpecError(f"target {self.name} gives no peak FLOP/s for {precision}")
        if vector:
            return self.vector_flops.get(precision, self.peak_flops[precision] / 16)
        return self.peak_flops[precision]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TargetSpec":
        data = json.loads(text)
        data["supported_ops"] = tuple(data["supported_ops"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_target(spec: str | Path | TargetSpec | None = None) -> TargetSpec:
    """A preset name ("rbln-ca12"), a .toml/.json file, or a TargetSpec; None = the default."""
    if isinstance(spec, TargetSpec):
        return spec
    if spec is None:
        spec = DEFAULT_TARGET
    path = Path(spec)
    if not path.suffix and (_PRESETS / f"{spec}.toml").is_file():
        path = _PRESETS / f"{spec}.toml"
    if not path.is_file():
        presets = sorted(p.stem for p in _PRESETS.glob("*.toml"))
        raise TargetSpecError(f"target {str(spec)!r}: no such file or preset (presets: {', '.join(presets)})")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix != ".json" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TargetSpecError(f"{path}: cannot parse target spec ({exc})") from None
    return _from_sections(data, str(path))


def _from_sections(data: dict, origin: str) -> TargetSpec:
    def need(section: str, key: str):
        try:
            return data[section][key]
        except (KeyError, TypeError):
            raise TargetSpecError(f"{origin}: missing [{section}] {key}") from None

    ops = data.get("ops", {})
    host = data.get("host", {})
    compute = data.get("compute", {})
    int8 = data.get("int8", {})
    known_sections = {"name", "description", "memory", "host_link", "compute", "ops", "host", "int8"}
    try:
        spec = TargetSpec(
            name=str(data.get("name", Path(origin).stem)),
            description=str(data.get("description", "")),
            sram_bytes=int(need("memory", "sram_bytes")),
            dram_bytes=int(need("memory", "dram_bytes")),
            dram_bandwidth=float(need("memory", "dram_bandwidth")),
            sram_bandwidth=float(need("memory", "sram_bandwidth")),
            host_link_bandwidth=float(need("host_link", "bandwidth")),
            host_link_latency_ns=float(need("host_link", "latency_ns")),
            command_overhead_ns=float(need("compute", "command_overhead_ns")),
            compute_efficiency=float(need("compute", "efficiency")),
            peak_flops={str(k): float(v) for k, v in need("compute", "peak_flops").items()},
            supported_ops=tuple(str(o) for o in ops.get("supported", ())),
            max_rank=int(ops.get("max_rank", 6)),
            max_kernel_size=int(ops.get("max_kernel_size", 16)),
            max_stride=int(ops.get("max_stride", 8)),
            extra={k: v for k, v in data.items() if k not in known_sections},
            vector_flops={str(k): float(v) for k, v in compute.get("vector_flops", {}).items()},
            dma_latency_ns=float(compute.get("dma_latency_ns", 500.0)),
            host_flops=float(host.get("flops", 1.0e12)),
            host_memory_bandwidth=float(host.get("memory_bandwidth", 50e9)),
            host_op_overhead_ns=float(host.get("op_overhead_ns", 5_000.0)),
            op_attributes={str(op): {str(a): list(v) for a, v in attrs.items()}
                           for op, attrs in ops.get("attributes", {}).items()},
            int8_activations=str(int8.get("activations", "asymmetric")),
        )
        _check(spec, origin)
        return spec
    except (TypeError, ValueError, AttributeError) as exc:
        raise TargetSpecError(f"{origin}: {exc}") from None


def _check(spec: TargetSpec, origin: str) -> None:
    """Figures the timing model and the memory plan divide by or compare against must make sense."""
    positive = {
        "[memory] sram_bytes": spec.sram_bytes, "[memory] dram_bytes": spec.dram_bytes,
        "[memory] dram_bandwidth": spec.dram_bandwidth, "[memory] sram_bandwidth": spec.sram_bandwidth,
        "[host_link] bandwidth": spec.host_link_bandwidth, "[compute] efficiency": spec.compute_efficiency,
        "[host] flops": spec.host_flops, "[host] memory_bandwidth": spec.host_memory_bandwidth,
    }
    positive.update({f"[compute.peak_flops] {k}": v for k, v in spec.peak_flops.items()})
    positive.update({f"[compute.vector_flops] {k}": v for k, v in spec.vector_flops.items()})
    for what, value in positive.items():
        if not value > 0:
            raise TargetSpecError(f"{origin}: {what} must be positive, got {value}")
    for what, value in {"[host_link] latency_ns": spec.host_link_latency_ns,
                        "[compute] command_overhead_ns": spec.command_overhead_ns,
                        "[compute] dma_latency_ns": spec.dma_latency_ns,
                        "[host] op_overhead_ns": spec.host_op_overhead_ns}.items():
        if value < 0:
            raise TargetSpecError(f"{origin}: {what} must not be negative, got {value}")
    if spec.compute_efficiency > 1:
        raise TargetSpecError(f"{origin}: [compute] efficiency is a fraction of peak (0 < e <= 1), "
                              f"got {spec.compute_efficiency}")
    if spec.int8_activations not in INT8_ACTIVATION_SCHEMES:
        raise TargetSpecError(f"{origin}: [int8] activations must be one of {', '.join(INT8_ACTIVATION_SCHEMES)}, "
                              f"got {spec.int8_activations!r}")
    missing = [p for p in ("fp32", "fp16", "bf16") if p not in spec.peak_flops]
    if missing:
        raise TargetSpecError(f"{origin}: [compute.peak_flops] lacks {', '.join(missing)}")
