"""The pass manager: runs an ordered list of graph passes until none changes the graph."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from rblnc.ir import Graph, GraphError, dump, verify_graph


@dataclass
class PassContext:
    """What passes may consult besides the graph."""

    # Precision the NPU will compute in ("fp32", "fp16", "bf16"); some rewrites depend on it.
    dtype: str = "fp32"
    # Constant folding never creates a constant bigger than this, unless the constant is a
    # weight of a Conv/Gemm/MatMul (it would be resident on the device anyway).
    max_folded_bytes: int = 64 << 20
    # Set by the manager: the pass running now (so `note` can say who declined).
    current_pass: str = ""
    # Why rewrites did not happen where a pattern almost matched: (pass, node, reason).
    notes: list[tuple[str, str, str]] = field(default_factory=list)

    def note(self, node_name: str, reason: str) -> None:
        """Record why the current pass left `node_name` alone (shown by --pass-stats)."""
        entry = (self.current_pass, node_name, reason)
        if entry not in self.notes:
            self.notes.append(entry)


@dataclass(frozen=True)
class GraphPass:
    """A named rewrite. `run(graph, ctx)` returns how many rewrites it made (0 = unchanged)."""

    name: str
    run: Callable[[Graph, PassContext], int]
    description: str = ""


def graph_pass(name: str) -> Callable[[Callable[[Graph, PassContext], int]], GraphPass]:
    """Decorator: a function becomes a GraphPass whose description is its docstring's first line."""

    def wrap(fn: Callable[[Graph, PassContext], int]) -> GraphPass:
        doc = (fn.__doc__ or "").strip().splitlines()
        return GraphPass(name, fn, doc[0] if doc else "")

    return wrap


@dataclass
class PassStats:
    name: str
    rewrites: int = 0
    runs: int = 0
    seconds: float = 0.0


@dataclass
class PassReport:
    nodes_before: int
    nodes_after: int = 0
    iterations: int = 0
    stats: dict[str, PassStats] = field(default_factory=dict)
    notes: list[tuple[str, str, str]] = field(default_factory=list)

    def table(self, max_notes: int = 20) -> str:
        lines = [f"{'pass':32} {'rewrites':>9} {'runs':>5} {'ms':>9}"]
        for s in self.stats.values():
            lines.append(f"{s.name:32} {s.rewrites:9d} {s.runs:5d} {s.seconds * 1e3:9.1f}")
        total = sum(s.seconds for s in self.stats.values())
        lines.append(f"nodes {self.nodes_before} -> {self.nodes_after} in {self.iterations} iteration(s), "
                     f"{total * 1e3:.1f} ms")
        if self.notes:
            lines.append(f"not rewritten ({len(self.notes)}):")
            lines += [f"  {name}: {node}: {why}" for name, node, why in self.notes[:max_notes]]
            if len(self.notes) > max_notes:
                lines.append(f"  ... {len(self.notes) - max_notes} more")
        return "\n".join(lines)


class PassFailure(GraphError):
    """A pass raised or broke an invariant; says which pass and which ran before it."""


class PassManager:
    def __init__(
        self,
        passes: Sequence[GraphPass],
        *,
        verify_each: bool = False,
        max_iterations: int = 8,
        dump_after: Iterable[str] = (),
        on_dump: Callable[[str, str], None] | None = None,
    ):
        self.passes = list(passes)
        self.verify_each = verify_each
        self.max_iterations = max_iterations
        self.dump_after = set(dump_after)
        self.on_dump = on_dump or (lambda name, text: print(f"--- IR after {name} ---\n{text}"))
        unknown = self.dump_after - {p.name for p in self.passes}
        if unknown:
            raise ValueError(
                f"--dump-ir-after names pass(es) not in this pipeline: {', '.join(sorted(unknown))}; "
                f"it runs {', '.join(p.name for p in self.passes) or 'no passes'}"
            )

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassReport:
        ctx = ctx or PassContext()
        report = PassReport(nodes_before=len(graph))
        history: list[str] = []
        for iteration in range(1, self.max_iterations + 1):
            report.iterations = iteration
            changed = 0
            for graph_pass in self.passes:
                stats = report.stats.setdefault(graph_pass.name, PassStats(graph_pass.name))
                start = time.perf_counter()
                ctx.current_pass = graph_pass.name
                try:
                    rewrites = graph_pass.run(graph, ctx)
                    if self.verify_each:
                        try:
                            verify_graph(graph)
                        except GraphError as exc:
                            raise GraphError(f"the IR is broken after it: {exc}") from exc
                except Exception as exc:
                    before = ", ".join(history[-8:]) or "none"
                    raise PassFailure(
                        f"pass {graph_pass.name!r} failed in iteration {iteration}: {exc} "
                        f"(passes run before it, latest last: {before})"
                    ) from exc
                stats.seconds += time.perf_counter() - start
                stats.runs += 1
                stats.rewrites += rewrites
                changed += rewrites
                history.append(graph_pass.name)
                if graph_pass.name in self.dump_after and rewrites:
                    self.on_dump(graph_pass.name, dump(graph))
            if not changed:
                break
        report.nodes_after = len(graph)
        report.notes = list(ctx.notes)
        return report
