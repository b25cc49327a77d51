"""Fuzz target and runners for loading untrusted .rbln files (`make fuzz`).

A mutated artifact must load, prepare a runtime, report and run, or fail with rblnc's own
error in one clear line: never a crash, a hang, a MemoryError or a traceback from numpy,
flatbuffers or onnxruntime.

    python fuzz/fuzz_artifact.py seeds DIR                 # write the seed artifacts
    python fuzz/fuzz_artifact.py mutate --corpus DIR --seed 1 --seconds 60
        # structured mutations, reproducible from (seed, case); each case runs in a worker
        # process with a per-case timeout, so hangs and crashes are caught and kept
    python fuzz/fuzz_artifact.py atheris CORPUS SEEDS -max_total_time=300 -timeout=10
        # coverage-guided (libFuzzer through atheris) with the same mutations as a custom mutator
    python fuzz/fuzz_artifact.py replay FILE...            # run the target on saved inputs

Most mutations recompute the footer's CRC, so the structural and semantic checks behind the
checksum are what gets exercised, not just the checksum."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import selectors
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

FOOTER = struct.Struct("<QI4s")
MAGIC = b"RBLE"
ALIGN = 64
# A per-case budget: the slowest legitimate case (prepare onnxruntime and run a tiny model)
# takes well under a second on a busy 2-core machine.
DEFAULT_TIMEOUT = 10.0
STARTUP_TIMEOUT = 180.0
# Beyond what the worker uses after importing torch and onnxruntime; a forged size that makes
# anything allocate more becomes a MemoryError the harness reports instead of swapping the box.
MEMORY_HEADROOM = 3 * 2**30
# Only run inference when the inputs are this small (elements), so a forged input shape that
# is legal but huge does not turn the fuzzer into a benchmark.
MAX_RUN_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------
# The target


def exercise(data: bytes) -> str:
    """Load, report, prepare a runtime and run once. Returns the outcome; raises anything that
    is not rblnc's own clear error (that is a finding)."""
    import numpy as np

    if os.environ.get("RBLNC_FUZZ_SELFTEST"):
        _misbehave(data)

    from rblnc.errors import ArtifactError, RBLNError
    from rblnc.format.reader import parse_artifact
    from rblnc.report import build_report, render_text
    from rblnc.runtime import Runtime

    try:
        artifact = parse_artifact(data, "<fuzz>")
    except ArtifactError as exc:
        _check_message(exc)
        return "refused at load: " + _category(str(exc))
    report = build_report(artifact, "<fuzz>")
    render_text(report)
    json.dumps(report)
    try:
        runtime = Runtime(artifact)
    except ArtifactError as exc:
        _check_message(exc)
        return "refused at runtime creation"
    runtime.model_description()
    specs = artifact.inputs
    if any(v.shape is None or None in v.shape for v in specs) or \
            sum(math.prod(max(d, 1) for d in v.shape) for v in specs) > MAX_RUN_ELEMENTS:
        return "loaded (inputs too big to run)"
    try:
        runtime.run(*[np.zeros(v.shape, v.dtype) for v in specs])
    except RBLNError as exc:
        _check_message(exc)
        return "run failed: " + type(exc).__name__
    return "loaded and ran"


def _misbehave(data: bytes) -> None:
    """For the harness's own test: inputs that hang, crash or raise, to show each is caught."""
    if data.startswith(b"HANG"):
        while True:
            time.sleep(1)
    if data.startswith(b"CRASH"):
        import ctypes

        ctypes.string_at(0)  # a segmentation fault
    if data.startswith(b"ALLOC"):
        bytearray(2**62)
    if data.startswith(b"FOREIGN"):
        struct.unpack_from("<I", b"", 0)
    if data.startswith(b"PRINT"):
        os.write(1, b"noise from C")


class UnclearError(AssertionError):
    """rblnc's own error type, but not a clear one-line message."""


