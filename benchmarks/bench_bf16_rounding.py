"""Rounding fp32 to bf16 (and back) inside an onnxruntime model: the Cast pair the emulator's
onnxruntime engine uses (rblnc/emulator/onnx_program.py) against rounding by float arithmetic
(Veltkamp's split), which onnxruntime vectorises: exactness against torch's
`x.to(torch.bfloat16).float()` and time per element, in one run.

    .venv/bin/python benchmarks/bench_bf16_rounding.py [--exhaustive] [--threads 1]

Forms:
* `cast`: Cast(BFLOAT16), Cast(FLOAT): what the engine does; onnxruntime converts element by element.
* `split`: p = 65537 x; x' = p - (p - x) (three elementwise ops; 65537 = 2^16 + 1 leaves 24 - 16 = 8
  significant bits, bf16's, rounded to nearest even).
* `split_scaled`: the split on x 2^-16, then times 2^16 (5 ops): no overflow below 2^128 - 2^112,
  and fp32's subnormal grid at 2^-149 is bf16's at 2^-133 once scaled.
* `cast_fp16`: Cast(FLOAT16), Cast(FLOAT), for scale (fp16 programs; F16C converts 8 at a time).
* `bits`: round to nearest even on the bit pattern, as torch does: BitCast(UINT32), add 0x7FFF plus
  bit 16, clear the low 16 bits, BitCast(FLOAT) (6 ops; BitCast needs opset 26, onnxruntime >= 1.23).
  No NaN guard: a NaN whose payload is only in its low 16 bits would become an infinity.

Exactness: every fp32 bit pattern with `--exhaustive` (2^32, about 1 minute per form), otherwise
every exponent with 4096 mantissas each (ties, their neighbours and random ones) plus the edge
cases (zeros, subnormals, the overflow thresholds, infinities, NaN). NaN counts as equal to NaN.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

FORMS = ("cast", "split", "split_scaled", "cast_fp16", "bits")
BIT_CONSTANTS = {"sixteen": 16, "lsb": 1, "half": 0x7FFF, "high": 0xFFFF0000}
SHAPES = [(1, 16, 112, 112), (1, 96, 28, 28), (1, 576, 7, 7), (1, 1280)]


def rounding_nodes(form: str, x: str, y: str) -> list[onnx.NodeProto]:
    node = helper.make_node
    if form == "none":  # the chain's Adds alone, to subtract
        return [node("Identity", [x], [y])]
    if form in ("cast", "cast_fp16"):
        narrow = TensorProto.BFLOAT16 if form == "cast" else TensorProto.FLOAT16
        return [node("Cast", [x], [f"{y}/n"], to=narrow), node("Cast", [f"{y}/n"], [y], to=TensorProto.FLOAT)]
    if form == "bits":
        u, bits = f"{y}/u", TensorProto.UINT32
        return [node("BitCast", [x], [u], to=bits), node("BitShift", [u, "sixteen"], [f"{y}/s"], direction="RIGHT"),
                node("BitwiseAnd", [f"{y}/s", "lsb"], [f"{y}/l"]), node("Add", [u, "half"], [f"{y}/h"]),
                node("Add", [f"{y}/h", f"{y}/l"], [f"{y}/t"]), node("BitwiseAnd", [f"{y}/t", "high"], [f"{y}/r"]),
                node("BitCast", [f"{y}/r"], [y], to=TensorProto.FLOAT)]
    if form == "split":
        return [node("Mul", [x, "split"], [f"{y}/p"]), node("Sub", [f"{y}/p", x], [f"{y}/d"]),
                node("Sub", [f"{y}/p", f"{y}/d"], [y])]
    return [node("Mul", [x, "down"], [f"{y}/q"]), node("Mul", [f"{y}/q", "split"], [f"{y}/p"]),
            node("Sub", [f"{y}/p", f"{y}/q"], [f"{y}/d"]), node("Sub", [f"{y}/p", f"{y}/d"], [f"{y}/h"]),
            node("Mul", [f"{y}/h", "up"], [y])]


def session(form: str, shape: list, chain: int, threads: int) -> ort.InferenceSession:
    """`chain` times: x + 1, then the rounding (the Add keeps each rounding's input unrounded)."""
    constants = {"split": 65537.0, "down": 2.0 ** -16, "up": 2.0 ** 16, "one": 1.0}
    nodes, current = [], "x"
    for i in range(chain):
        if chain > 1:
            nodes.append(helper.make_node("Add", [current, "one"], [f"a{i}"]))
            current = f"a{i}"
        nodes += rounding_nodes(form, current, f"r{i}" if i < chain - 1 else "y")
        current = f"r{i}"
    graph = helper.make_graph(
        nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in constants.items()]
        + [numpy_helper.from_array(np.array(v, np.uint32), k) for k, v in BIT_CONSTANTS.items()])
    bitcast = form == "bits"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26 if bitcast else 17)])
    model.ir_version = 11 if bitcast else 9
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def patterns(exhaustive: bool):
    """fp32 bit patterns to check, in chunks."""
    if exhaustive:
        step = 1 << 25
        for start in range(0, 1 << 32, step):
            yield np.arange(start, start + step, dtype=np.uint64).astype(np.uint32)
        return
    rng = np.random.default_rng(0)
    exponents = np.arange(256, dtype=np.uint32) << 23
    ties = (np.arange(128, dtype=np.uint32) << 16) | 0x8000       # exactly between two bf16 values
    mantissas = np.concatenate([ties, ties - 1, ties + 1, rng.integers(0, 1 << 23, 4096 - 384, dtype=np.uint32)])
    values = (exponents[:, None] | mantissas[None, :]).ravel()
    yield np.concatenate([values, values | 0x80000000, np.arange(0, 1 << 16, dtype=np.uint32),  # zeros, subnormals
                          np.array([0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0x777FFF00, 0x7F800000, 0xFF800000,
                                    0x7FC00000, 0x7F800001], np.uint32)])


