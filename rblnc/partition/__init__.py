"""Host/NPU partitioning: the support check and the split into partitions."""

from .partitioner import PlannedPartition, assign_devices, partition_graph
from .support import CONSTRAINTS, Verdict, check_npu_support

__all__ = ["PlannedPartition", "assign_devices", "partition_graph", "CONSTRAINTS", "Verdict", "check_npu_support"]
