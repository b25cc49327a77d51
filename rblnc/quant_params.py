"""Quantisation parameters of an integer tensor: real = scale * (q - zero_point), per tensor or per channel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class QuantParams:
    """`scale` and `zero_point` hold one entry (per tensor) or one per index of `axis` (per
    channel, `axis` >= 0). The integer type is the tensor's own (int8, uint8; int32 for biases)."""

    scale: np.ndarray          # float32, 1-D
    zero_point: np.ndarray     # int64, 1-D, same length
    axis: int = -1             # -1: per tensor

    @classmethod
    def make(cls, scale, zero_point=0, axis: int | None = None) -> "QuantParams":
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        zero_point = np.broadcast_to(np.asarray(zero_point, dtype=np.int64).reshape(-1), scale.shape).copy()
        per_channel = scale.size > 1
        return cls(scale, zero_point, (axis or 0) if per_channel else -1)

    @property
    def per_tensor(self) -> bool:
        return self.axis < 0

    def same_as(self, other: "QuantParams | None") -> bool:
        return (other is not None and self.axis == other.axis and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantParams) and self.same_as(other)

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> str:
        if self.per_tensor:
            return f"scale {float(self.scale[0]):.4g} zero point {int(self.zero_point[0])}"
        return (f"per channel (axis {self.axis}, {self.scale.size} scales "
                f"{float(self.scale.min()):.3g}..{float(self.scale.max()):.3g})")


def integer_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)
