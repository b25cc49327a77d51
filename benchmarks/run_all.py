"""`make bench`: runs every benchmark script in this folder, one after another."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for script in sorted(here.glob("*.py")):
        if script.name != Path(__file__).name and not script.name.startswith("_"):
            print(f"== {script.name}", flush=True)
            sys.argv = [str(script)]
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exit_:
                if exit_.code:
                    sys.exit(exit_.code)
            print(flush=True)