def exactness(form: str, exhaustive: bool) -> tuple[int, int, list[str]]:
    """(mismatches, patterns checked, a few counterexamples) of `form` against torch."""
    run = session(form, [None], 1, 1)
    bad, total, examples = 0, 0, []
    for bits in patterns(exhaustive):
        x = bits.view(np.float32)
        expected = torch.from_numpy(x).to(torch.bfloat16 if form != "cast_fp16" else torch.float16).float().numpy()
        with np.errstate(all="ignore"):
            actual = run.run(None, {"x": x})[0]
        differ = (expected.view(np.uint32) != actual.view(np.uint32)) & ~(np.isnan(expected) & np.isnan(actual))
        bad += int(differ.sum())
        total += x.size
        for i in np.flatnonzero(differ)[:: max(1, int(differ.sum()) // 3)][:3]:
            if len(examples) < 6:
                examples.append(f"{x[i]:.8g} -> {actual[i]:.8g} (torch {expected[i]:.8g})")
    return bad, total, examples


def per_element(form: str, shape: tuple, threads: int, rounds: int = 7, chain: int = 4) -> float:
    """Seconds per element of one rounding: (chain of Add + rounding) minus (chain of Add alone)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    runs = {name: session(name, list(shape), chain, threads) for name in (form, "none")}
    timings = {name: [] for name in runs}
    repeat = max(3, int(2e6 // x.size))
    for _ in range(rounds):
        for name, run in runs.items():
            run.run(None, {"x": x})
            start = time.perf_counter()
            for _ in range(repeat):
                run.run(None, {"x": x})
            timings[name].append((time.perf_counter() - start) / repeat)
    return (np.median(timings[form]) - np.median(timings["none"])) / chain / x.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exhaustive", action="store_true", help="check all 2^32 fp32 bit patterns")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, threads {args.threads}")
    print(f"\nexactness against torch ({'all 2^32 fp32 bit patterns' if args.exhaustive else 'sampled patterns'}; "
          "cast_fp16 against torch's float16):")
    for form in FORMS:
        bad, total, examples = exactness(form, args.exhaustive)
        print(f"  {form:<13} {bad:>11,} of {total:>13,} differ  {'; '.join(examples)}")
    print("\nns per element of one rounding (median of 7 rounds, minus the Add chain alone):")
    print(f"  {'shape':<20}" + "".join(f"{form:>14}" for form in FORMS) + "   split / cast")
    for shape in SHAPES:
        costs = {form: per_element(form, shape, args.threads) for form in FORMS}
        print(f"  {str(shape):<20}" + "".join(f"{costs[f] * 1e9:>14.2f}" for f in FORMS)
              + f"   {costs['split'] / costs['cast']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
