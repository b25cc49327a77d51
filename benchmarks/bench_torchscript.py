"""TorchScript import and compile times on the zoo, against the ONNX route, with each model's error.

For every zoo model (full input size unless --small): trace it, then time
  import   rblnc's TorchScript importer (freeze + walk), best of --repeat runs;
  peer     the route it replaces: torch.onnx.export (TorchScript exporter) + rblnc's ONNX
           importer, best of --repeat runs; `ratio` = import / peer (below 1: faster);
  compile  passes, partitioning and lowering of the imported graph (fp32, -O2);
and run the compiled model once on the emulator to print its largest absolute difference
from eager torch (YOLOv8n split into box pixels and class scores).

    .venv/bin/python benchmarks/bench_torchscript.py [--small] [--repeat 3] [MODEL ...]
"""

from __future__ import annotations

import argparse
import io
import time
import warnings

import numpy as np
import torch

from rblnc import zoo
from rblnc.api import RBLNCompiledModel
from rblnc.compiler import CompileOptionsIn, compile_graph
from rblnc.importers import import_onnx
from rblnc.importers.torchscript import import_torchscript


def _best(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _onnx_route(name: str, traced: torch.jit.ScriptModule, example: tuple[torch.Tensor, ...]):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(traced, example, buffer, dynamo=False, opset_version=17,
                          input_names=list(zoo.get(name).input_names))
    return import_onnx(buffer.getvalue())


def _error(name: str, actual: np.ndarray, expected: np.ndarray) -> str:
    if name == "yolov8n":
        boxes = np.abs(actual[:, :4] - expected[:, :4]).max()
        scores = np.abs(actual[:, 4:] - expected[:, 4:]).max()
        return f"{boxes:.2e} px / {scores:.2e}"
    return f"{np.abs(actual - expected).max():.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=sorted(zoo.TORCH_ZOO))
    parser.add_argument("--small", action="store_true", help="the zoo's small input sizes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"{'model':<20} {'input':<16} {'nodes':>5} {'import s':>9} {'peer s':>8} {'ratio':>6} "
          f"{'compile s':>9} {'parts':>5} {'npu':>4}  max |error| vs torch")
    for name in args.models:
        entry = zoo.get(name)
        inputs = entry.example_inputs(small=args.small)
        example = tuple(torch.from_numpy(x) for x in inputs)
        traced = zoo.trace(name, small=args.small)
        import_s, graph = _best(lambda: import_torchscript(traced), args.repeat)
        peer_s, _ = _best(lambda: _onnx_route(name, traced, example), args.repeat)
        nodes = len(graph)
        start = time.perf_counter()
        artifact, _ = compile_graph(graph, CompileOptionsIn(dtype="fp32"), "torchscript")
        compile_s = time.perf_counter() - start
        actual = RBLNCompiledModel(artifact).create_runtime().run(*inputs)
        with torch.no_grad():
            expected = entry.build(seed=0)(*example).numpy()
        npu = sum(1 for p in artifact.partitions if p.npu_program is not None)
        shape = "x".join(map(str, inputs[0].shape))
        print(f"{name:<20} {shape:<16} {nodes:>5} {import_s:>9.3f} {peer_s:>8.3f} {import_s / peer_s:>6.2f} "
              f"{compile_s:>9.3f} {len(artifact.partitions):>5} {npu:>4}  {_error(name, actual, expected)}")


if __name__ == "__main__":
    main()
