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
    known_sections = {"name", "description", "memory", "host_link", "compute", "ops"}
    try:
        return TargetSpec(
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
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise TargetSpecError(f"{origin}: {exc}") from None
