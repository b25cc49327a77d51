"""The ordered pass lists per optimisation level, with why each pass sits where it does."""

from __future__ import annotations

from .fold_constants import fold_constants
from .manager import GraphPass
from .remove_dead_nodes import remove_dead_nodes

# -O0 still folds constants: importers leave weight-producing subgraphs (ConstantOfShape,
# Unsqueeze of initializers...) that must become constants before partitioning, or the
# weights would be recomputed on the host at every inference.
PIPELINES: dict[int, list[GraphPass]] = {
    0: [fold_constants, remove_dead_nodes],
    1: [fold_constants, remove_dead_nodes],
    2: [fold_constants, remove_dead_nodes],
    3: [fold_constants, remove_dead_nodes],
}

ALL_PASSES: dict[str, GraphPass] = {p.name: p for level in PIPELINES.values() for p in level}


def pipeline(level: int, disabled: set[str] | frozenset[str] = frozenset()) -> list[GraphPass]:
    if level not in PIPELINES:
        raise ValueError(f"optimisation level must be one of {sorted(PIPELINES)}, got {level}")
    unknown = set(disabled) - set(ALL_PASSES)
    if unknown:
        raise ValueError(f"unknown pass(es) to disable: {', '.join(sorted(unknown))}")
    return [p for p in PIPELINES[level] if p.name not in disabled]
