"""Host/NPU partitioning: the support check and the split into partitions."""

from .partitioner import (
    MoveDecision, PartitionOptions, PlannedPartition, assign_devices, group_into_partitions, partition_cycle,
    partition_graph, refine_placement,
)
from .legalize import Legalisation, legalize_graph
from .support import CONSTRAINTS, DATA_DEPENDENT_OPS, Verdict, check_npu_support

__all__ = [
    "MoveDecision", "PartitionOptions", "PlannedPartition", "assign_devices", "group_into_partitions",
    "partition_cycle", "partition_graph", "refine_placement", "CONSTRAINTS", "DATA_DEPENDENT_OPS", "Verdict",
    "check_npu_support", "Legalisation", "legalize_graph",
]