def _check_message(exc: BaseException) -> None:
    message = str(exc)
    if "\n" in message or not message.strip():
        raise UnclearError(f"not one line: {message!r}")
    if "corrupt model (" in message:  # the reader's last-resort wrapper: a gap in the verifier
        raise UnclearError(f"unverified data reached the generated accessors: {message}")


def _category(message: str) -> str:
    """A short class of refusal for the summary table."""
    for fragment, name in [
        ("no valid footer", "footer"), ("truncated", "truncated"), ("not an .rbln file", "identifier"),
        ("is newer", "version"), ("format version", "version"), ("checksum mismatch", "checksum"),
        ("corrupt model structure", "structure"), ("target spec", "target spec"),
        ("buffer", "buffer span"), ("element type", "dtype"), ("shape", "shape"),
        ("dimension", "shape"), ("exceeds the device", "shape"), ("placed at", "memory plan"),
        ("addresses tensor", "index"), ("writes", "dataflow"), ("reads", "dataflow"),
        ("produces", "dataflow"), ("program", "partition boundary"), ("attribute", "attribute"),
    ]:
        if fragment in message:
            return name
    return "other"


# --------------------------------------------------------------------------------------------
# Mutations


_INTERESTING_32 = [0, 1, 2, 4, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                   0xFFFFFFFF, 0xFFFFFFF0, 0x40000000]
_INTERESTING_64 = [0, 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def split_file(data: bytes) -> tuple[bytes, int]:
    """(the body before the footer, the FlatBuffer size) of a seed."""
    fb_size = FOOTER.unpack_from(data, len(data) - FOOTER.size)[0]
    return data[: len(data) - FOOTER.size], fb_size


def with_footer(body: bytes, fb_size: int) -> bytes:
    size_field = struct.pack("<Q", fb_size)
    return body + size_field + struct.pack("<I4s", zlib.crc32(body + size_field), MAGIC)


def mutate(seeds: list[bytes], rng: random.Random) -> tuple[bytes, str]:
    """One mutant of a random seed and the mode it was made in."""
    data = rng.choice(seeds)
    draw = rng.random()
    if draw < 0.15:  # raw: anything, footer included; the checksum usually catches it
        return bytes(_mutate_bytes(bytearray(data), rng, len(data), seeds)), "raw"
    if draw < 0.45:
        forged = _mutate_fields(data, rng)
        if forged is not None:
            return forged, "fields forged"
    body, fb_size = split_file(data)
    body = bytearray(body)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        before = len(body)
        body = _mutate_bytes(body, rng, fb_size, seeds)
        if rng.random() < 0.5:  # insertions and deletions inside the FlatBuffer move its end
            fb_size = max(0, fb_size + len(body) - before)
    if rng.random() < 0.05:
        fb_size = rng.choice([0, 8, len(body), len(body) + 1, rng.randrange(len(body) + 1)])
    return with_footer(bytes(body), fb_size), "crc fixed"


def _mutate_bytes(data: bytearray, rng: random.Random, hot_end: int, seeds: list[bytes]) -> bytearray:
    if not data:
        return data

    def position(width: int = 1, aligned: int = 1) -> int:
        end = min(hot_end, len(data)) if hot_end > width and rng.random() < 0.85 else len(data)
        at = rng.randrange(max(1, end - width + 1))
        return at - at % aligned

    kind = rng.randrange(9)
    if kind == 0:  # flip bits
        for _ in range(rng.randint(1, 8)):
            at = position()
            data[at] ^= 1 << rng.randrange(8)
    elif kind == 1:  # an interesting byte
        data[position()] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif kind in (2, 3) and len(data) >= 4:  # an interesting 32-bit word (offsets, lengths, indices)
        at = position(4, aligned=4 if kind == 2 else 1)
        value = rng.choice(_INTERESTING_32 + [len(data), hot_end, rng.randrange(2**32)])
        if rng.random() < 0.3:  # an offset nudged
            value = (struct.unpack_from("<I", data, at)[0] + rng.choice([-8, -4, -1, 1, 4, 8, 64])) % 2**32
        struct.pack_into("<I", data, at, value % 2**32)
    elif kind == 4 and len(data) >= 8:  # an interesting 64-bit word (shapes, buffer spans)
        at = position(8, aligned=8)
        struct.pack_into("<Q", data, at, rng.choice(_INTERESTING_64 + [rng.randrange(2**64)]))
    elif kind == 5:  # truncate
        del data[rng.randrange(len(data)):]
    elif kind == 6:  # splice bytes from another place or another seed over these
        donor = rng.choice(seeds)
        length = rng.randint(1, 64)
        start = rng.randrange(max(1, len(donor) - length))
        at = position(length)
        data[at: at + length] = donor[start: start + length]
    elif kind == 7:  # delete a range
        at = position()
        del data[at: at + rng.randint(1, 32)]
    else:  # insert a copy of a range
        at, source = position(), position()
        data[at:at] = data[source: source + rng.randint(1, 32)]
    return data


def _mutate_fields(data: bytes, rng: random.Random) -> bytes | None:
    """A structurally valid FlatBuffer with forged values: unpack with the object API, change
    one to four fields anywhere in the tree (ints, floats, strings, vectors, enums, buffer
    spans, dropped tables), pack again and re-lay the data section behind it."""
    from rblnc.format import rbln_generated as fb
    from rblnc.format.writer import _pack

    from rblnc.format.verify import verify_flatbuffer

    body, fb_size = split_file(data)
    try:  # atheris hands over its own mutants too: only well-formed ones can be unpacked
        verify_flatbuffer(body[:fb_size])
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(body[:fb_size], 0))
    except Exception:
        return None
    leaves: list[tuple[object, str]] = []

    def walk(obj, depth=0) -> None:
        for name, value in vars(obj).items():
            if isinstance(value, list) and value and hasattr(value[0], "__dict__"):
                leaves.append((obj, name))
                for item in value:
                    walk(item, depth + 1)
            elif hasattr(value, "__dict__"):
                leaves.append((obj, name))
                walk(value, depth + 1)
            else:
                leaves.append((obj, name))

    walk(model)
    old_start = -(-fb_size // ALIGN) * ALIGN
    for _ in range(rng.choice([1, 1, 2, 4])):
        obj, name = rng.choice(leaves)
        setattr(obj, name, _forged_value(getattr(obj, name), rng))
    try:
        new_start = -(-len(_pack(model)) // ALIGN) * ALIGN
        for buffer in (model.buffers or [])[1:]:
            if isinstance(buffer, fb.BufferT) and isinstance(buffer.offset, int):
                buffer.offset = (buffer.offset + new_start - old_start) % 2**64
        packed = _pack(model)
    except Exception:  # a forged value the builder cannot encode (out of the field's range)
        return None
    section = body[old_start:]
    padding = b"\0" * (-len(packed) % ALIGN)
    return with_footer(packed + padding + section, len(packed))


def _forged_value(value, rng: random.Random):
    import numpy as np

    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, np.integer)):
        return rng.choice([0, 1, -1, 2, 7, 99, 2**31 - 1, int(value) + 1, int(value) - 1, int(value) * 1000,
                           rng.randrange(-2**31, 2**31)])
    if isinstance(value, float):
        return rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e308, value * 10])
    if isinstance(value, str):
        return rng.choice(["", "x", value + "_", value[::-1], "\u00e9" * 3, "{not json", value * 2])
    if isinstance(value, np.ndarray) or (isinstance(value, list) and (not value or not hasattr(value[0], "__dict__"))):
        items = list(value)
        choice = rng.randrange(5)
        if choice == 0 or not items:
            return items + [rng.choice([-1, 0, 1, 2**31 - 1, 2**40])] if not items or not isinstance(items[0], (str, bytes)) \
                else items + ["extra"]
        if choice == 1:
            return items[:-1]
        if choice == 2:
            return list(reversed(items))
        if choice == 3 and not isinstance(items[0], (str, bytes, float)):
            index = rng.randrange(len(items))
            items[index] = rng.choice([-5, -1, 0, 99, 2**31 - 1, 2**62, int(items[index]) * 2])
            return items
        return None
    if isinstance(value, list):  # tables: drop, duplicate or reorder
        choice = rng.randrange(3)
        return value[:-1] if choice == 0 else value + value[:1] if choice == 1 else list(reversed(value))
    if value is not None and hasattr(value, "__dict__"):
        return None if rng.random() < 0.5 else value
    return value


