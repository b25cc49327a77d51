"""Executes an NPU program command by command, the way the device would, with torch kernels."""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch

from ..format.artifact import CommandKind, NpuProgram, TensorKind
from .kernels import KERNELS


class EmulatorError(RuntimeError):
    pass


def _as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # Constants are read-only views of the memory-mapped file; kernels never write to them.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class NpuProgramRunner:
    """Prepared once per loaded artifact; `run` may be called from one thread at a time per
    request (it keeps no per-request state on self)."""

    def __init__(self, program: NpuProgram, name: str = "npu"):
        self.name = name
        self.program = program
        self._constants = {
            i: _as_torch(t.data) for i, t in enumerate(program.tensors) if t.kind == TensorKind.CONSTANT
        }
        self._inputs = {t.name: i for i, t in enumerate(program.tensors) if t.kind == TensorKind.PROGRAM_INPUT}
        self._outputs = {t.name: i for i, t in enumerate(program.tensors) if t.kind == TensorKind.PROGRAM_OUTPUT}
        self._steps = []
        last_use: dict[int, int] = {}
        for step, command in enumerate(program.commands):
            if command.kind != CommandKind.KERNEL:
                continue  # DMA between device memories moves no values in a functional run
            fn = KERNELS.get(command.op_type) if not command.domain else KERNELS.get(f"{command.domain}::{command.op_type}")
            if fn is None:
                raise EmulatorError(f"{name}: no emulator kernel for {command.op_type} (command {command.name})")
            self._steps.append((fn, command))
            for i in command.inputs:
                last_use[i] = step
        # Activations are dropped after their last reader, as the memory plan reuses them.
        self._release_after = {}
        for index, step in last_use.items():
            if program.tensors[index].kind == TensorKind.ACTIVATION:
                self._release_after.setdefault(step, []).append(index)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        slots: dict[int, torch.Tensor] = dict(self._constants)
        for name, index in self._inputs.items():
            slots[index] = _as_torch(np.ascontiguousarray(inputs[name]))
        with torch.inference_mode():
            for step, (fn, command) in enumerate(self._steps):
                args = [slots[i] if i >= 0 else None for i in command.inputs]
                try:
                    results = fn(args, command.attributes)
                except Exception as exc:
                    raise EmulatorError(
                        f"{self.name}: command {command.name} ({command.op_type}) failed: {exc}"
                    ) from exc
                for index, value in zip(command.outputs, results):
                    if index >= 0:
                        slots[index] = value
                for index in self._release_after.get(step, ()):
                    slots.pop(index, None)
        return {name: slots[index].contiguous().numpy() for name, index in self._outputs.items()}
