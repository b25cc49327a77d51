"""The whole model's accuracy budget: int8 ops go back to float, most sensitive first, until every
model output's SQNR against the float model reaches the budget.

The per-layer budget (sensitivity.py, `min_sqnr_db`) does not see error that compounds over
depth: PP-OCRv4 rec all-int8 measures 32 dB or more at every layer and 14 dB at its output.
NNCF's accuracy-aware mode ranks layers by their effect on the metric and reverts them until the
metric holds; here the ranking is the layer SQNR already measured (no extra runs to rank), and
the number of ops to revert is searched by doubling and then bisection, so a model of n int8 ops
costs about 2 log2(n) trials, each one run of the quantised model (its QDQ form, onnxruntime)
on the samples the output SQNR is measured on."""

from __future__ import annotations

import math
from typing import Callable

from ..errors import CompileError

# The default output budget with int8_ops="auto": 20 dB is a noise power of 1 % of the output's
# (about 10 % RMS error), the line the per-layer budget draws too. On PP-OCRv4 rec, minmax
# all-int8 read 14.2 dB at the output (CER 2.9 % against bf16's 0.3 %) and entropy 2.0 dB (84 %).
DEFAULT_MIN_OUTPUT_SQNR_DB = 20.0


def check_budget(value: float | None, option: str) -> None:
    """A budget is a number of dB (or None): anything else is refused naming the option."""
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)):
        raise CompileError(f"{option} must be a number of dB, got {value!r}")


def fewest_to_revert(count: int, measure: Callable[[int], dict[str, float]], budget: float,
                     progress: Callable[[str], None] | None = None) -> tuple[int, dict[str, float]]:
    """(k, the outputs' SQNR then): the fewest k of `count` ranked ops (most sensitive first) to
    keep in float so that every output's SQNR reaches `budget`, where measure(k) is the outputs'
    SQNR with the first k in float. The search assumes more float never lowers the SQNR (true as
    a trend, not op by op, so k is the fewest the bisection finds); if even k = count misses the
    budget, k = count is returned with its SQNR."""
    measured: dict[int, dict[str, float]] = {}

    def meets(k: int) -> bool:
        if k not in measured:
            measured[k] = measure(k)
            if progress is not None and k:
                worst = min(measured[k].values(), default=math.inf)
                progress(f"  output budget {budget:g} dB: {k} op(s) back in float -> lowest output SQNR {worst:.1f} dB")
        return min(measured[k].values(), default=math.inf) >= budget

    if count == 0:
        return 0, {}
    if meets(0):
        return 0, measured[0]
    failing, passing = 0, 1
    while passing < count and not meets(passing):
        failing, passing = passing, min(2 * passing, count)
    if not meets(passing):
        return passing, measured[passing]
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if meets(middle):
            passing = middle
        else:
            failing = middle
    return passing, measured[passing]
