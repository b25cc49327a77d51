"""Partitioning: partitions, host ops, DMA per inference and modelled time with the cost-driven
refinement on and off, and the partitioner's own time, for a few models mixing NPU and host ops."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

import rblnc
from rblnc.report import format_time, modelled_time

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from test_partitioning import custom_op_model, detector_model, sandwich_model  # noqa: E402


def yolov8n_with_topk(size: int) -> torch.nn.Module:
    """YOLOv8n and a TopK over its class scores (a host op after a big NPU graph)."""
    from rblnc import zoo

    class WithTopK(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = zoo.torch_models.yolov8n()

        def forward(self, x):
            y = self.model(x)
            return torch.topk(y[:, 4:].amax(dim=1), 10, dim=1)

    return WithTopK().eval()


def chain_model():
    from onnx import helper

    from conftest import make_onnx

    nodes = [helper.make_node("Erf", ["x"], ["a"])]
    for i in range(3):
        nodes.append(helper.make_node("Relu", [nodes[-1].output[0]], [f"r{i}"]))
    nodes.append(helper.make_node("Erf", [nodes[-1].output[0]], ["y"]))
    return make_onnx(nodes, [("x", [1, 256])], [("y", [1, 256])])


def row(name: str, compile_fn) -> None:
    results = {}
    for refine in (True, False):
        start = time.perf_counter()
        compiled = compile_fn(refine)
        seconds = time.perf_counter() - start
        artifact = compiled.artifact
        results[refine] = (artifact, compiled.report.seconds.get("partition", 0.0), seconds)
    artifact, partition_s, compile_s = results[True]
    plain = results[False][0]
    dma = sum(t.bytes for p in artifact.partitions for t in p.transfers)
    moved = sum(1 for p in artifact.partitions for r in p.fallback_reasons if r.est_saving_ns)
    host_ops = sum(len(p.fallback_reasons) for p in artifact.partitions)
    refined_ns, plain_ns = modelled_time(artifact)["total"], modelled_time(plain)["total"]
    print(f"{name:<22} {len(artifact.partitions):>5} {host_ops:>8} {moved:>6} {dma:>10} "
          f"{format_time(plain_ns):>12} {format_time(refined_ns):>12} {refined_ns / plain_ns:>7.3f} "
          f"{partition_s * 1e3:>9.1f} {compile_s:>9.2f}")


def main() -> None:
    print("modelled times on rbln-ca12, fp32; the machine is shared, so the seconds are noisy")
    print(f"{'model':<22} {'parts':>5} {'host ops':>8} {'moved':>6} {'DMA bytes':>10} "
          f"{'no refine':>12} {'refined':>12} {'ratio':>7} {'part. ms':>9} {'compile s':>9}")
    onnx_models = {
        "detector (NMS, TopK)": detector_model(),
        "custom op (function)": custom_op_model(),
        "Conv between Erfs": sandwich_model(4, 4),
        "Relu chain (3) between": chain_model(),
        "big Conv between Erfs": sandwich_model(64, 32),
    }
    for name, model in onnx_models.items():
        row(name, lambda refine, m=model: rblnc.compile_from_onnx(m, dtype="fp32", refine_partitions=refine))
    module = yolov8n_with_topk(160)
    info = [("x", [1, 3, 160, 160], np.float32)]
    row("yolov8n@160 + TopK", lambda refine: rblnc.compile_from_torch(module, info, dtype="fp32",
                                                                      refine_partitions=refine))


if __name__ == "__main__":
    main()
