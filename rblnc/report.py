"""What `rblnc inspect` shows: a JSON-able report of an artifact and its text rendering."""

from __future__ import annotations

from typing import Any

from . import dtypes
from .format.artifact import (
    Artifact, CommandKind, Device, MemoryRegion, TensorKind, TransferDirection, ValueInfo,
)
from .cost_model import command_precision
from .lower.memory_plan import RELOAD, SPILL, aligned


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
                 "source_location": c.source_location, "flops": c.flops, "est_time_ns": c.est_time_ns,
                 "kind": "dma" if c.kind == CommandKind.DMA else "kernel",
                 "sram_bytes": c.sram_bytes, "dram_bytes": c.dram_bytes}
                for c in program.commands
            ]
            dma = [c for c in program.commands if c.kind == CommandKind.DMA]
            entry["memory"] = {
                "weight_bytes": program.weight_bytes,
                "peak_sram_bytes": program.peak_sram_bytes,
                "peak_dram_bytes": program.peak_dram_bytes,
                "constants": sum(1 for t in program.tensors if t.kind == TensorKind.CONSTANT),
                "spills": sum(1 for c in dma if c.op_type == SPILL),
                "reloads": sum(1 for c in dma if c.op_type == RELOAD),
                "spill_bytes": sum(program.tensors[c.inputs[0]].size for c in dma),
                "dram_activations": sum(1 for t in program.tensors if t.kind == TensorKind.ACTIVATION
                                        and t.region == MemoryRegion.DRAM and not t.name.endswith("@dram")),
            }
        else:
            entry["ops"] = [{"name": r.op_name, "op_type": r.op_type, "reason": r.reason,
                             "est_saving_ns": r.est_saving_ns}
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
        "memory": memory_summary(artifact),
        "modelled_time_ns": modelled_time(artifact),
        # Every host-link DMA of one inference, in execution order (docs/partitioning.md).
        "transfers": [dict(t, partition=p["name"]) for p in partitions for t in p["transfers"]],
        "fallbacks": [{"partition": p["name"], "name": o["name"], "op_type": o["op_type"], "reason": o["reason"]}
                      for p in partitions if p["device"] == "host" for o in p["ops"]],
        # NPU-supported ops the partitioner's cost model moved to the host, with the modelled saving.
        "refinements": [{"partition": p["name"], "name": o["name"], "op_type": o["op_type"],
                         "est_saving_ns": o["est_saving_ns"], "reason": o["reason"]}
                        for p in partitions if p["device"] == "host" for o in p["ops"] if o["est_saving_ns"]],
        "precision": precision_summary(artifact),
        # Each op rblnc's own int8 quantisation considered: SQNR (dB) of its output against the
        # float model on the calibration data, the precision it ended in and why (format v3).
        # Each model output's SQNR (dB) against the float model once quantised (format v3).
        "int8_output_sqnr": dict(artifact.output_sqnr),
        "int8_layers": [{"name": layer.name, "op_type": layer.op_type, "precision": layer.precision,
                         "sqnr_db": layer.sqnr_db, "reason": layer.reason} for layer in artifact.layer_precision],
        "dma_bytes_per_inference": {
            "h2d": sum(t.bytes for p in artifact.partitions for t in p.transfers
                       if t.direction == TransferDirection.HOST_TO_DEVICE),
            "d2h": sum(t.bytes for p in artifact.partitions for t in p.transfers
                       if t.direction == TransferDirection.DEVICE_TO_HOST),
        },
    }


def precision_summary(artifact: Artifact) -> dict[str, dict[str, float]]:
    """NPU kernel commands and their modelled time by the precision they compute in; the
    Quantize/DequantizeLinear at int8/float boundaries counted apart ("conversion")."""
    summary: dict[str, dict[str, float]] = {}
    for p in artifact.partitions:
        for c in p.npu_program.commands if p.npu_program is not None else ():
            if c.kind == CommandKind.DMA:
                continue
            if not c.domain and c.op_type in ("QuantizeLinear", "DequantizeLinear"):
                key = "conversion"
            elif c.inputs and c.inputs[0] >= 0 and p.npu_program.tensors[c.inputs[0]].quantization is not None:
                key = "int8"  # a view of int8 values (Flatten between int8 ops)
            else:
                key = command_precision(c.op_type, c.domain, artifact.options.dtype)
            entry = summary.setdefault(key, {"commands": 0, "est_time_ns": 0.0})
            entry["commands"] += 1
            entry["est_time_ns"] += c.est_time_ns
    return summary


