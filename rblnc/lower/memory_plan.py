"""Liveness-based placement of NPU program tensors in device SRAM and DRAM, with spills.

Device memory, for the whole model (programs run one after another):

    DRAM  [ weights of every program | I/O buffers | scratch ]     SRAM  [ activations ]

* Weights (constants) stay resident in DRAM for the model's lifetime, one range each.
* I/O buffers hold the values that cross a program's boundary (host DMA lands there, and a
  value stays there while a later NPU program still needs it); one range per value name.
* Activations live in SRAM when they fit, placed by their live ranges ("greedy by size", as
  TFLite's arena planner), so tensors with disjoint lifetimes share bytes. An elementwise op
  whose input dies at it writes its output over that input (in place); a view (Reshape,
  Flatten, ...) of a dying input is the same bytes.
* When SRAM is short, the plan first moves to DRAM any activation an op cannot have in SRAM
  together with its other operands (the kernel streams it from DRAM), then spills: an
  activation idle across the peak is copied to DRAM after it is made (a Spill DMA command)
  and back to SRAM before its next use (a Reload DMA command). What cannot be placed in
  SRAM after that lives in DRAM. Scratch DRAM holds the spill copies and DRAM activations.
* If weights, I/O buffers and scratch exceed the target's DRAM, compiling fails with
  `DeviceMemoryError`, which says by how much.

Positions: command k runs at position 2k; a DMA inserted after command k is at 2k + 1 (a
reload before command k at 2k - 1); program inputs exist from position -1.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from ..errors import DeviceMemoryError
from ..format.artifact import Command, CommandKind, MemoryRegion, NpuProgram, Tensor, TensorKind
from ..target import TargetSpec

ALIGN = 64

# Ops whose output may take the bytes of an input that dies at the op (same shape and type):
# every output element depends only on the input elements at the same position, or, for
# Softmax, on its own row, which the kernel reads before writing.
INPLACE_OPS = frozenset({
    "Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Exp", "Log",
    "Neg", "Abs", "Sqrt", "Reciprocal", "Erf", "Elu", "Selu", "Softplus", "BatchNormalization",
    "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Pow", "PRelu", "Softmax", "Sign",
})
# Ops whose output is its first input's bytes, re-shaped.
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# Our own ops (domain ai.rblnc, rblnc/ir/fused_ops.py) that may write over an input: the
# elementwise ones over any input of the output's shape, a fused convolution over its addend.
OWN_INPLACE_INPUTS: dict[str, tuple[int, ...] | None] = {
    "FusedElementwise": None, "SiLU": None, "Gelu": None, "FusedConv": (3,),
}
SPILL, RELOAD = "Spill", "Reload"


def aligned(nbytes: int) -> int:
    return (int(nbytes) + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class MemoryReport:
    """Device memory of a whole model, in bytes."""

    weight_bytes: int = 0
    io_bytes: int = 0
    scratch_bytes: int = 0           # peak DRAM scratch (spill copies, DRAM activations)
    peak_sram_bytes: int = 0
    spills: int = 0                  # Spill DMA commands
    spilled_bytes: int = 0           # bytes moved by Spill and Reload commands per inference

    @property
    def dram_bytes(self) -> int:
        return self.weight_bytes + self.io_bytes + self.scratch_bytes


def plan_model_memory(programs: list[tuple[str, NpuProgram]], target: TargetSpec) -> MemoryReport:
    """Place every tensor of every (named) NPU program; inserts Spill/Reload commands."""
    report = MemoryReport()
    offset = 0
    for _, program in programs:
        program.weight_bytes = 0
        for tensor in program.tensors:
            if tensor.kind == TensorKind.CONSTANT:
                tensor.size = int(tensor.data.nbytes)
                tensor.region, tensor.offset = MemoryRegion.DRAM, offset
                offset += aligned(tensor.size)
                program.weight_bytes += tensor.size
    report.weight_bytes = offset

    io_offsets: dict[str, int] = {}
    for _, program in programs:
        for tensor in program.tensors:
            if tensor.kind in (TensorKind.PROGRAM_INPUT, TensorKind.PROGRAM_OUTPUT):
                if tensor.name not in io_offsets:
                    io_offsets[tensor.name] = offset
                    offset += aligned(tensor.size)
                tensor.region, tensor.offset = MemoryRegion.DRAM, io_offsets[tensor.name]
    report.io_bytes = offset - report.weight_bytes

    scratch_base = offset
    for name, program in programs:
        planner = _ProgramPlanner(program, target.sram_bytes)
        planner.run()
        scratch = planner.place_dram(scratch_base)
        program.peak_sram_bytes = planner.peak_sram
        program.peak_dram_bytes = scratch + sum(
            t.size for t in program.tensors if t.kind in (TensorKind.PROGRAM_INPUT, TensorKind.PROGRAM_OUTPUT))
        report.scratch_bytes = max(report.scratch_bytes, scratch)
        report.peak_sram_bytes = max(report.peak_sram_bytes, planner.peak_sram)
        spills = [c for c in program.commands if c.kind == CommandKind.DMA]
        report.spills += sum(1 for c in spills if c.op_type == SPILL)
        report.spilled_bytes += sum(program.tensors[c.inputs[0]].size for c in spills)

    if report.dram_bytes > target.dram_bytes:
        raise DeviceMemoryError(
            f"the model does not fit the device memory of {target.name}: it needs "
            f"{_mib(report.dram_bytes)} of DRAM (weights {_mib(report.weight_bytes)}, I/O buffers "
            f"{_mib(report.io_bytes)}, scratch {_mib(report.scratch_bytes)}) but the target has "
            f"{_mib(target.dram_bytes)}: {_mib(report.dram_bytes - target.dram_bytes)} short",
            needed=report.dram_bytes, available=target.dram_bytes)
    return report


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


@dataclass
class _Segment:
    """A stretch of time during which some bytes must be in SRAM: a chain of tensors that
    share them (in place, views), possibly cut by spills. `accesses` are sorted positions."""

    block: int
    size: int
    accesses: list[int]
    offset: int = -1

    @property
    def start(self) -> int:
        return self.accesses[0]

    @property
    def end(self) -> int:
        return self.accesses[-1]


@dataclass
class _Block:
    """Tensors that share bytes: an activation and the in-place outputs and views chained on it."""

    members: list[int]
    size: int
    in_dram: bool = False
    segments: list[_Segment] = field(default_factory=list)
    dram_offset: int = -1


class _ProgramPlanner:
    def __init__(self, program: NpuProgram, sram_bytes: int):
        self.program = program
        self.capacity = sram_bytes
        self.end = 2 * len(program.commands)
        tensors = program.tensors
        self.defined: dict[int, int] = {}
        self.uses: dict[int, list[int]] = {}
        for k, command in enumerate(program.commands):
            for i in command.inputs:
                if i >= 0:
                    self.uses.setdefault(i, []).append(2 * k)
            for i in command.outputs:
                if i >= 0:
                    self.defined[i] = 2 * k
        self.blocks: list[_Block] = []
        self.block_of: dict[int, int] = {}
        self._build_blocks()
        self.spilled: dict[int, list[int]] = {}   # tensor -> reload positions
        self.peak_sram = 0

    # -- blocks and in-place reuse ---------------------------------------------------

    def _last_use(self, index: int) -> int:
        uses = self.uses.get(index)
        return max(uses) if uses else self.defined.get(index, -1)

    def _build_blocks(self) -> None:
        tensors = self.program.tensors
        for k, command in enumerate(self.program.commands):
            for out in command.outputs:
                if out < 0 or tensors[out].kind != TensorKind.ACTIVATION:
                    continue
                host = self._reusable_input(k, command, out)
                if host is None:
                    self.block_of[out] = len(self.blocks)
                    self.blocks.append(_Block([out], aligned(tensors[out].size)))
                else:
                    block = self.blocks[self.block_of[host]]
                    block.members.append(out)
                    self.block_of[out] = self.block_of[host]
        for block in self.blocks:
            accesses = sorted({p for m in block.members for p in [self.defined[m], *self.uses.get(m, [])]})
            block.segments = [_Segment(self.block_of[block.members[0]], block.size, accesses)]

    def _reusable_input(self, k: int, command: Command, out: int) -> int | None:
        """An input whose bytes the output may take: it dies here and nothing else needs them."""
        if command.kind != CommandKind.KERNEL:
            return None
        tensors = self.program.tensors
        elementwise = command.op_type in INPLACE_OPS
        if command.domain:
            if command.domain != "ai.rblnc" or command.op_type not in OWN_INPLACE_INPUTS:
                return None
            positions = OWN_INPLACE_INPUTS[command.op_type]
            candidates = command.inputs if positions is None else [command.inputs[p] for p in positions
                                                                   if p < len(command.inputs)]
            elementwise = True
        elif command.op_type in VIEW_OPS:
            candidates = command.inputs[:1]
        elif elementwise:
            candidates = command.inputs
        else:
            return None
        for i in candidates:
            if i < 0 or i == out or tensors[i].kind != TensorKind.ACTIVATION or i not in self.block_of:
                continue
            if aligned(tensors[i].size) != aligned(tensors[out].size) or command.inputs.count(i) > 1:
                continue
            if elementwise and (tensors[i].shape != tensors[out].shape or tensors[i].dtype != tensors[out].dtype):
                continue
            block = self.blocks[self.block_of[i]]
            if all(self._last_use(m) <= 2 * k for m in block.members):
                return i
        return None

    # -- SRAM: what fits, spills, offsets --------------------------------------------

    def run(self) -> None:
        self._demote_oversized_operands()
        while True:
            self._spill_until_it_fits()
            if self._assign_sram_offsets():
                break
        self._materialize()

    def _operand_blocks(self, command: Command) -> set[int]:
        return {self.block_of[i] for i in command.inputs + command.outputs if i in self.block_of}

    def _demote(self, block: _Block) -> None:
        block.in_dram = True
        for member in block.members:
            self.spilled.pop(member, None)

    def _demote_oversized_operands(self) -> None:
        for command in self.program.commands:
            while True:
                live = [self.blocks[b] for b in self._operand_blocks(command) if not self.blocks[b].in_dram]
                if sum(b.size for b in live) <= self.capacity:
                    break
                self._demote(max(live, key=lambda b: b.size))

    def _sram_segments(self) -> list[_Segment]:
        return [s for b in self.blocks if not b.in_dram for s in b.segments]

    def _profile(self, segments: list[_Segment]) -> np.ndarray:
        live = np.zeros(self.end + 3, dtype=np.int64)
        for s in segments:
            live[s.start + 1] += s.size
            live[s.end + 2] -= s.size
        return np.cumsum(live)  # index p + 1 = bytes live at position p

    def _spill_until_it_fits(self, capacity: int | None = None) -> None:
        capacity = self.capacity if capacity is None else capacity
        while True:
            segments = self._sram_segments()
            profile = self._profile(segments)
            peak_at = int(np.argmax(profile)) - 1
            if profile[peak_at + 1] <= capacity:
                return
            if not self._spill_one_at(peak_at, segments):
                live = [self.blocks[s.block] for s in segments if s.start <= peak_at <= s.end]
                self._demote(max(live, key=lambda b: b.size))

    def _spill_one_at(self, p: int, segments: list[_Segment]) -> bool:
        """Cut the best idle segment at position p in two around p; False when none can be cut."""
        best = None
        for segment in segments:
            if not segment.start < p < segment.end:
                continue
            j = bisect.bisect_left(segment.accesses, p)
            if segment.accesses[j] == p:
                continue
            a, b = segment.accesses[j - 1], segment.accesses[j]
            member = self._member_across(segment.block, a, b)
            if member is None:
                continue
            store = self.defined[member] + 1
            if self.spilled.get(member) or store < segment.start:
                store = -1  # already copied to DRAM by an earlier spill of this tensor
            if max(a, store) >= p or b - 1 <= p:
                continue
            score = segment.size * (b - a)
            if best is None or score > best[0]:
                best = (score, segment, j, member, store)
        if best is None:
            return False
        _, segment, j, member, store = best
        block = self.blocks[segment.block]
        reload = segment.accesses[j] - 1
        head = sorted(set(segment.accesses[:j] + ([store] if store >= 0 else [])))
        tail = [reload] + segment.accesses[j:]
        index = block.segments.index(segment)
        block.segments[index:index + 1] = [_Segment(segment.block, segment.size, head),
                                           _Segment(segment.block, segment.size, tail)]
        bisect.insort(self.spilled.setdefault(member, []), reload)
        return True

    def _member_across(self, block: int, a: int, b: int) -> int | None:
        """The tensor of `block` whose value must survive from position a to position b."""
        for member in self.blocks[block].members:
            if self.defined[member] <= a and self._last_use(member) >= b:
                return member
        return None

    def _assign_sram_offsets(self) -> bool:
        """Greedy by size; a block with a segment that does not fit goes to DRAM (then retry)."""
        segments = sorted(self._sram_segments(), key=lambda s: (-s.size, s.start))
        placed: list[_Segment] = []
        self.peak_sram = 0
        for segment in segments:
            offset = _first_fit(segment, placed)
            if offset + segment.size > self.capacity:
                self._demote(self.blocks[segment.block])
                return False
            segment.offset = offset
            placed.append(segment)
            self.peak_sram = max(self.peak_sram, offset + segment.size)
        return True

    # -- the result: tensors, DMA commands, DRAM scratch ------------------------------

    def _materialize(self) -> None:
        program = self.program
        tensors = program.tensors
        reload_copies: dict[int, list[tuple[int, int]]] = {}  # tensor -> [(reload position, copy)]
        inserts: dict[int, list[Command]] = {}                # position -> DMA commands there
        self.dram_copies: dict[int, int] = {}
        for member, reloads in self.spilled.items():
            original = tensors[member]
            dram_copy = len(tensors)
            tensors.append(Tensor(f"{original.name}@dram", original.dtype, original.shape,
                                  TensorKind.ACTIVATION, size=original.size, region=MemoryRegion.DRAM))
            self.dram_copies[dram_copy] = member
            inserts.setdefault(self.defined[member] + 1, []).append(
                Command(SPILL, [member], [dram_copy], f"spill:{original.name}", kind=CommandKind.DMA))
            for n, position in enumerate(reloads, 1):
                copy = len(tensors)
                tensors.append(Tensor(f"{original.name}@reload{n}", original.dtype, original.shape,
                                      TensorKind.ACTIVATION, size=original.size))
                reload_copies.setdefault(member, []).append((position, copy))
                inserts.setdefault(position, []).append(
                    Command(RELOAD, [dram_copy], [copy], f"reload{n}:{original.name}", kind=CommandKind.DMA))
        for block in self.blocks:
            block_segments = block.segments
            for member in block.members:
                copies = [member] + [c for _, c in reload_copies.get(member, [])]
                starts = [self.defined[member]] + [p for p, _ in reload_copies.get(member, [])]
                for copy, start in zip(copies, starts):
                    tensor = tensors[copy]
                    if block.in_dram:
                        tensor.region = MemoryRegion.DRAM
                    else:
                        segment = next(s for s in block_segments if s.start <= start <= s.end)
                        tensor.region, tensor.offset = MemoryRegion.SRAM, segment.offset

        commands: list[Command] = []
        for k, command in enumerate(program.commands):
            commands += inserts.get(2 * k - 1, [])
            for slot, i in enumerate(command.inputs):
                for position, copy in reload_copies.get(i, []):
                    if position < 2 * k:
                        command.inputs[slot] = copy
            commands.append(command)
            commands += inserts.get(2 * k + 1, [])
        program.commands = commands

    def place_dram(self, base: int) -> int:
        """Offsets in DRAM scratch (from `base`) for DRAM activations and spill copies, by their
        live ranges in the final command order; returns the scratch bytes needed at the peak."""
        program = self.program
        span: dict[int, list[int]] = {}
        for k, command in enumerate(program.commands):
            for i in command.inputs + command.outputs:
                if i >= 0:
                    span.setdefault(i, []).append(k)
        groups = [block.members for block in self.blocks if block.in_dram]
        groups += [[copy] for copy in self.dram_copies]
        segments = []
        for members in groups:
            ks = [k for m in members for k in span.get(m, [])]
            segment = _Segment(-1, aligned(max(program.tensors[m].size for m in members)), [min(ks), max(ks)])
            segments.append((segment, members))
        placed: list[_Segment] = []
        peak = 0
        for segment, members in sorted(segments, key=lambda item: (-item[0].size, item[0].start)):
            segment.offset = _first_fit(segment, placed)
            placed.append(segment)
            peak = max(peak, segment.offset + segment.size)
            for m in members:
                program.tensors[m].region = MemoryRegion.DRAM
                program.tensors[m].offset = base + segment.offset
        return peak


def _first_fit(segment: _Segment, placed: list[_Segment]) -> int:
    """The lowest offset where `segment` overlaps no placed segment live at the same time."""
    busy = sorted((s.offset, s.offset + s.size) for s in placed
                  if s.start <= segment.end and segment.start <= s.end)
    offset = 0
    for lo, hi in busy:
        if offset + segment.size <= lo:
            break
        offset = max(offset, hi)
    return offset
