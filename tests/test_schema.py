"""The generated FlatBuffers code is what `make schema` would produce from schemas/rbln.fbs."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "rblnc" / "format" / "rbln_generated.py"


def test_generated_code_is_fresh(tmp_path):
    # The same command as `make schema`, writing elsewhere.
    subprocess.run(["make", "-s", "-C", str(ROOT), "schema", f"SCHEMA_OUT={tmp_path}"], check=True)
    for name in ("rbln_generated.py", "rbln_generated.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (GENERATED.parent / name).read_text()
        assert fresh == committed, f"schemas/rbln.fbs changed: run `make schema` and commit {name}"


def test_schema_declares_identifier_and_version():
    text = (ROOT / "schemas" / "rbln.fbs").read_text()
    from rblnc.format.artifact import FILE_IDENTIFIER, FORMAT_VERSION

    assert f'file_identifier "{FILE_IDENTIFIER.decode()}";' in text
    assert f"version {FORMAT_VERSION}:" in text
