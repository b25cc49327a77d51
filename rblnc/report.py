"""What `rblnc inspect` shows: a JSON-able report of an artifact and its text rendering."""

from __future__ import annotations

from typing import Any

from . import dtypes
from .format.artifact import Artifact, Device, TensorKind, TransferDirection, ValueInfo


def build_report(artifact: Artifact, source: str = "") -> dict[str, Any]:
    partitions = []
    for p in artifact.partitions:
        entry: dict[str, Any] = {
            "name": p.name,
            "device": "npu" if p.device == Device.NPU else "host",
            "inputs": [_value(v) for v in p.inputs],
            "outputs": [_value(v) for v in p.outputs],
            "transfers": [
                {"direction": "h2d" if t.direction == TransferDirection.HOST_TO_DEVICE else "d2h",
                 "tensor": t.tensor, "bytes": t.bytes, "est_time_ns": t.est_time_ns}
                for t in p.transfers
            ],
            "est_time_ns": p.est_time_ns,
        }
        if p.npu_program is not None:
            program = p.npu_program
            entry["ops"] = [
                {"name": c.name, "op_type": c.op_type, "domain": c.domain, "source_ops": c.source_ops,
                 "source_location": c.source_location, "flops": c.flops, "est_time_ns": c.est_time_ns}
                for c in program.commands
            ]
            entry["memory"] = {
                "weight_bytes": program.weight_bytes,
                "peak_sram_bytes": program.peak_sram_bytes,
                "peak_dram_bytes": program.peak_dram_bytes,
                "constants": sum(1 for t in program.tensors if t.kind == TensorKind.CONSTANT),
            }
        else:
            entry["ops"] = [{"name": r.op_name, "op_type": r.op_type, "reason": r.reason}
                            for r in p.fallback_reasons]
        partitions.append(entry)
    return {
        "file": source,
        "format_version": artifact.version,
        "producer": artifact.producer,
        "options": {"dtype": artifact.options.dtype, "opt_level": artifact.options.opt_level,
                    "source_framework": artifact.options.source_framework,
                    "invocation": artifact.options.invocation},
        "target": artifact.target.name,
        "opset": artifact.opset,
        "inputs": [_value(v) for v in artifact.inputs],
        "outputs": [_value(v) for v in artifact.outputs],
        "partitions": partitions,
        "nodes_before_passes": artifact.nodes_before_passes,
        "nodes_after_passes": artifact.nodes_after_passes,
        # Layout changes left after the passes (NHWC models imported into NCHW ops need some).
        "transposes": sum(1 for p in partitions for op in p["ops"] if op["op_type"] == "Transpose"),
        "constant_bytes": artifact.constant_bytes(),
        "dma_bytes_per_inference": {
            "h2d": sum(t.bytes for p in artifact.partitions for t in p.transfers
                       if t.direction == TransferDirection.HOST_TO_DEVICE),
            "d2h": sum(t.bytes for p in artifact.partitions for t in p.transfers
                       if t.direction == TransferDirection.DEVICE_TO_HOST),
        },
    }


def _value(v: ValueInfo) -> dict[str, Any]:
    return {"name": v.name, "shape": None if v.shape is None else list(v.shape),
            "dtype": dtypes.name(v.dtype), "layout": v.layout}


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def render_text(report: dict[str, Any], *, max_ops: int = 12) -> str:
    opts = report["options"]
    lines = [
        f"{report['file'] or 'model'}: {report['producer']}, format {report['format_version']}, "
        f"target {report['target']}, {opts['dtype']}, -O{opts['opt_level']}, from {opts['source_framework']}",
        "",
        "inputs",
    ]
    lines += [f"  {v['name']:<28} {v['dtype']:<9} {_shape(v['shape'])}" for v in report["inputs"]]
    lines += ["outputs"]
    lines += [f"  {v['name']:<28} {v['dtype']:<9} {_shape(v['shape'])}" for v in report["outputs"]]
    lines += ["", f"partitions ({len(report['partitions'])})",
              f"  {'name':<14} {'device':<6} {'ops':>5}  {'h2d':>10} {'d2h':>10}  first ops"]
    for p in report["partitions"]:
        h2d = sum(t["bytes"] for t in p["transfers"] if t["direction"] == "h2d")
        d2h = sum(t["bytes"] for t in p["transfers"] if t["direction"] == "d2h")
        ops = ", ".join(o["op_type"] for o in p["ops"][:6]) + (", ..." if len(p["ops"]) > 6 else "")
        lines.append(f"  {p['name']:<14} {p['device']:<6} {len(p['ops']):>5}  {_bytes(h2d):>10} {_bytes(d2h):>10}  {ops}")
    fallbacks = [(p["name"], o) for p in report["partitions"] if p["device"] == "host" for o in p["ops"]]
    if fallbacks:
        lines += ["", f"host fallbacks ({len(fallbacks)})"]
        for name, op in fallbacks[:max_ops]:
            lines.append(f"  {op['op_type']:<18} {op['name']:<28} {op['reason']}")
        if len(fallbacks) > max_ops:
            lines.append(f"  ... {len(fallbacks) - max_ops} more (see --json)")
    dma = report["dma_bytes_per_inference"]
    lines += [
        "",
        f"nodes: {report['nodes_before_passes']} before passes, {report['nodes_after_passes']} after",
        f"transposes: {report['transposes']} left after the passes",
        f"constants: {_bytes(report['constant_bytes'])}",
        f"DMA per inference: {_bytes(dma['h2d'])} host->device, {_bytes(dma['d2h'])} device->host",
    ]
    return "\n".join(lines)
