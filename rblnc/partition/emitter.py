"""Nodes and constants of a legalisation rewrite, named after the op they replace."""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node


class RewriteEmitter:
    """Builds a rewrite's nodes and constants, named after the op they replace (and carrying its
    source ops and location, so `inspect` still points at the user's op)."""

    def __init__(self, graph: Graph, original: Node):
        self.graph, self.original = graph, original
        self.nodes: list[Node] = []
        self.constants: list[str] = []
        self._taken: set[str] = set()

    def _name(self, base: str) -> str:
        name = self.graph.unique_name(f"{self.original.name}/{base}")
        while name in self._taken:
            name = self.graph.unique_name(f"{name}_")
        self._taken.add(name)
        return name

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.graph.add_constant(self._name(base), value)
        self.constants.append(name)
        return name

    def op(self, op_type: str, inputs: list[str], base: str, outputs: int | list[str] = 1, **attrs) -> list[str]:
        names = outputs if isinstance(outputs, list) else [self._name(f"{base}_{i}" if outputs > 1 else base)
                                                          for i in range(outputs)]
        self.nodes.append(Node(self._name(f"{base}_op"), op_type, inputs, names, attrs,
                               source_ops=list(self.original.source_ops), source_location=self.original.source_location))
        return names

    def one(self, op_type: str, inputs: list[str], base: str, output: str | None = None, **attrs) -> str:
        return self.op(op_type, inputs, base, [output] if output else 1, **attrs)[0]
