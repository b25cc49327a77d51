"""ONNX backend node tests through rblnc (compile, save, load, run) as a pass/fail report.

    python tools/conformance.py [--dtype fp32] [-k REGEX] [--list failed|all] [--json FILE]

Every case of `onnx.backend.test.case.node.collect_testcases` whose model has tensor-typed
inputs and outputs with static shapes is applicable: it must compile, run (on the NPU kernels
or through host fallback) and match the expected outputs at the case's own tolerances, as
onnx's backend runner checks them. The others are reported as not applicable, with why.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

CASE_TIMEOUT_S = 60


@dataclass
class CaseResult:
    name: str
    status: str            # "passed", "failed" or "n/a"
    reason: str = ""       # why it failed or is not applicable; for passed: "npu", "host" or "npu+host"
    stage: str = ""        # where it failed: import/compile, save/load, run, compare
    op_types: str = ""

    @property
    def group(self) -> str:
        """The reason without the case-specific details, to count alike failures together."""
        if self.stage == "compare":  # what differs says little; which ops says more
            ops = self.op_types if len(self.op_types) < 60 else self.op_types[:57] + "..."
            return f"compare: outputs differ from the expected ones; ops {ops}"
        text = re.sub(r"\btest_\w+", "<model>", self.reason)  # errors name the model after the case
        text = re.sub(r"'[^']*'", "'…'", text)
        text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)
        return f"{self.stage}: {text}"[:140] if self.stage else text[:140]


def collect_cases(pattern: str | None = None):
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        cases = collect_testcases(None)
    if pattern:
        cases = [c for c in cases if re.search(pattern, c.name)]
    return cases


def not_applicable(model: onnx.ModelProto) -> str | None:
    """Why a case is outside the scope (static shapes, tensor types), or None."""
    initializers = {t.name for t in model.graph.initializer}
    for kind, values in (("input", [v for v in model.graph.input if v.name not in initializers]),
                         ("output", list(model.graph.output))):
        for value in values:
            which = value.type.WhichOneof("value")
            if which != "tensor_type":
                return f"{kind} {value.name!r} is a {which.replace('_type', '')}, not a tensor"
            tensor = value.type.tensor_type
            if not tensor.HasField("shape"):
                return f"{kind} {value.name!r} has no static shape (rank unknown)"
            if any(not d.HasField("dim_value") for d in tensor.shape.dim):
                return f"{kind} {value.name!r} has a dynamic dimension"
    return None


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"no result within {CASE_TIMEOUT_S}s")


def run_case(case, dtype: str, folder: Path) -> CaseResult:
    import rblnc
    from rblnc.format.artifact import Device
    from onnx.backend.test.runner import Runner

    model = case.model
    ops = ",".join(sorted({n.op_type for n in model.graph.node}))
    reason = not_applicable(model)
    if reason:
        return CaseResult(case.name, "n/a", reason, op_types=ops)
    initializers = {t.name for t in model.graph.initializer}
    input_names = [v.name for v in model.graph.input if v.name not in initializers]
    stage = "import/compile"
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = rblnc.compile_from_onnx(model, dtype=dtype)
            stage = "save/load"
            path = compiled.save(folder / f"{case.name}.rbln")
            runtime = rblnc.Runtime(path)
            devices = {p.device for p in runtime.artifact.partitions}
            where = "+".join(d for d, on in (("npu", Device.NPU in devices), ("host", Device.HOST in devices)) if on)
            for inputs, expected in case.data_sets:
                stage = "run"
                inputs, expected = [_array(v) for v in inputs], [_array(v) for v in expected]
                feeds = dict(zip(input_names, inputs))
                outputs = runtime.run(**feeds) if feeds else runtime.run()
                outputs = outputs if isinstance(outputs, list) else [outputs]
                stage = "compare"
                Runner.assert_similar_outputs(list(expected), outputs, rtol=case.rtol, atol=case.atol)
        return CaseResult(case.name, "passed", where or "empty", op_types=ops)
    except Exception as exc:  # the report records every kind of failure
        lines = str(exc).strip().splitlines()
        text = next((l.strip() for l in lines if l.strip() and not l.startswith("Not equal")), type(exc).__name__)
        if stage == "compare":
            mismatch = next((l.strip() for l in lines if "Mismatched elements" in l or "Max absolute" in l), "")
            text = f"outputs differ ({mismatch or text})"
        return CaseResult(case.name, "failed", f"{type(exc).__name__}: {text}"[:300], stage, ops)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _array(value):
    """Cases keep tensors numpy cannot express exactly (float8, int4) as TensorProtos."""
    from onnx import numpy_helper

    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def run_all(cases, dtype: str = "fp32", progress=None) -> list[CaseResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="rblnc-conformance-") as tmp:
        for i, case in enumerate(cases):
            result = run_case(case, dtype, Path(tmp))
            results.append(result)
            for stale in Path(tmp).glob("*.rbln"):
                stale.unlink()
            if progress:
                progress(i + 1, len(cases), result)
    return results


def summary_table(results: list[CaseResult], *, top: int = 25) -> str:
    counts = collections.Counter(r.status for r in results)
    applicable = counts["passed"] + counts["failed"]
    rate = 100.0 * counts["passed"] / applicable if applicable else 0.0
    where = collections.Counter(r.reason for r in results if r.status == "passed")
    lines = [
        f"ONNX backend node tests through rblnc: {len(results)} cases",
        "",
        f"  {'status':<16} {'cases':>6}",
        f"  {'passed':<16} {counts['passed']:>6}   ({rate:.1f}% of {applicable} applicable)",
        f"    {'on the NPU':<14} {where['npu']:>6}",
        f"    {'on the host':<14} {where['host']:>6}",
        f"    {'NPU and host':<14} {where['npu+host']:>6}",
        f"  {'failed':<16} {counts['failed']:>6}",
        f"  {'not applicable':<16} {counts['n/a']:>6}",
    ]
    for status, title in (("failed", "failures by reason"), ("n/a", "not applicable, by reason")):
        groups = collections.Counter(r.group for r in results if r.status == status)
        if not groups:
            continue
        lines += ["", f"{title}:"]
        for group, n in groups.most_common(top):
            example = next(r.name for r in results if r.status == status and r.group == group)
            lines.append(f"  {n:>5}  {group}  (e.g. {example})")
        if len(groups) > top:
            lines.append(f"  ... {len(groups) - top} more reasons (--list {status if status == 'failed' else 'all'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", help="precision to compile for (default fp32: exact tolerances)")
    parser.add_argument("-k", dest="pattern", default=None, help="only cases whose name matches this regex")
    parser.add_argument("--list", choices=["failed", "all"], default=None, help="also list cases one per line")
    parser.add_argument("--json", type=Path, default=None, help="write every case's result to this file")
    parser.add_argument("--min-pass-rate", type=float, default=None,
                        help="exit with status 1 when fewer applicable cases pass (percent)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cases = collect_cases(args.pattern)

    def progress(done, total, result):
        if sys.stderr.isatty() or done % 200 == 0 or done == total:
            print(f"\r  {done}/{total} cases", end="" if done < total else "\n", file=sys.stderr, flush=True)

    results = run_all(cases, args.dtype, progress)
    print(summary_table(results))
    if args.list:
        print()
        for r in results:
            if args.list == "all" or r.status == "failed":
                print(f"{r.status:<7} {r.name:<60} {r.stage + ': ' if r.stage else ''}{r.reason}")
    print(f"\n{time.perf_counter() - start:.0f}s, dtype {args.dtype}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    applicable = [r for r in results if r.status != "n/a"]
    rate = 100.0 * sum(r.status == "passed" for r in applicable) / max(1, len(applicable))
    if args.min_pass_rate is not None and rate < args.min_pass_rate:
        print(f"pass rate {rate:.1f}% is below {args.min_pass_rate}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
