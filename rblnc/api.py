"""The public compile API (`compile_from_*`) and `RBLNCompiledModel`, as in the vendor SDK."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .compiler import CompileOptionsIn, CompileReport, compile_graph
from .format.artifact import Artifact
from .format.reader import load_artifact
from .format.writer import save_artifact
from .importers import import_onnx

if TYPE_CHECKING:
    from .runtime import AsyncRuntime, Runtime

_OPTION_NAMES = tuple(CompileOptionsIn.__dataclass_fields__)


class RBLNCompiledModel:
    """A compiled model: from a compile_from_* call, or loaded with RBLNCompiledModel(path)."""

    def __init__(self, source: str | os.PathLike | Artifact, *, report: CompileReport | None = None):
        if isinstance(source, Artifact):
            self.artifact, self.path = source, None
        else:
            self.artifact, self.path = load_artifact(source), Path(source)
        self.report = report

    def save(self, path: str | os.PathLike) -> Path:
        """Write the .rbln file (atomically: a partial file never appears under `path`)."""
        self.path = save_artifact(self.artifact, path)
        return self.path

    def export_qdq(self, path: str | os.PathLike) -> Path:
        """Write rblnc's int8 quantisation of this model as a QDQ ONNX file (onnxruntime's QDQ
        format: its scales and zero points, float ops left float; docs/precision.md). Only for a
        model this process compiled with dtype="int8" and calibration data: a .rbln file does not
        keep the float graph."""
        from .errors import CompileError
        from .quantize.qdq_export import export_qdq

        quantized = self.report.quantized if self.report is not None else None
        if quantized is None or quantized.qdq_graph is None:
            where = f"loaded from {str(self.path)!r}" if self.report is None and self.path else (
                "compiled without rblnc's own quantisation (dtype='int8' with calibration=...)")
            raise CompileError(f"export_qdq needs the model as compiled with dtype='int8' and calibration data; "
                               f"this one was {where}")
        return export_qdq(quantized.qdq_graph, path)

    def create_runtime(self, *, device: int = 0, tensor_type: str = "np", pace: bool | float = False,
                       **kwargs: Any) -> Runtime:
        from .runtime import Runtime  # imports torch (the emulator); compiling does not need it

        return Runtime(self, device=device, tensor_type=tensor_type, pace=pace, **kwargs)

    def create_async_runtime(self, *, device: int = 0, tensor_type: str = "np", parallel: int | None = None,
                             pace: bool | float = False, **kwargs: Any) -> AsyncRuntime:
        """An AsyncRuntime on this model: many requests in flight, host/DMA/NPU overlapped."""
        from .runtime import AsyncRuntime

        return AsyncRuntime(self, device=device, tensor_type=tensor_type, parallel=parallel, pace=pace, **kwargs)

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.artifact.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.artifact.outputs]

    def model_description(self) -> str:
        from .runtime.runtime import describe

        return describe(self.artifact, str(self.path or ""))

    def __repr__(self) -> str:
        return f"<RBLNCompiledModel inputs={self.input_names} outputs={self.output_names}>"


def _options(kwargs: dict[str, Any], caller: str) -> CompileOptionsIn:
    unknown = sorted(set(kwargs) - set(_OPTION_NAMES))
    if unknown:
        raise TypeError(f"{caller}() got unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTION_NAMES)}")
    return CompileOptionsIn(**kwargs)


def compile_from_onnx(model: str | os.PathLike | bytes | Any, input_info: Sequence | None = None,
                      constant_args: Mapping[str, Any] | None = None, **compile_options: Any) -> RBLNCompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto). `input_info` = [(name, shape, dtype)]
    fixes dynamic dimensions; `constant_args` = {input name: value} makes inputs constants
    (an If on them folds); options: dtype, opt_level, target, verify_each, ..."""
    options = _options(compile_options, "compile_from_onnx")
    graph = import_onnx(model, input_info, constant_args)
    artifact, report = compile_graph(graph, options, "onnx")
    return RBLNCompiledModel(artifact, report=report)