# --------------------------------------------------------------------------------------------
# Seeds


def make_seeds(folder: Path) -> list[Path]:
    """Compile a few tiny models covering NPU programs, host subgraphs, constants and every
    kind of attribute the lowering writes, in fp32 and in bf16 (the default precision, whose
    programs hold bf16 weights and convert at the partition boundary), with a convolution whose
    batch norm, residual add and relu the emulator fuses and updates in place (memory plan)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import rblnc

    rng = np.random.default_rng(0)

    def model(nodes, inputs, outputs, initializers):
        graph = helper.make_graph(
            nodes, "seed", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            [numpy_helper.from_array(v, n) for n, v in initializers])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        onnx.checker.check_model(proto)
        return proto

    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    models = {
        "conv_relu": model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                            helper.make_node("Relu", ["c"], ["y"])],
                           [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], [("w", w)]),
        "npu_host_npu": model([helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
                               helper.make_node("Erf", ["a"], ["b"]),
                               helper.make_node("Relu", ["b"], ["y"])],
                              [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], [("w", w)]),
        "wide": model([helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
                       helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                       helper.make_node("Reshape", ["p", "shape"], ["r"]),
                       helper.make_node("Gemm", ["r", "g"], ["m"], transB=1, alpha=0.5),
                       helper.make_node("Softmax", ["m"], ["y"], axis=-1)],
                      [("x", [1, 3, 8, 8])], [("y", [1, 5])],
                      [("w", w), ("shape", np.array([1, 16], np.int64)),
                       ("g", rng.standard_normal((5, 16)).astype(np.float32))]),
        "residual": model([helper.make_node("Conv", ["x", "w4"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
                           helper.make_node("Add", ["b", "x"], ["a"]),
                           helper.make_node("Relu", ["a"], ["y"])],
                          [("x", [1, 4, 8, 8])], [("y", [1, 4, 8, 8])],
                          [("w4", rng.standard_normal((4, 4, 3, 3)).astype(np.float32)),
                           ("scale", rng.random(4).astype(np.float32) + 0.5),
                           ("bias", rng.standard_normal(4).astype(np.float32)),
                           ("mean", rng.standard_normal(4).astype(np.float32)),
                           ("var", rng.random(4).astype(np.float32) + 0.5)]),
    }
    precisions = {"conv_relu": ["fp32", "bf16"], "npu_host_npu": ["fp32", "bf16"], "wide": ["fp32"],
                  "residual": ["fp32"]}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, proto in models.items():
        for dtype in precisions[name]:
            path = folder / (f"{name}.rbln" if dtype == "fp32" else f"{name}_{dtype}.rbln")
            rblnc.compile_from_onnx(proto.SerializeToString(), dtype=dtype).save(path)
            paths.append(path)
    return paths


def load_seeds(folder: Path) -> list[bytes]:
    paths = sorted(folder.glob("*.rbln"))
    if not paths:
        paths = make_seeds(folder)
    return [p.read_bytes() for p in paths]


# --------------------------------------------------------------------------------------------
# The worker: runs cases sent on stdin, answers one JSON line each


def _limit_memory() -> None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
                limit = used + MEMORY_HEADROOM
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                return


def worker() -> None:
    import warnings

    warnings.simplefilter("ignore")
    import rblnc.format.reader  # noqa: F401  (import the heavy modules before limiting memory)
    import rblnc.runtime  # noqa: F401
    import rblnc.report  # noqa: F401
    import onnxruntime  # noqa: F401

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    _limit_memory()
    # Answers go on a private copy of stdout; what the library prints to fd 1 (Python or C++)
    # lands in a scratch file and is a finding: `rblnc run` prints its results there.
    answers = os.fdopen(os.dup(1), "wb")
    noise = tempfile.TemporaryFile()
    os.dup2(noise.fileno(), 1)
    answers.write(b'{"ready": true}\n')
    answers.flush()
    stdin = sys.stdin.buffer
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return
        data = stdin.read(struct.unpack("<I", header)[0])
        try:
            answer = {"outcome": exercise(data)}
        except BaseException as exc:  # the finding: report it, keep serving
            answer = {"failure": f"{type(exc).__name__}: {str(exc)[:300]}",
                      "traceback": traceback.format_exc(limit=12)}
        sys.stdout.flush()
        if noise.tell():
            noise.seek(0)
            printed = noise.read(300).decode("utf-8", "replace")
            noise.seek(0)
            noise.truncate()
            answer = {"failure": f"printed to stdout: {printed!r}", "outcome": answer.get("outcome")}
        answers.write((json.dumps(answer) + "\n").encode())
        answers.flush()


class WorkerPool:
    """One worker process, restarted after a hang or a crash (or every `recycle` cases)."""

    def __init__(self, timeout: float, recycle: int = 3000):
        self.timeout, self.recycle = timeout, recycle
        self.process = None
        self.served = 0

    def _start(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.served = 0
        # Importing torch and onnxruntime is not part of any case's time budget.
        if self._answer(STARTUP_TIMEOUT) != {"ready": True}:
            self.stop()
            raise RuntimeError("the fuzz worker did not start")

    def _answer(self, budget: float) -> dict | None:
        """The worker's next line, or None when it sent none within `budget` seconds."""
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        ready = selector.select(budget)
        selector.close()
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            return {}
        try:
            return json.loads(line)
        except ValueError:
            return {"garbled": line[:200].decode("utf-8", "replace")}

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def run(self, data: bytes) -> dict:
        if self.process is None or self.served >= self.recycle:
            self.stop()
            self._start()
        self.served += 1
        try:
            self.process.stdin.write(struct.pack("<I", len(data)) + data)
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self._answer(self.timeout)
        if answer is None:
            self.stop()
            return {"failure": f"hang: no answer in {self.timeout:.0f}s"}
        if not answer:
            code = self.process.wait()
            self.process = None
            return {"failure": f"crash: worker died with status {code}"}
        if "garbled" in answer:
            self.stop()
            return {"failure": f"the worker's answer is garbled: {answer['garbled']!r}"}
        return answer


