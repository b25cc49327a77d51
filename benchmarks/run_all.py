"""Runs every benchmarks/bench_*.py in turn (what `make bench` does) and fails if any of them fails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    scripts = sorted(here.glob("bench_*.py"))
    if not scripts:
        print("no benchmarks/bench_*.py found", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(script)], cwd=here.parent)
        print(f"=== {script.name}: {'ok' if result.returncode == 0 else 'FAILED'} in "
              f"{time.perf_counter() - start:.0f} s ===", flush=True)
        if result.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
