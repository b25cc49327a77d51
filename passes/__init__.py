"""Graph optimisation passes over the IR, and the manager that runs them (rblnc.passes)."""

from .manager import GraphPass, PassContext, PassFailure, PassManager, PassReport, graph_pass
from .pipeline import ALL_PASSES, PIPELINES, pipeline

__all__ = [
    "GraphPass", "PassContext", "PassFailure", "PassManager", "PassReport", "graph_pass",
    "ALL_PASSES", "PIPELINES", "pipeline",
]