def memory_summary(artifact: Artifact) -> dict[str, int]:
    """Device memory the model holds (docs/targets.md: weights, I/O buffers, scratch, SRAM)."""
    programs = [p.npu_program for p in artifact.partitions if p.npu_program is not None]
    weights = sum(aligned(t.size) for p in programs for t in p.tensors if t.kind == TensorKind.CONSTANT)
    io = {t.name: aligned(t.size) for p in programs for t in p.tensors
          if t.kind in (TensorKind.PROGRAM_INPUT, TensorKind.PROGRAM_OUTPUT)}
    base = weights + sum(io.values())
    scratch = max((t.offset + aligned(t.size) - base for p in programs for t in p.tensors
                   if t.kind == TensorKind.ACTIVATION and t.region == MemoryRegion.DRAM), default=0)
    dma = [c for p in programs for c in p.commands if c.kind == CommandKind.DMA]
    return {
        "weight_bytes": weights,
        "io_bytes": sum(io.values()),
        "scratch_bytes": max(0, scratch),
        "dram_bytes": base + max(0, scratch),
        "dram_capacity": artifact.target.dram_bytes,
        "peak_sram_bytes": max((p.peak_sram_bytes for p in programs), default=0),
        "sram_capacity": artifact.target.sram_bytes,
        "spills": sum(1 for c in dma if c.op_type == SPILL),
        "spill_bytes": sum(p.tensors[c.inputs[0]].size for p in programs for c in p.commands
                           if c.kind == CommandKind.DMA),
    }


def modelled_time(artifact: Artifact) -> dict[str, float]:
    """Modelled time of one inference per pipeline stage, in ns (0 when not estimated)."""
    h2d = sum(t.est_time_ns for p in artifact.partitions for t in p.transfers
              if t.direction == TransferDirection.HOST_TO_DEVICE)
    d2h = sum(t.est_time_ns for p in artifact.partitions for t in p.transfers
              if t.direction == TransferDirection.DEVICE_TO_HOST)
    npu = sum(p.est_time_ns for p in artifact.partitions if p.device == Device.NPU)
    host = sum(p.est_time_ns for p in artifact.partitions if p.device == Device.HOST)
    return {"h2d": h2d, "npu": npu, "host": host, "d2h": d2h, "total": h2d + npu + host + d2h}