def compile_from_tf_function(func: Any, input_info: Sequence | None = None, outputs: Sequence[str] | None = None,
                             layout: str | None = "NHWC", **compile_options: Any) -> RBLNCompiledModel:
    """Compile a tf.function (or a Keras model, or a ConcreteFunction). `input_info` =
    [(name, shape, dtype)] in call order, e.g. [("x", [1, 512, 512, 3], np.float32)];
    `outputs` picks graph tensors instead of the returned ones; `layout` tags 4-D inputs."""
    from .importers.tensorflow_importer import import_tf_function

    options = _options(compile_options, "compile_from_tf_function")
    graph = import_tf_function(func, input_info, outputs, layout)
    artifact, report = compile_graph(graph, options, "tensorflow")
    return RBLNCompiledModel(artifact, report=report)


def compile_from_tf_graph_def(graph_def: Any, outputs: Sequence[str] | None = None, layout: str | None = "NHWC",
                              input_info: Sequence | None = None, **compile_options: Any) -> RBLNCompiledModel:
    """Compile a frozen TF GraphDef (proto, bytes or .pb path); its Placeholders are the inputs."""
    from .importers.tensorflow_importer import import_tf_graph_def

    options = _options(compile_options, "compile_from_tf_graph_def")
    graph = import_tf_graph_def(graph_def, outputs, layout, input_info)
    artifact, report = compile_graph(graph, options, "tensorflow")
    return RBLNCompiledModel(artifact, report=report)


def compile_from_tf_saved_model(path: str | os.PathLike, input_info: Sequence | None = None,
                                outputs: Sequence[str] | None = None, layout: str | None = "NHWC",
                                signature: str = "serving_default", **compile_options: Any) -> RBLNCompiledModel:
    """Compile a SavedModel directory (through `signature`) or a model file saved by Keras (.keras, .h5)."""
    from .importers.tensorflow_importer import import_tf_saved_model

    options = _options(compile_options, "compile_from_tf_saved_model")
    graph = import_tf_saved_model(path, input_info, outputs, layout, signature)
    artifact, report = compile_graph(graph, options, "tensorflow")
    return RBLNCompiledModel(artifact, report=report)


def compile_from_torchscript(mod: Any, input_names: Sequence[str] | None = None, input_info: Sequence | None = None,
                             constant_args: Mapping[str, Any] | None = None,
                             **compile_options: Any) -> RBLNCompiledModel:
    """Compile a torch.jit.ScriptModule (traced or scripted) or a saved TorchScript file.

    `input_info` = [(name, shape, dtype)], one per tensor argument of forward in order; its
    names become the compiled model's input names. A live traced module needs none (its
    example inputs' shapes are used); a scripted or loaded one does. `constant_args` =
    {argument: value} binds forward arguments at compile time (`forward(self, x, sr: int)`
    with {"sr": 16000}); control flow on them folds. Options as compile_from_onnx."""
    from .importers.torchscript import import_torchscript

    options = _options(compile_options, "compile_from_torchscript")
    graph = import_torchscript(mod, input_info, input_names, constant_args)
    artifact, report = compile_graph(graph, options, "torchscript")
    return RBLNCompiledModel(artifact, report=report)


def compile_from_torch(module: Any, input_info: Sequence, constant_args: Mapping[str, Any] | None = None,
                       **compile_options: Any) -> RBLNCompiledModel:
    """Compile a plain torch.nn.Module: it is traced (in eval mode) on inputs of the shapes in
    `input_info` = [(name, shape, dtype)], with forward's `constant_args` passed by name, then
    compiled as compile_from_torchscript does."""
    from .importers.torchscript import import_torchscript, trace_module

    options = _options(compile_options, "compile_from_torch")
    traced = trace_module(module, input_info, constant_args)
    graph = import_torchscript(traced, input_info, constant_args=None if traced is not module else constant_args)
    artifact, report = compile_graph(graph, options, "torchscript")
    return RBLNCompiledModel(artifact, report=report)
