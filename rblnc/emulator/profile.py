"""Per-command timing of emulated runs, beside each command's modelled time, as tables."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..format.artifact import CommandKind, NpuProgram


@dataclass
class CommandTime:
    """One command of a program: how often it ran and how long the emulator took in total."""

    partition: str
    name: str
    op_type: str                 # "ai.rblnc::FusedConv" for our own ops, "DMA <Spill>" for DMA
    est_ns: float                # the artifact's modelled time (est_time_ns)
    seconds: float = 0.0
    calls: int = 0
    applied_by: str = ""         # the earlier command whose fast path also did this one's work


@dataclass
class Profile:
    """Times of every command of every NPU partition (and of each host partition as a whole),
    summed over the runs profiled. Thread-safe: each run adds its times once, under a lock."""

    rows: list[CommandTime] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)   # partition -> runs profiled
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_program(self, partition: str, program: NpuProgram, applied_by: dict[int, int]) -> list[CommandTime]:
        """Rows for a program's commands (in order); `applied_by` maps a step to the step that did its work."""
        rows = []
        for step, command in enumerate(program.commands):
            qualified = f"{command.domain}::{command.op_type}" if command.domain else command.op_type
            if command.kind == CommandKind.DMA:
                qualified = f"DMA {command.op_type}"
            by = applied_by.get(step)
            rows.append(CommandTime(partition, command.name, qualified, command.est_time_ns,
                                    applied_by="" if by is None else program.commands[by].name))
        self.rows += rows
        self.runs.setdefault(partition, 0)
        return rows

    def add_host(self, partition: str, est_ns: float) -> CommandTime:
        row = CommandTime(partition, partition, "host partition (onnxruntime)", est_ns)
        self.rows.append(row)
        self.runs.setdefault(partition, 0)
        return row

    def record(self, partition: str, rows: list[CommandTime], seconds: list[float]) -> None:
        with self._lock:
            self.runs[partition] += 1
            for row, s in zip(rows, seconds):
                row.seconds += s
                row.calls += 1

    def reset(self) -> None:
        """Forget the runs so far (e.g. a first run that paid for oneDNN's primitive creation)."""
        with self._lock:
            for row in self.rows:
                row.seconds, row.calls = 0.0, 0
            self.runs = dict.fromkeys(self.runs, 0)

    def per_op_type(self) -> list[dict]:
        """Per op type: commands, emulated ms per run, modelled ns per run; slowest first."""
        totals: dict[str, dict] = {}
        for row in self.rows:
            runs = max(self.runs.get(row.partition, 0), 1)
            entry = totals.setdefault(row.op_type, {"op_type": row.op_type, "commands": 0, "seconds": 0.0,
                                                    "est_ns": 0.0, "applied_by_another": 0})
            entry["commands"] += 1
            entry["seconds"] += row.seconds / runs
            entry["est_ns"] += row.est_ns
            entry["applied_by_another"] += bool(row.applied_by)
        return sorted(totals.values(), key=lambda e: -e["seconds"])

    def table(self, *, top: int = 20) -> str:
        """The per-op-type table, then the `top` slowest commands."""
        from ..report import format_time

        total = sum(row.seconds / max(self.runs.get(row.partition, 0), 1) for row in self.rows)
        modelled = sum(row.est_ns for row in self.rows)
        runs = max(self.runs.values(), default=0)
        lines = [f"emulator profile: {runs} run(s), {format_time(total * 1e9)} per run emulated, "
                 f"{format_time(modelled)} modelled",
                 f"  {'op type':<30} {'commands':>8} {'emulated':>10} {'share':>6} {'modelled':>10}"]
        for e in self.per_op_type():
            fused = f"  ({e['applied_by_another']} applied by the command before)" if e["applied_by_another"] else ""
            lines.append(f"  {e['op_type'][:30]:<30} {e['commands']:>8} {format_time(e['seconds'] * 1e9):>10} "
                         f"{e['seconds'] / total if total else 0:>6.1%} {format_time(e['est_ns']):>10}{fused}")
        slowest = sorted(self.rows, key=lambda r: -r.seconds / max(self.runs.get(r.partition, 0), 1))[:top]
        lines += ["", f"  slowest commands", f"  {'command':<36} {'op type':<24} {'emulated':>10} {'modelled':>10}"]
        for row in slowest:
            per_run = row.seconds / max(self.runs.get(row.partition, 0), 1)
            lines.append(f"  {row.name[:36]:<36} {row.op_type[:24]:<24} {format_time(per_run * 1e9):>10} "
                         f"{format_time(row.est_ns):>10}")
        return "\n".join(lines)