def run_mutations(corpus: Path, seed: int, cases: int | None, seconds: float | None, timeout: float,
                  findings: Path | None, quiet: bool = False) -> dict:
    seeds = load_seeds(corpus)
    pool = WorkerPool(timeout)
    outcomes: Counter = Counter()
    failures = []
    start = time.monotonic()
    case = 0
    try:
        while (cases is None or case < cases) and (seconds is None or time.monotonic() - start < seconds):
            rng = random.Random(seed * 1_000_003 + case)
            data, mode = mutate(seeds, rng)
            answer = pool.run(data)
            if "failure" in answer:
                failures.append({"seed": seed, "case": case, "mode": mode, **answer})
                outcomes[(mode, "FAILURE")] += 1
                if findings is not None:
                    findings.mkdir(parents=True, exist_ok=True)
                    (findings / f"seed{seed}-case{case}.rbln").write_bytes(data)
                if not quiet:
                    print(f"FAILURE seed {seed} case {case} ({mode}): {answer['failure']}", file=sys.stderr)
            else:
                outcomes[(mode, answer["outcome"])] += 1
            case += 1
    finally:
        pool.stop()
    return {"seed": seed, "cases": case, "seconds": round(time.monotonic() - start, 1),
            "outcomes": {f"{m} | {o}": n for (m, o), n in sorted(outcomes.items())},
            "failures": failures}