def format_time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us"
    return f"{ns:.0f} ns"


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
              f"  {'name':<14} {'device':<6} {'ops':>5}  {'h2d':>10} {'d2h':>10}  {'est. time':>10}  first ops"]
    for p in report["partitions"]:
        h2d = sum(t["bytes"] for t in p["transfers"] if t["direction"] == "h2d")
        d2h = sum(t["bytes"] for t in p["transfers"] if t["direction"] == "d2h")
        ops = ", ".join(o["op_type"] for o in p["ops"][:6]) + (", ..." if len(p["ops"]) > 6 else "")
        lines.append(f"  {p['name']:<14} {p['device']:<6} {len(p['ops']):>5}  {_bytes(h2d):>10} {_bytes(d2h):>10}  "
                     f"{format_time(p['est_time_ns']):>10}  {ops}")
    fallbacks = [(p["name"], o) for p in report["partitions"] if p["device"] == "host" for o in p["ops"]]
    if fallbacks:
        lines += ["", f"host fallbacks ({len(fallbacks)})"]
        for name, op in fallbacks[:max_ops]:
            lines.append(f"  {op['op_type']:<18} {op['name']:<28} {op['reason']}")
        if len(fallbacks) > max_ops:
            lines.append(f"  ... {len(fallbacks) - max_ops} more (see --json)")
    refinements = report.get("refinements", [])
    if refinements:
        lines += ["", f"moved to the host by the cost model ({len(refinements)})"]
        for op in refinements:
            lines.append(f"  {op['op_type']:<18} {op['name']:<28} saves {format_time(op['est_saving_ns'])} per inference")
    transfers = report.get("transfers", [])
    if transfers:
        lines += ["", f"DMA transfers per inference ({len(transfers)})",
                  f"  {'partition':<14} {'dir':<4} {'tensor':<28} {'bytes':>10}  {'est. time':>10}"]
        for t in transfers[:max_ops]:
            lines.append(f"  {t['partition']:<14} {t['direction']:<4} {t['tensor'][:28]:<28} {_bytes(t['bytes']):>10}  "
                         f"{format_time(t['est_time_ns']):>10}")
        if len(transfers) > max_ops:
            lines.append(f"  ... {len(transfers) - max_ops} more (see --json)")
    memory = report["memory"]
    lines += [
        "",
        "device memory",
        f"  DRAM {_bytes(memory['dram_bytes'])} of {_bytes(memory['dram_capacity'])}: weights "
        f"{_bytes(memory['weight_bytes'])}, I/O buffers {_bytes(memory['io_bytes'])}, "
        f"scratch {_bytes(memory['scratch_bytes'])}",
        f"  SRAM peak activations {_bytes(memory['peak_sram_bytes'])} of {_bytes(memory['sram_capacity'])}",
        f"  spills {memory['spills']} ({_bytes(memory['spill_bytes'])} moved by Spill/Reload DMA per inference)",
    ]
    for p in report["partitions"]:
        if "memory" in p and (p["memory"]["spills"] or p["memory"]["dram_activations"]):
            m = p["memory"]
            lines.append(f"    {p['name']}: {m['spills']} spilled, {m['reloads']} reloads, "
                         f"{m['dram_activations']} activations kept in DRAM")
    timing = report["modelled_time_ns"]
    lines += [
        "",
        f"modelled time per inference on {report['target']}: {format_time(timing['total'])}",
        "  " + ", ".join(f"{stage} {format_time(timing[stage])}" for stage in ("h2d", "npu", "host", "d2h")),
    ]
    precision = report.get("precision", {})
    if "int8" in precision or "conversion" in precision:
        lines.append("  NPU commands by precision: " + ", ".join(
            f"{key if key != 'conversion' else 'Quantize/DequantizeLinear'} {int(v['commands'])} "
            f"({format_time(v['est_time_ns'])})" for key, v in sorted(precision.items())))
    slowest = sorted(((o, p["name"]) for p in report["partitions"] if p["device"] == "npu" for o in p["ops"]),
                     key=lambda item: -item[0]["est_time_ns"])[:max_ops]
    if slowest:
        lines += [f"  slowest NPU commands", f"    {'command':<32} {'op':<18} {'time':>10} {'GFLOP':>8}"]
        for op, _ in slowest:
            lines.append(f"    {op['name'][:32]:<32} {op['op_type'][:18]:<18} {format_time(op['est_time_ns']):>10} "
                         f"{op['flops'] / 1e9:>8.3f}")
    layers = report.get("int8_layers", [])
    if layers:
        kept = sum(layer["precision"] != "int8" for layer in layers)
        lines += ["", f"int8 sensitivity ({len(layers)} ops, {kept} kept in float): SQNR of each op's output "
                      "against the float model on the calibration data"]
        outputs = report.get("int8_output_sqnr", {})
        if outputs:
            lines.append("  the whole int8 model's output: " + "; ".join(
                f"{name} {value:.1f} dB" for name, value in outputs.items()))
        lines.append(f"  {'op':<32} {'type':<18} {'SQNR dB':>8}  {'precision':<9}  reason")
        for layer in layers:
            lines.append(f"  {layer['name'][:32]:<32} {layer['op_type'][:18]:<18} {layer['sqnr_db']:>8.1f}  "
                         f"{layer['precision']:<9}  {layer['reason']}".rstrip())
    dma = report["dma_bytes_per_inference"]
    lines += [
        "",
        f"nodes: {report['nodes_before_passes']} before passes, {report['nodes_after_passes']} after",
        f"transposes: {report['transposes']} left after the passes",
        f"constants: {_bytes(report['constant_bytes'])}",
        f"DMA per inference: {_bytes(dma['h2d'])} host->device, {_bytes(dma['d2h'])} device->host",
    ]
    return "\n".join(lines)
