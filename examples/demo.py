"""`make demo`: prepares the bundled model and inputs, then checks the outputs rblnc wrote.

    python examples/demo.py prepare build/demo   # model.onnx, inputs.npz, reference.npz
    python examples/demo.py check build/demo     # outputs.npz against the reference

The bundled model is ResNet-50 from the onnx package's own test data (nothing is downloaded);
the reference output is onnxruntime's on the same input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

MODEL = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


def prepare(folder: Path) -> None:
    shutil.copyfile(MODEL, folder / "model.onnx")
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    np.savez(folder / "inputs.npz", **{"gpu_0/data_0": x})
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"gpu_0/data_0": x})
    np.savez(folder / "reference.npz", reference=reference)
    print(f"prepared {folder}: {MODEL.name}, input {list(x.shape)}, onnxruntime reference")


def check(folder: Path) -> int:
    with np.load(folder / "outputs.npz") as out, np.load(folder / "reference.npz") as ref:
        actual, expected = next(iter(out.values())), ref["reference"]
    diff = float(np.abs(actual - expected).max())
    ok = np.allclose(actual, expected, rtol=1e-3, atol=1e-4)
    print(f"demo {'OK' if ok else 'FAILED'}: rblnc vs onnxruntime, max |diff| = {diff:.3g} (rtol 1e-3, atol 1e-4)")
    return 0 if ok else 1


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "prepare":
        prepare(folder)
    else:
        sys.exit(check(folder))
