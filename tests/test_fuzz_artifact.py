"""A short seeded run of the .rbln fuzz target (fuzz/fuzz_artifact.py; `make fuzz` runs it for
minutes), and proof that its harness catches what it is there to catch."""

from __future__ import annotations

import importlib.util
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz" / "fuzz_artifact.py"


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_artifact", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_artifact"] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "seeds"
    harness.make_seeds(folder)
    return folder


def test_seeds_load_and_run(seeds_dir):
    for path in sorted(seeds_dir.glob("*.rbln")):
        assert harness.exercise(path.read_bytes()) == "loaded and ran", path.name


def test_seeded_mutation_run_finds_nothing(seeds_dir, tmp_path):
    """~1,500 mutants (a few seconds): every one loads and runs, or is refused by rblnc's own
    error in one line; the per-case timeout and the worker process catch hangs and crashes."""
    summary = harness.run_mutations(seeds_dir, seed=20240611, cases=1500, seconds=None, timeout=10.0,
                                    findings=tmp_path / "findings", quiet=True)
    harness.print_summary(summary)
    assert summary["cases"] == 1500
    assert summary["failures"] == [], summary["failures"][:3]
    outcomes = summary["outcomes"]
    modes = {key.split(" | ")[0] for key in outcomes}
    assert modes == {"raw", "crc fixed", "fields forged"}
    # The run reaches past the checksum into the verifier, the semantic checks, the runtime.
    reached = {key.split(" | ")[1] for key in outcomes}
    for expected in ("refused at load: checksum", "refused at load: structure", "loaded and ran",
                     "refused at load: dataflow", "refused at runtime creation"):
        assert expected in reached, sorted(reached)


def test_mutants_are_reproducible_and_mostly_checksummed(seeds_dir):
    seeds = harness.load_seeds(seeds_dir)
    fixed = 0
    for case in range(200):
        first = harness.mutate(seeds, random.Random(case))
        assert harness.mutate(seeds, random.Random(case)) == first
        data, mode = first
        if mode != "raw":
            body = data[:-8]
            assert struct.unpack_from("<I", data, len(data) - 8)[0] == zlib.crc32(body)
            fixed += 1
    assert fixed > 150  # most mutants get past the checksum to the parser


@pytest.mark.parametrize("payload, failure", [
    (b"HANG", "hang: no answer"),
    (b"CRASH", "crash: worker died with status -11"),
    (b"ALLOC", "MemoryError"),
    (b"FOREIGN", "error: unpack_from requires"),
    (b"PRINT", "printed to stdout: 'noise from C'"),
])
def test_harness_catches_hangs_crashes_and_foreign_errors(monkeypatch, payload, failure):
    monkeypatch.setenv("RBLNC_FUZZ_SELFTEST", "1")
    pool = harness.WorkerPool(timeout=3.0)
    try:
        answer = pool.run(payload)
        assert failure in answer.get("failure", ""), answer
        # The pool goes on after the failure with a fresh worker where needed.
        assert "outcome" in pool.run(b"not an artifact at all, but long enough to have a footer")
    finally:
        pool.stop()


def test_unclear_messages_are_findings():
    with pytest.raises(harness.UnclearError):
        harness._check_message(ValueError("two\nlines"))
    with pytest.raises(harness.UnclearError):
        harness._check_message(ValueError("m.rbln: corrupt model (struct.error: unpack_from requires)"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris has no wheel for this platform")
def test_atheris_short_run(seeds_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [sys.executable, str(FUZZ), "atheris", str(corpus), str(seeds_dir), "-runs=400", "-seed=7",
         "-timeout=10", "-rss_limit_mb=6144", f"-artifact_prefix={tmp_path}/", "-max_len=65536"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 400 runs" in result.stderr
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
