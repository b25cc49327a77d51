"""Registry of seeded reference PyTorch models with example inputs, tracing and ONNX export for compiler tests."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import torch_models

__all__ = ["ZooModel", "TORCH_ZOO", "get", "trace", "export_onnx"]


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry. ``build(seed=...)`` returns an eval-mode model that accepts both
    ``input_shapes`` and ``small_input_shapes`` (ViT slices its position grid and BERT its
    position table to the input, so no size-specific variant is needed)."""

    name: str
    build: Callable[..., nn.Module]
    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    small_input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]
    input_ranges: tuple[tuple[float, float], ...]  # [low, high) of the values example_inputs draws
    output_names: tuple[str, ...] = ("output",)

    def shapes(self, small: bool = False) -> tuple[tuple[int, ...], ...]:
        return self.small_input_shapes if small else self.input_shapes

    def example_inputs(self, small: bool = False, seed: int = 0) -> tuple[np.ndarray, ...]:
        """Deterministic inputs: images uniform in [0, 1), token ids uniform in [0, vocab)."""
        rng = np.random.default_rng(seed)
        inputs = []
        for shape, dtype, (low, high) in zip(self.shapes(small), self.input_dtypes, self.input_ranges):
            if np.issubdtype(np.dtype(dtype), np.integer):
                inputs.append(rng.integers(int(low), int(high), size=shape, dtype=dtype))
            else:
                inputs.append(rng.uniform(low, high, size=shape).astype(dtype))
        return tuple(inputs)

    def example_tensors(self, small: bool = False, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(x) for x in self.example_inputs(small, seed))


def _image_model(name: str, build: Callable[..., nn.Module], size: int, small_size: int,
                 output_names: tuple[str, ...] = ("output",)) -> ZooModel:
    return ZooModel(name, build, ("input",), ((1, 3, size, size),), ((1, 3, small_size, small_size),),
                    ("float32",), ((0.0, 1.0),), output_names)


TORCH_ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in [
        _image_model("resnet50", torch_models.resnet50, 224, 64),
        _image_model("mobilenet_v2", torch_models.mobilenet_v2, 224, 64),
        _image_model("mobilenet_v3_small", torch_models.mobilenet_v3_small, 224, 64),
        _image_model("efficientnet_b0", torch_models.efficientnet_b0, 224, 64),
        _image_model("yolov8n", torch_models.yolov8n, 640, 128, output_names=("output0",)),
        _image_model("unet", torch_models.unet, 256, 64),
        _image_model("vit_tiny", torch_models.vit_tiny, 224, 64),
        ZooModel("bert_encoder", torch_models.bert_encoder, ("input_ids",), ((1, 128),), ((1, 32),),
                 ("int64",), ((0, 8192),), ("last_hidden_state",)),
    ]
}


def get(name: str) -> ZooModel:
    try:
        return TORCH_ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(sorted(TORCH_ZOO))}") from None


def trace(name: str, small: bool = False, seed: int = 0) -> torch.jit.ScriptModule:
    """torch.jit.trace of ``get(name).build(seed=seed)`` on ``example_inputs(small, seed)``."""
    entry = get(name)
    model = entry.build(seed=seed).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
        # check_trace would re-run the model only to compare; callers compare against eager anyway.
        return torch.jit.trace(model, entry.example_tensors(small, seed), check_trace=False)


def export_onnx(name: str, path: str | os.PathLike, small: bool = False, seed: int = 0, opset: int = 17,
                fold_batchnorm: bool = False) -> Path:
    """Export ``get(name).build(seed=seed)`` to ONNX with static shapes (those of ``example_inputs(small)``).

    Uses the TorchScript-based exporter (``dynamo=False``): it works with torch 2.13 without
    onnxscript and writes a single self-contained file; torch flags it deprecated (silenced here).
    BatchNormalization nodes are kept by default so the compiler's own BN folding is exercised;
    ``fold_batchnorm=True`` lets the exporter fold them into the convolutions instead. The
    shape arithmetic the tracer records (Shape -> Gather -> Concat -> Reshape, YOLO's anchor
    grid, ...) is folded into initializers, so the graph holds only the model's real ops.
    """
    import onnx

    entry = get(name)
    model = entry.build(seed=seed).eval()
    path = Path(path)
    # Exporting an eval-mode model in PRESERVE mode is still an inference export; it only skips
    # the exporter's eval peephole pass, which is what fuses Conv+BatchNormalization.
    mode = torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        torch.onnx.export(model, entry.example_tensors(small, seed), str(path), dynamo=False,
                          input_names=list(entry.input_names), output_names=list(entry.output_names),
                          opset_version=opset, do_constant_folding=True, training=mode)
    proto = _fold_static_shape_arithmetic(onnx.load(str(path)))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


# Ops the tracer emits for shape bookkeeping; anything else is left alone even with constant inputs.
_FOLDABLE_OPS = frozenset({"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Reshape",
                           "Cast", "Add", "Sub", "Mul", "Div", "Mod", "Equal", "Where", "ConstantOfShape",
                           "Expand", "Range", "Transpose", "Identity"})


def _fold_static_shape_arithmetic(model):
    """Replace Shape of statically shaped tensors, and the shape-op chains fed only by constants, with initializers."""
    # A Slice whose bounds are still computed blocks shape inference downstream of it, so folding
    # one chain can make the next Shape static: repeat until nothing changes.
    while True:
        node_count = len(model.graph.node)
        model = _fold_once(model)
        if len(model.graph.node) == node_count:
            return model


def _fold_once(model):
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    static_shapes = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in tensor_type.shape.dim):
            static_shapes[info.name] = [d.dim_value for d in tensor_type.shape.dim]
    opsets = {o.domain: o.version for o in model.opset_import}
    graph_outputs = {o.name for o in graph.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kept_nodes = []
    for node in graph.node:
        inputs_known = all(i == "" or i in constants for i in node.input)
        if node.op_type not in _FOLDABLE_OPS or node.domain not in ("", "ai.onnx") or graph_outputs & set(node.output):
            kept_nodes.append(node)
        elif node.op_type == "Shape" and node.input[0] in static_shapes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            shape = static_shapes[node.input[0]][attrs.get("start", 0):attrs.get("end")]
            constants[node.output[0]] = np.array(shape, dtype=np.int64)
        elif inputs_known:
            feeds = {i: constants[i] for i in node.input if i}
            results = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
            constants.update(zip(node.output, (np.asarray(r) for r in results)))
        else:
            kept_nodes.append(node)
    used = {i for node in kept_nodes for i in node.input} | graph_outputs
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items() if name in used)
    return model
