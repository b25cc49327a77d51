"""A fast part of `make conformance` in `make test`: every ONNX backend node case whose ops are all
on the NPU list must pass on the NPU kernels; a sample of host-fallback cases must pass too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import conformance  # noqa: E402

import rblnc  # noqa: E402
from rblnc.emulator import NpuProgramRunner  # noqa: E402
from rblnc.emulator.npu import _VIEW_KERNELS, _may_return_view  # noqa: E402
from rblnc.format.artifact import Device  # noqa: E402
from rblnc.target import load_target  # noqa: E402

# Cases that run on the host through onnxruntime or onnx's reference evaluator: bfloat16 and
# float8 values, ops onnxruntime lacks, constant outputs, zero-size dimensions, opset conversion.
HOST_SAMPLE = [
    "test_cast_FLOAT_to_BFLOAT16", "test_cast_FLOAT8E4M3FN_to_FLOAT", "test_cast_FLOAT_to_INT4",
    "test_castlike_FLOAT_to_FLOAT16_expanded", "test_swiglu", "test_constant", "test_reduce_sum_empty_set",
    "test_nonzero_example", "test_if", "test_loop11", "test_gathernd_example_int32", "test_erf",
    "test_flexattention_score_mod",  # a graph attribute (score_mod) on an op that is not If/Loop/Scan
]


# Cases of NPU-listed ops that the NPU does not take (bool data; cubic Resize) and where the
# host fallback, onnxruntime, disagrees with onnx's reference; `make conformance` lists them.
KNOWN_HOST_FAILURES = {"test_reduce_max_empty_set_bool", "test_resize_downsample_scales_cubic_align_corners"}


@pytest.fixture(scope="module")
def cases():
    return conformance.collect_cases()


@pytest.fixture(scope="module")
def npu_cases(cases):
    supported = set(load_target().supported_ops)
    return [c for c in cases if not conformance.not_applicable(c.model)
            and {n.op_type for n in c.model.graph.node} <= supported and c.model.graph.node]


def test_every_case_of_npu_ops_passes(npu_cases, tmp_path):
    assert len(npu_cases) > 300
    results = conformance.run_all(npu_cases, "fp32")
    failed = [f"{r.name}: {r.stage}: {r.reason}" for r in results
              if r.status != "passed" and r.name not in KNOWN_HOST_FAILURES]
    assert not failed, "\n".join(failed)
    on_npu = sum(r.reason in ("npu", "npu+host") for r in results)
    # the rest are integer, float64 or older-opset variants, which the NPU leaves to the host
    assert on_npu > 0.5 * len(results), f"only {on_npu} of {len(results)} ran on the NPU kernels"


def test_host_fallback_sample_passes(cases):
    by_name = {c.name: c for c in cases}
    results = conformance.run_all([by_name[n] for n in HOST_SAMPLE], "fp32")
    failed = [f"{r.name}: {r.stage}: {r.reason}" for r in results if r.status != "passed"]
    assert not failed, "\n".join(failed)


def test_the_report_counts_and_explains():
    results = [conformance.CaseResult("a", "passed", "npu"), conformance.CaseResult("b", "passed", "host"),
               conformance.CaseResult("c", "failed", "Boom: 3 != 4", "run"),
               conformance.CaseResult("d", "n/a", "input 'x' is a sequence, not a tensor")]
    table = conformance.summary_table(results)
    assert "passed                2   (66.7% of 3 applicable)" in table
    assert "failed                1" in table and "not applicable        1" in table
    assert "1  run: Boom: N != N  (e.g. c)" in table


def test_kernels_said_to_return_new_storage_do(npu_cases):
    """The runner updates a tensor in place only if it owns its storage; it trusts that kernels
    outside _VIEW_KERNELS never hand back (a view of) an input. Checked on every NPU case."""
    checked = set()
    for case in npu_cases:
        compiled = rblnc.compile_from_onnx(case.model, dtype="fp32")
        initializers = {t.name for t in case.model.graph.initializer}
        names = [v.name for v in case.model.graph.input if v.name not in initializers]
        feeds = dict(zip(names, (conformance._array(v) for v in case.data_sets[0][0])))
        for partition in compiled.artifact.partitions:
            if partition.device != Device.NPU:
                continue
            runner = NpuProgramRunner(partition.npu_program, engine="torch")
            slots = list(runner._initial)
            for name, index, dtype in runner._inputs:
                slots[index] = torch.from_numpy(np.ascontiguousarray(feeds[name]))
            with torch.inference_mode():
                for (fn, ins, outs, _), command in zip(runner._steps, runner._commands):
                    args = [slots[i] if i >= 0 else None for i in ins]
                    results = fn(args)
                    if not _may_return_view(command) and command.op_type not in _VIEW_KERNELS:
                        # Sharing is fine only with the input the plan gave the output's bytes to.
                        inplace = runner._inplace_input(command, [True] * len(slots))
                        pointers = {a.untyped_storage().data_ptr() for n, a in enumerate(args)
                                    if a is not None and a.numel() and n != inplace}
                        for r in results:
                            assert r.numel() == 0 or r.untyped_storage().data_ptr() not in pointers, command.op_type
                        checked.add(command.op_type)
                    for i, r in zip(outs, results):
                        if i >= 0:
                            slots[i] = r
    assert {"Conv", "Add", "Relu", "Concat", "Softmax", "Gemm"} <= checked