def print_summary(summary: dict) -> None:
    print(f"\nfuzz_artifact: {summary['cases']} cases in {summary['seconds']} s (seed {summary['seed']})")
    width = max([len(k) for k in summary["outcomes"]] + [10])
    print(f"  {'mode | outcome':<{width}}  cases")
    for key, count in summary["outcomes"].items():
        print(f"  {key:<{width}}  {count:>5}")
    print(f"  {'failures':<{width}}  {len(summary['failures']):>5}")
    for failure in summary["failures"][:20]:
        print(f"    case {failure['case']} ({failure['mode']}): {failure['failure']}")


# --------------------------------------------------------------------------------------------
# atheris


def run_atheris(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["rblnc"]):
        import rblnc.format.reader  # noqa: F401
        import rblnc.format.verify  # noqa: F401
        import rblnc.report  # noqa: F401
        import rblnc.runtime  # noqa: F401

    corpus_dirs = [Path(a) for a in argv[1:] if not a.startswith("-")]
    seeds = []
    for folder in corpus_dirs:
        if folder.name == "seeds" or list(folder.glob("*.rbln")):
            seeds += load_seeds(folder)
    counter = [0]

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        try:
            return structured(data, max_size, seed)
        except Exception:  # a bug of the mutator must not end the run: fall back to libFuzzer's
            return bytes(atheris.Mutate(data, max_size))

    def structured(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.3 or len(data) < FOOTER.size + 8:
            mutant = atheris.Mutate(data, max_size)  # libFuzzer's own byte mutations, then a fresh CRC
            if len(mutant) >= FOOTER.size + 8 and rng.random() < 0.8:
                body, fb_size = split_file(mutant)
                mutant = with_footer(body, min(fb_size, len(body)))
            return bytes(mutant[:max_size])
        mutant, _ = mutate([data] + seeds[:1], rng)
        return bytes(mutant[:max_size])

    def test_one_input(data: bytes) -> None:
        counter[0] += 1
        exercise(data)  # anything but rblnc's own clear error propagates: libFuzzer keeps the input

    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


# --------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        worker()
        return 0
    if argv[:1] == ["atheris"]:
        run_atheris([sys.argv[0]] + argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    seeds = commands.add_parser("seeds")
    seeds.add_argument("folder", type=Path)
    fuzz = commands.add_parser("mutate")
    fuzz.add_argument("--corpus", type=Path, default=Path("build/fuzz/seeds"))
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--cases", type=int, default=None)
    fuzz.add_argument("--seconds", type=float, default=None)
    fuzz.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    fuzz.add_argument("--findings", type=Path, default=Path("build/fuzz/findings"))
    fuzz.add_argument("--json", type=Path, default=None, help="also write the summary here")
    replay = commands.add_parser("replay")
    replay.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "seeds":
        for path in make_seeds(args.folder):
            print(f"wrote {path}")
        return 0
    if args.command == "replay":
        failed = 0
        for path in args.files:
            try:
                print(f"{path}: {exercise(path.read_bytes())}")
            except BaseException:
                failed += 1
                print(f"{path}: FAILURE\n{traceback.format_exc()}")
        return 1 if failed else 0
    if args.cases is None and args.seconds is None:
        args.cases = 1000
    summary = run_mutations(args.corpus, args.seed, args.cases, args.seconds, args.timeout, args.findings)
    print_summary(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
