"""TorchScript importer: a traced or scripted module (or a saved .pt) becomes an IR graph.

The module is frozen (weights become constants), calls are inlined, and the graph is walked
once with static input shapes. Every TorchScript value maps to a Python value: a
`TensorRef` for tensors computed at run time, a `torch.Tensor` for constants, or a plain
Python number/list/None. Ops whose inputs are all known are run by torch at compile time;
the others go through the converter table (`registry.CONVERTERS`). Control flow whose
condition is known is resolved (If) or unrolled (Loop). Problems are collected and reported
together, each with the user's module and source line.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...errors import DataDependentError, DynamicShapeError, ModelImportError, UnsupportedOpError
from ...ir.graph import CANONICAL_OPSET, Graph, TensorInfo
from ..input_info import InputSpec, parse_input_info
from .emit import (
    DataDependent, Emitter, Poisoned, TensorRef, Unsupported, contains, numpy_dtype, torch_dtype,
)
from .ops_shape import broadcast_to, flat_positions, write_at
from .registry import CONVERTERS, is_tensor

# Ops never run at compile time even with constant inputs: their result is random, or they
# have effects beyond their outputs.
_NEVER_EVALUATE = {
    "aten::rand", "aten::randn", "aten::randint", "aten::rand_like", "aten::randn_like", "aten::randint_like",
    "aten::randperm", "aten::bernoulli", "aten::multinomial", "aten::normal", "aten::uniform_", "aten::normal_",
    "prim::Print", "aten::warn", "prim::RaiseException", "prim::profile", "prim::SetAttr",
}
# Ops whose result may share memory with their first input: an in-place write into the
# result must reach that input (x[a:b] = v is slice + fill_). Whether it does (reshape copies a
# non-contiguous tensor) is found by replaying the ops on a tensor of element positions.
_VIEW_OPS = {
    "aten::view", "aten::reshape", "aten::slice", "aten::select", "aten::narrow", "aten::transpose", "aten::permute",
    "aten::expand", "aten::squeeze", "aten::unsqueeze", "aten::t", "aten::flatten", "aten::as_strided",
    "aten::diagonal", "aten::unflatten", "aten::chunk", "aten::split", "aten::unbind", "aten::__getitem__",
    "aten::contiguous", "aten::detach", "aten::view_as", "aten::reshape_as", "aten::alias", "aten::movedim",
    "aten::swapaxes", "aten::split_with_sizes", "aten::tensor_split", "aten::expand_as", "aten::unsafe_chunk",
    "aten::unsafe_split",
}
# The first argument of an op that writes into it: `Tensor(a!) self`.
_WRITES_SELF = re.compile(r"^[\w:.]+\(Tensor\(\w!\) self\b")
_IGNORED = {"prim::Print", "aten::warn", "prim::profile", "aten::set_grad_enabled"}
_MAX_UNROLL = 100_000
_TORCH_DIR = str(Path(torch.__file__).parent)


@dataclass
class _Problem:
    kind: str
    location: str
    reason: str
    data_dependent: bool

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.kind}{where}: {self.reason}" if self.reason else f"{self.kind}{where}"


def import_torchscript(model: Any, input_info: Sequence | None = None,
                       input_names: Sequence[str] | None = None,
                       constant_args: Mapping[str, Any] | None = None) -> Graph:
    """Import a torch.jit.ScriptModule (traced or scripted) or a saved TorchScript file.

    `input_info` = [(name, shape, dtype)], one entry per tensor argument of forward, in
    order; its names become the compiled model's input names. Without it, shapes come from
    the example inputs a live traced module recorded, and names from forward's arguments
    (or `input_names`). `constant_args` = {name: value} binds forward arguments (an int
    sample rate, a mode flag, a tensor) to values at compile time: they are not inputs, and
    control flow on them folds."""
    module, origin = _load(model)
    specs = parse_input_info(input_info)
    recorded = _recorded_inputs(module)
    with torch.no_grad():
        graph_ts, schema = _frozen_graph(module, origin)
        name = Path(origin).stem if isinstance(model, (str, os.PathLike)) else origin
        importer = _Importer(graph_ts, schema, origin, name)
        return importer.run(specs, recorded, input_names, dict(constant_args or {}))


class _BoundArguments(torch.nn.Module):
    """`module` called with some keyword arguments fixed, so tracing bakes them in."""

    def __init__(self, module: torch.nn.Module, constant_args: dict[str, Any]):
        super().__init__()
        self.module, self.constant_args = module, constant_args

    def forward(self, *args):
        return self.module(*args, **self.constant_args)


def trace_module(module: Any, input_info: Sequence | None,
                 constant_args: Mapping[str, Any] | None = None) -> torch.jit.ScriptModule:
    """torch.jit.trace of a plain nn.Module (in eval mode) on inputs of the `input_info` shapes:
    uniform [0, 1) for floating-point inputs, zeros for integer ones (valid token ids).
    `constant_args` are passed to forward by name on every call the trace records."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    if not isinstance(module, torch.nn.Module):
        raise ModelImportError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if constant_args:
        parameters = inspect.signature(module.forward).parameters
        unknown = sorted(set(constant_args) - set(parameters))
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            raise ModelImportError(
                f"{type(module).__name__}: constant_args names {', '.join(map(repr, unknown))}, but forward's "
                f"arguments are {', '.join(map(repr, parameters)) or 'none'}"
            )
        module = _BoundArguments(module, dict(constant_args))
    specs = parse_input_info(input_info)
    if not specs:
        raise ModelImportError(
            f"{type(module).__name__}: tracing needs the input shapes; pass "
            "input_info=[('x', [1, 3, 224, 224], 'float32')]"
        )
    generator = torch.Generator().manual_seed(0)
    examples = []
    for spec in specs:
        dtype = torch_dtype(spec.dtype)
        if dtype.is_floating_point:
            examples.append(torch.rand(spec.shape, generator=generator).to(dtype))
        else:
            examples.append(torch.zeros(spec.shape, dtype=dtype))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
            return torch.jit.trace(module, tuple(examples), check_trace=False)
    except Exception as exc:  # whatever the model's forward raises on these inputs
        raise ModelImportError(f"{type(module).__name__}: torch.jit.trace failed ({_first_line(exc)})") from None
    finally:
        module.train(was_training)


# ----------------------------------------------------------------------------- loading


def _load(model: Any) -> tuple[torch.jit.ScriptModule, str]:
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule)):
        return model, type(model).__name__ if not hasattr(model, "original_name") else model.original_name
    if isinstance(model, torch.nn.Module):
        raise ModelImportError(
            f"{type(model).__name__} is a plain nn.Module, not TorchScript: use "
            "rblnc.compile_from_torch(module, input_info) to have it traced, or pass "
            "torch.jit.trace(module, example_inputs)"
        )
    if not isinstance(model, (str, os.PathLike)):
        raise ModelImportError(
            f"expected a torch.jit.ScriptModule or a path to a saved one, got {type(model).__name__}"
        )
    path = Path(model)
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # the user asked rblnc to read the file: torch's advice is not for them
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            return torch.jit.load(str(path), map_location="cpu"), str(path)
    except Exception as exc:  # torch raises RuntimeError/ValueError/pickle errors for foreign files
        raise ModelImportError(
            f"{path}: not a TorchScript module ({_first_line(exc)}); save one with "
            "torch.jit.trace(model, example_inputs).save(path)"
        ) from None


def _recorded_inputs(module: torch.jit.ScriptModule) -> list[InputSpec] | None:
    """Shapes and dtypes of the example inputs a live traced module was traced with."""
    try:
        recorded = module._c._retrieve_traced_inputs()
        traced = recorded["forward"] if "forward" in recorded else None
    except (AttributeError, RuntimeError, KeyError):
        traced = None
    if not traced:
        return None
    specs = []
    for tensor in traced:
        if not isinstance(tensor, torch.Tensor):
            return None
        specs.append(InputSpec("", tuple(tensor.shape), numpy_dtype(tensor.dtype)))
    return specs


def _frozen_graph(module: torch.jit.ScriptModule, origin: str):
    was_training = module.training
    try:
        module.eval()  # an inference artifact: BatchNorm uses its running statistics
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(module)
    except Exception as exc:
        raise ModelImportError(f"{origin}: torch.jit.freeze failed ({_first_line(exc)})") from None
    finally:
        module.train(was_training)
    graph = frozen.graph
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_constant_propagation(graph)
    return graph, frozen.forward.schema


# ----------------------------------------------------------------------------- the walk


class _Importer:
    def __init__(self, graph_ts: torch._C.Graph, schema: torch._C.FunctionSchema, origin: str, name: str):
        self.ts = graph_ts
        self.schema = schema
        self.origin = origin
        self.graph = Graph(name=name, opset=CANONICAL_OPSET)
        self.emit = Emitter(self.graph)
        self.values: dict[int, Any] = {}
        # A view value -> the value it views into (the root, never itself a view).
        self.view_base: dict[int, torch._C.Value] = {}
        # A root value -> the nodes that made views of it, in order, by their first output
        # (re-run after a write).
        self.view_nodes: dict[int, dict[int, torch._C.Node]] = {}
        # A value -> the results of in-place ops on it (the same tensor under other names).
        self.aliases: dict[int, list[torch._C.Value]] = {}
        self.problems: list[_Problem] = []
        self._schemas: dict[str, list[str] | None] = {}

    # -- inputs and outputs -----------------------------------------------------------

    def run(self, specs: list[InputSpec], recorded: list[InputSpec] | None,
            input_names: Sequence[str] | None, constant_args: dict[str, Any]) -> Graph:
        self._bind_inputs(specs, recorded, input_names, constant_args)
        self._convert_block(self.ts.nodes())
        outputs = self._flatten_outputs([self._value(v) for v in self.ts.outputs()])
        self._raise_problems()
        self._bind_outputs(outputs)
        self._drop_unused_constants()
        return self.graph

    def _drop_unused_constants(self) -> None:
        """Constants registered on the way (a weight later cast, a folded scalar) that no node reads."""
        for name in [c for c in self.graph.constants if not self.graph.consumers(c) and c not in self.graph.outputs]:
            self.graph.remove_constant(name)

    def _bind_inputs(self, specs, recorded, input_names, constant_args: dict[str, Any]) -> None:
        args = list(self.ts.inputs())
        arguments = list(self.schema.arguments)
        if args and args[0].type().kind() == "ClassType":  # the module itself
            args, arguments = args[1:], arguments[1:]
        unknown = sorted(set(constant_args) - {a.name for a in arguments})
        if unknown:
            raise ModelImportError(
                f"{self.origin}: constant_args names {', '.join(map(repr, unknown))}, but forward's arguments "
                f"are {', '.join(repr(a.name) for a in arguments) or 'none'}"
            )
        bound = {a.name for a in arguments if a.name in constant_args}
        for value, argument in zip(args, arguments):
            if argument.name in bound:
                self.values[value.unique()] = _bound_value(self.origin, argument, value.type(), constant_args[argument.name])
        args, arguments = [v for v, a in zip(args, arguments) if a.name not in bound], \
            [a for a in arguments if a.name not in bound]
        tensor_args = [(v, a) for v, a in zip(args, arguments) if _is_tensor_type(v.type())]
        for value, argument in zip(args, arguments):
            if not _is_tensor_type(value.type()):
                if not argument.has_default_value():
                    raise ModelImportError(
                        f"{self.origin}: forward argument {argument.name!r} is a {argument.type}, not a tensor, "
                        f"and has no default; bind it at compile time with constant_args={{{argument.name!r}: ...}} "
                        f"(--const {argument.name}=VALUE)"
                    )
                self.values[value.unique()] = argument.default_value
        required = [(v, a) for v, a in tensor_args if not _is_optional(v.type())]
        if input_names is not None:
            input_names = [str(n) for n in input_names]
            if specs and [s.name for s in specs] != input_names[:len(specs)]:
                raise ModelImportError(
                    f"{self.origin}: input_names {input_names} and the names in input_info "
                    f"{[s.name for s in specs]} disagree"
                )
        if specs:
            if not len(required) <= len(specs) <= len(tensor_args):
                raise ModelImportError(
                    f"{self.origin}: input_info has {len(specs)} entries, but forward takes "
                    f"{_count(len(required), len(tensor_args))} tensor argument(s): "
                    f"{', '.join(a.name for _, a in tensor_args)}"
                )
            chosen = specs
        elif recorded is not None and len(recorded) <= len(tensor_args):
            names = input_names or [a.name for _, a in tensor_args]
            chosen = [InputSpec(n, s.shape, s.dtype) for n, s in zip(names, recorded)]
        else:
            names = [a.name for _, a in required]
            example = ", ".join(f"({n!r}, [1, 3, 224, 224], 'float32')" for n in names)
            options = " ".join(f"--input {n}:1x3x224x224:float32" for n in names)
            raise DynamicShapeError(
                f"{self.origin}: the shapes of the inputs ({', '.join(names)}) are not recorded in the "
                f"module (a scripted or loaded module keeps none); give them with input_info, e.g. "
                f"input_info=[{example}], or on the command line, e.g. {options}"
            )
        if input_names is not None and len(input_names) not in (len(chosen), 0):
            raise ModelImportError(
                f"{self.origin}: input_names has {len(input_names)} names for {len(chosen)} input(s)"
            )
        if input_names:
            chosen = [InputSpec(n, s.shape, s.dtype) for n, s in zip(input_names, chosen)]
        for spec, traced in zip(chosen, recorded or []):
            if spec.dtype != traced.dtype:
                raise ModelImportError(
                    f"{self.origin}: input {spec.name!r} was traced as {traced.dtype.name}, input_info says "
                    f"{spec.dtype.name}; trace the module with inputs of the type it will run on"
                )
        names = [s.name for s in chosen]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ModelImportError(f"{self.origin}: input name(s) {', '.join(duplicates)} used twice")
        for (value, _), spec in zip(tensor_args, chosen):
            self.graph.add_input(spec.name, TensorInfo(spec.dtype, tuple(spec.shape)))
            self.values[value.unique()] = TensorRef(spec.name)
        for value, _ in tensor_args[len(chosen):]:  # optional tensors left out: None
            self.values[value.unique()] = None

    def _flatten_outputs(self, values: list[Any]) -> list[Any]:
        flat: list[Any] = []
        for value in values:
            if isinstance(value, (list, tuple)):
                flat.extend(self._flatten_outputs(list(value)))
            elif isinstance(value, dict):
                flat.extend(self._flatten_outputs(list(value.values())))
            else:
                flat.append(value)
        return flat

    def _bind_outputs(self, outputs: list[Any]) -> None:
        names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
        self.emit.begin("prim::Return", "output", "")
        renamed: dict[str, str] = {}
        for name, value in zip(names, outputs):
            if value is None or isinstance(value, (str, torch.device)):
                raise ModelImportError(f"{self.origin}: the model returns {value!r}, which is not a tensor")
            ref = self.emit.tensor(value, name_hint=f"{name}_value")
            ref = TensorRef(renamed.get(ref.name, ref.name))
            if self.graph.producer(ref.name) is None or ref.name in self.graph.outputs:
                ref = self.emit.op("Identity", [ref])  # a graph output must be produced by a node
            if name in self.graph.tensors and name != ref.name:  # an inner tensor has the name: move it aside
                _rename_tensor(self.graph, name, self.graph.unique_name(name + "_inner"))
            if ref.name != name:
                _rename_tensor(self.graph, ref.name, name)
                renamed[ref.name] = name
            self.graph.outputs.append(name)

    # -- nodes ------------------------------------------------------------------------

    def _value(self, value: torch._C.Value) -> Any:
        return self.values.get(value.unique(), Poisoned())

    def _convert_block(self, nodes) -> None:
        for node in nodes:
            self._convert_node(node)

    def _convert_node(self, node: torch._C.Node) -> None:
        kind = node.kind()
        if kind == "prim::Constant":
            value = _constant_value(node)
            if isinstance(value, torch.Tensor):  # frozen weights keep their names: self.fc.weight -> fc.weight
                self.emit.name_constant(value, node.output().debugName().removeprefix("self."))
            self._set(node.output(), value)
            return
        if kind in _IGNORED:
            return
        handler = _STRUCTURAL.get(kind)
        inputs = [self._value(v) for v in node.inputs()]
        if handler is not None and kind not in ("prim::If", "prim::Loop"):
            if any(contains(v, Poisoned) for v in inputs):
                self._poison(node, inputs)
                return
            handler(self, node, inputs)
            return
        if kind in ("prim::If", "prim::Loop"):
            handler(self, node, inputs)
            return
        if any(contains(v, Poisoned) for v in inputs):
            self._poison(node, inputs)
            return
        if _WRITES_SELF.match(node.schema()) and is_tensor(inputs[0]):
            self._convert_write(node, kind, inputs)
            return
        if not contains(inputs, TensorRef) and kind not in _NEVER_EVALUATE and not node.isNondeterministic():
            try:
                result = self._evaluate(node, inputs)
            except Exception:  # noqa: BLE001 - torch could not run it: convert it as a run-time op
                pass
            else:
                self._set_outputs(node, result)
                self._note_view(node)
                return
        self._convert_op(node, kind, inputs)

    def _convert_op(self, node: torch._C.Node, kind: str, inputs: list[Any]) -> None:
        converter = CONVERTERS.get(kind)
        if converter is None:
            self._problem(node, "")
            self._poison(node, inputs, reported=True)
            return
        result = self._run_converter(node, kind, converter, inputs)
        if result is _FAILED:
            return
        self._set_outputs(node, result)
        self._note_view(node)

    def _run_converter(self, node: torch._C.Node, kind: str, converter, inputs: list[Any]) -> Any:
        """The converter's result, or _FAILED once the problem is recorded."""
        self.emit.begin(kind, self._node_prefix(node, kind), _location(node))
        try:
            return converter(self.emit, **self._named(node, inputs))
        except DataDependent as exc:
            self._problem(node, str(exc), data_dependent=True)
        except Unsupported as exc:
            self._problem(node, str(exc))
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as exc:
            # A use of the op the converter does not expect (an overload it does not know):
            # still reported like any other problem, with the user's line, not as a crash.
            self._problem(node, f"cannot convert this use of it ({type(exc).__name__}: {_first_line(exc)})")
        self._poison(node, inputs, reported=True)
        return _FAILED

    # -- in-place writes ----------------------------------------------------------------
    #
    # TorchScript keeps torch's aliasing: `m[a:b, c:d] = k` is slice + slice + fill_ on a view
    # of m, and every later read of m (or of another view of it) must see the write. The IR
    # has values, not memory, so a write becomes a new value of the tensor written (the op's
    # out-of-place form), then a new value of the root it views into (the written elements
    # replaced, found by replaying the view ops on a tensor of element positions), then new
    # values of the other views of that root (their view ops run again).

    def _note_view(self, node: torch._C.Node) -> None:
        if node.kind() not in _VIEW_OPS or not node.inputsSize():
            return
        source = node.inputsAt(0)
        root = self.view_base.get(source.unique(), source)
        for out in node.outputs():
            self.view_base[out.unique()] = root
        self.view_nodes.setdefault(root.unique(), {}).setdefault(node.outputsAt(0).unique(), node)

    def _convert_write(self, node: torch._C.Node, kind: str, inputs: list[Any]) -> None:
        target = node.inputsAt(0)
        written = self._written_value(node, kind, inputs)
        if written is _FAILED:
            return
        root = self.view_base.get(target.unique(), target)
        self.aliases.setdefault(target.unique(), []).extend(node.outputs())  # it returns its first argument
        self._set_all(target, written)
        for out in node.outputs():
            if out.unique() != root.unique():
                self.view_base[out.unique()] = root
        try:
            written_root, positions = self._view_positions(target, root)
        except (Unsupported, RuntimeError, TypeError, ValueError, IndexError) as exc:
            self._problem(node, f"writes into a view this importer cannot follow ({_first_line(exc)}); "
                                "write it out of place (torch.cat, torch.where, masked_fill)")
            self._poison(node, inputs, reported=True)
            return
        if written_root.unique() != target.unique():
            self.emit.begin(kind, self._node_prefix(node, kind), _location(node))
            try:
                self._set_all(written_root, write_at(self.emit, self._value(written_root), positions, written))
            except Unsupported as exc:
                self._problem(node, str(exc))
                self._poison(node, inputs, reported=True)
                return
        self._refresh_views(node, root, written_root, target)

    def _written_value(self, node: torch._C.Node, kind: str, inputs: list[Any]) -> Any:
        """The new value of the tensor an in-place op writes (its out-of-place form), in
        that tensor's type and shape."""
        if not contains(inputs, TensorRef) and not node.isNondeterministic():
            try:  # _evaluate clones the target: a constant is never changed under its readers
                return self._evaluate(node, inputs)
            except Exception:  # noqa: BLE001 - torch could not run it: convert it
                pass
        converter = CONVERTERS.get(kind[:-1])
        if converter is None:
            self._problem(node, "")
            self._poison(node, inputs, reported=True)
            return _FAILED
        result = self._run_converter(node, kind, converter, inputs)
        if result is _FAILED:
            return _FAILED
        target = inputs[0]
        shape, dtype = self.emit.shape(target), self.emit.dtype(target)
        if is_tensor(result) and (self.emit.dtype(result) != dtype or self.emit.shape(result) != shape):
            result = broadcast_to(self.emit, result, shape, dtype)
        return result

    def _view_chain(self, value: torch._C.Value, root: torch._C.Value) -> list | None:
        """The view ops (producer, produced value) from `root` down to `value`, in order;
        None when `value` does not derive from `root`. In-place ops are aliases: skipped."""
        chain = []
        while value.unique() != root.unique():
            producer = value.node()
            if producer.kind() in ("prim::ListUnpack", "prim::TupleUnpack") or producer.kind() in _VIEW_OPS:
                chain.append((producer, value))
            elif not _WRITES_SELF.match(producer.schema()):
                return None
            if not producer.inputsSize():
                return None
            value = producer.inputsAt(0)
        return chain[::-1]

    def _replay(self, chain: list, root: torch._C.Value) -> tuple[torch._C.Value, Any]:
        """The view ops of `chain` run on the element positions of `root`: (the value they
        still share memory with, each element's flat position in it). A view op that
        copies (reshape of a non-contiguous tensor) starts a new tensor: a write below it
        does not reach above it."""
        shared = root
        positions = flat_positions(self.emit.shape(self._value(root)))
        current: Any = positions
        for producer, produced in chain:
            if producer.kind() in ("prim::ListUnpack", "prim::TupleUnpack"):
                current = list(current)[list(producer.outputs()).index(produced)]
            else:
                rest = [self._value(v) for v in list(producer.inputs())[1:]]
                if contains(rest, TensorRef):
                    raise Unsupported(f"{producer.kind()} with an argument computed at run time")
                current = self._evaluate(producer, [current, *rest])
            pieces = current if isinstance(current, (list, tuple)) else [current]
            if any(p.untyped_storage().data_ptr() != positions.untyped_storage().data_ptr() for p in pieces):
                shared = produced
                positions = flat_positions(self.emit.shape(self._value(produced)))
                current = positions
        return shared, current

    def _view_positions(self, target: torch._C.Value, root: torch._C.Value) -> tuple[torch._C.Value, Any]:
        return self._replay(self._view_chain(target, root) or [], root)

    def _refresh_views(self, node: torch._C.Node, root: torch._C.Value, written_root: torch._C.Value,
                       target: torch._C.Value) -> None:
        """Views of the tensor `node` wrote into that are read later: their view ops run
        again on its new value (the written view itself already has its new value)."""
        view_nodes = list(self.view_nodes.get(root.unique(), {}).values())
        sources = {n.inputsAt(0).unique() for n in view_nodes}
        for view_node in view_nodes:
            outputs = list(view_node.outputs())
            if any(o.unique() == target.unique() for o in outputs):
                continue
            if not any(_used_after(o, node, self.ts) or o.unique() in sources for o in outputs):
                continue
            chain = self._view_chain(outputs[0], written_root)
            if not chain or any(contains(self._value(v), Poisoned) for v in view_node.inputs()):
                continue
            try:
                shared, _ = self._replay(chain, written_root)
            except (Unsupported, RuntimeError, TypeError, ValueError, IndexError):
                shared = None
            if shared is None or shared.unique() != written_root.unique():
                continue  # not a view of what was written (a copy on the way)
            self._convert_node(view_node)
            for unpack in _unpacks_of(outputs):
                self._convert_node(unpack)
            for out in outputs:
                self._set_all(out, self._value(out))

    def _set_all(self, value: torch._C.Value, python_value: Any) -> None:
        """Set `value` and every alias an in-place op made of it."""
        self._set(value, python_value)
        for alias in self.aliases.get(value.unique(), []):
            self._set_all(alias, python_value)

    def _named(self, node: torch._C.Node, inputs: list[Any]) -> dict[str, Any]:
        text = node.schema()
        names = self._schemas.get(text)
        if names is None and text not in self._schemas:
            names = None if text == "(no schema)" else [a.name for a in torch._C.parse_schema(text).arguments]
            self._schemas[text] = names
        if names is None:  # prim ops: positional, by the names their converters use
            return dict(zip(("a", "b", "c", "d"), inputs))
        return dict(zip(names, inputs))

    def _set_outputs(self, node: torch._C.Node, result: Any) -> None:
        outputs = list(node.outputs())
        if len(outputs) == 1:
            self._set(outputs[0], result)
            return
        if not isinstance(result, (tuple, list)) or len(result) != len(outputs):
            raise AssertionError(f"{node.kind()}: expected {len(outputs)} results")
        for out, value in zip(outputs, result):
            self._set(out, value)

    def _set(self, value: torch._C.Value, python_value: Any) -> None:
        self.values[value.unique()] = python_value

    def _evaluate(self, node: torch._C.Node, inputs: list[Any]) -> Any:
        """Run one op with torch on compile-time inputs (the graph is cloned around it)."""
        mutated = node.schema() != "(no schema)" and "!" in node.schema()
        if mutated:
            inputs = [v.clone() if isinstance(v, torch.Tensor) else v for v in inputs]
        graph = torch._C.Graph()
        mapping = {}
        for value in node.inputs():
            graph_input = graph.addInput()
            graph_input.setType(value.type())
            mapping[value.unique()] = graph_input
        clone = graph.createClone(node, lambda v: mapping[v.unique()])
        graph.insertNode(clone)
        for out in clone.outputs():
            graph.registerOutput(out)
        results = torch._C._create_function_from_graph("rblnc_evaluate", graph)(*inputs)
        if mutated and isinstance(inputs[0], list):
            raise RuntimeError("list mutation is converted, not evaluated")
        return results

    # -- structure --------------------------------------------------------------------

    def _list_construct(self, node, inputs) -> None:
        self._set(node.output(), list(inputs))

    def _tuple_construct(self, node, inputs) -> None:
        self._set(node.output(), tuple(inputs))

    def _unpack(self, node, inputs) -> None:
        items = list(inputs[0])
        outputs = list(node.outputs())
        if len(items) != len(outputs):
            self._problem(node, f"unpacks {len(outputs)} values from a sequence of {len(items)}")
            self._poison(node, inputs, reported=True)
            return
        for out, item in zip(outputs, items):
            self._set(out, item)
        source = node.inputsAt(0).unique()
        if source in self.view_base:  # x.chunk(2) unpacked: each piece views x
            for out in outputs:
                self.view_base[out.unique()] = self.view_base[source]

    def _tuple_index(self, node, inputs) -> None:
        self._set(node.output(), inputs[0][inputs[1]])

    def _dict_construct(self, node, inputs) -> None:
        self._set(node.output(), dict(zip(inputs[0::2], inputs[1::2])))

    def _get_attr(self, node, inputs) -> None:
        self._problem(node, "reads a module attribute that freezing could not make a constant")
        self._poison(node, inputs, reported=True)

    def _raise_exception(self, node, inputs) -> None:
        message = inputs[0] if inputs and isinstance(inputs[0], str) else "an exception"
        raise ModelImportError(
            f"{self.origin}: the model raises {message!r} at {_location(node)} for these input shapes"
        )

    def _uninitialized(self, node, inputs) -> None:
        self._set(node.output(), None)

    def _if(self, node, inputs) -> None:
        condition = inputs[0]
        if isinstance(condition, Poisoned):
            if condition.data_dependent:
                self._problem(node, "branches on a value computed from the inputs at run time: "
                                    f"{condition.reason}; make the condition depend on shapes or constants only",
                              data_dependent=True)
            self._poison(node, inputs, reported=True)
            return
        if isinstance(condition, torch.Tensor):
            condition = bool(condition)
        if not isinstance(condition, bool):
            self._problem(node, f"condition of unexpected type {type(condition).__name__}")
            self._poison(node, inputs, reported=True)
            return
        block = list(node.blocks())[0 if condition else 1]
        self._convert_block(block.nodes())
        for out, block_out in zip(node.outputs(), block.outputs()):
            self._set(out, self._value(block_out))

    def _loop(self, node, inputs) -> None:
        trip_count, condition, *carried = inputs
        poisoned = next((v for v in (trip_count, condition) if isinstance(v, Poisoned)), None)
        if poisoned is not None:
            if poisoned.data_dependent:
                self._problem(node, "loops a number of times computed from the inputs at run time: "
                                    f"{poisoned.reason}; loop over constants or shapes only", data_dependent=True)
            self._poison(node, inputs, reported=True)
            return
        block = list(node.blocks())[0]
        params = list(block.inputs())
        iteration = 0
        while bool(condition) and iteration < int(trip_count):
            if iteration >= _MAX_UNROLL:
                self._problem(node, f"loops more than {_MAX_UNROLL} times; too many to unroll")
                self._poison(node, inputs, reported=True)
                return
            self._set(params[0], iteration)
            for param, value in zip(params[1:], carried):
                self._set(param, value)
            self._convert_block(block.nodes())
            condition, *carried = [self._value(v) for v in block.outputs()]
            if isinstance(condition, torch.Tensor):
                condition = bool(condition)
            if isinstance(condition, Poisoned):
                if condition.data_dependent:
                    self._problem(node, f"stops on a condition computed from the inputs at run time: "
                                        f"{condition.reason}", data_dependent=True)
                self._poison(node, inputs, reported=True)
                return
            iteration += 1
        for out, value in zip(node.outputs(), carried):
            self._set(out, value)

    # -- problems ---------------------------------------------------------------------

    def _poison(self, node, inputs, reported: bool = False) -> None:
        poisoned = next((v for v in _walk(inputs) if isinstance(v, Poisoned)), None)
        if not reported and poisoned is not None and poisoned.reason:
            self._problem(node, poisoned.reason, data_dependent=poisoned.data_dependent)
        for out in node.outputs():
            self._set(out, Poisoned())

    def _problem(self, node, reason: str, data_dependent: bool = False) -> None:
        self.problems.append(_Problem(node.kind(), _location(node), reason, data_dependent))

    def _raise_problems(self) -> None:
        if not self.problems:
            return
        unsupported = [p for p in self.problems if not p.data_dependent]
        lines = "\n".join(f"  {p}" for p in self.problems)
        if unsupported:
            kinds = sorted({p.kind for p in unsupported})
            raise UnsupportedOpError(
                f"{self.origin}: {len(self.problems)} op(s) cannot be imported "
                f"({', '.join(kinds)}); docs/torch_ops.md lists the supported ones:\n{lines}"
            )
        raise DataDependentError(
            f"{self.origin}: the model's control flow or sizes depend on input values, so it has no "
            f"static graph:\n{lines}"
        )

    @staticmethod
    def _node_prefix(node: torch._C.Node, kind: str) -> str:
        path, _ = _module_path(node)
        op = kind.split("::", 1)[-1]
        return f"{path}/{op}" if path else op


def _rename_tensor(graph: Graph, old: str, new: str) -> None:
    """Give a node output another name (the IR has no rename: re-add the nodes around it)."""
    producer = graph.producer(old)
    consumers = graph.consumers(old)
    # Removing a node forgets the types of its outputs nobody reads: keep them all.
    infos = {o: graph.tensors[o] for node in [producer, *consumers] for o in node.outputs if o}
    for node in consumers:
        graph.remove_node(node.name)
    graph.remove_node(producer.name)
    producer.outputs = [new if o == old else o for o in producer.outputs]
    graph.add_node(producer)
    for node in consumers:
        node.inputs = [new if i == old else i for i in node.inputs]
        graph.add_node(node)
    for out, info in infos.items():
        graph.tensors[new if out == old else out] = info
    graph.outputs = [new if o == old else o for o in graph.outputs]


def _used_after(value: torch._C.Value, node: torch._C.Node, graph: torch._C.Graph) -> bool:
    for use in value.uses():
        try:
            if use.user.isAfter(node):
                return True
        except RuntimeError:  # a use in another block: assume it comes after
            return True
    return any(value.unique() == o.unique() for o in graph.outputs())


def _unpacks_of(outputs) -> list[torch._C.Node]:
    return [use.user for o in outputs for use in o.uses()
            if use.user.kind() in ("prim::ListUnpack", "prim::TupleUnpack")]


_FAILED = object()


def _walk(values):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _walk(v)
        else:
            yield v


_STRUCTURAL = {
    "prim::ListConstruct": _Importer._list_construct,
    "prim::TupleConstruct": _Importer._tuple_construct,
    "prim::ListUnpack": _Importer._unpack,
    "prim::TupleUnpack": _Importer._unpack,
    "prim::TupleIndex": _Importer._tuple_index,
    "prim::DictConstruct": _Importer._dict_construct,
    "prim::GetAttr": _Importer._get_attr,
    "prim::RaiseException": _Importer._raise_exception,
    "prim::Uninitialized": _Importer._uninitialized,
    "prim::If": _Importer._if,
    "prim::Loop": _Importer._loop,
}


# ----------------------------------------------------------------------------- helpers


def _bound_value(origin: str, argument, value_type, value: Any) -> Any:
    """A constant_args value in the form forward's argument takes (a tensor for a Tensor)."""
    if _is_tensor_type(value_type):
        try:
            return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelImportError(f"{origin}: constant_args[{argument.name!r}] is not a tensor ({_first_line(exc)})") from None
    kind = value_type.kind()
    expected = {"IntType": int, "FloatType": (int, float), "BoolType": bool, "StringType": str}.get(kind)
    if isinstance(value, bool) and kind == "IntType" or expected is not None and not isinstance(value, expected):
        raise ModelImportError(
            f"{origin}: constant_args[{argument.name!r}] is {value!r}, but forward's {argument.name!r} is a {argument.type}"
        )
    return float(value) if kind == "FloatType" else value


def _is_tensor_type(t) -> bool:
    return t.kind() == "TensorType" or (t.kind() == "OptionalType" and t.getElementType().kind() == "TensorType")


def _is_optional(t) -> bool:
    return t.kind() == "OptionalType"


def _count(low: int, high: int) -> str:
    return str(low) if low == high else f"{low} to {high}"


def _constant_value(node: torch._C.Node) -> Any:
    if not node.hasAttribute("value"):
        return None
    if node.kindOf("value") == "t":  # toIValue would turn a 0-dim tensor into a number
        return node.t("value")
    return node.output().toIValue()


_TRACE_FRAME = re.compile(r"^(?P<file>.+?)\((?P<line>\d+)\): (?P<func>\S+)$")
_SCRIPT_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def _module_path(node: torch._C.Node) -> tuple[str, str]:
    """("layers.0.attn.q", "Linear"): the path from the tracer's scope (which names the
    containers too), else from the inlined call hierarchy; the type from the hierarchy."""
    names, types = [], []
    for name, module_type in re.findall(r"([^.()]+)\(([^()]*)\)", node.getModuleHierarchy()):
        if name != "SELF":
            names.append(name)
            types.append(module_type)
    scope = node.scopeName().rsplit("/", 1)[-1].removeprefix("__module.")
    path = scope if scope and not scope.startswith("__module") else ".".join(names)
    return path, types[-1] if types and path else ""


def _source_line(node: torch._C.Node) -> str:
    """file:line of the user's code that made the op: the innermost frame outside torch."""
    text = node.sourceRange()
    frames = []
    for line in text.splitlines():
        match = _TRACE_FRAME.match(line.strip())
        if match:
            frames.append((match["file"], match["line"]))
    if not frames:
        frames = [(m["file"], m["line"]) for m in _SCRIPT_FRAME.finditer(text)]
    for file, line in frames:
        if not file.startswith(_TORCH_DIR) and file != "<string>":
            return f"{_short_path(file)}:{line}"
    return f"{_short_path(frames[0][0])}:{frames[0][1]}" if frames else ""


def _short_path(file: str) -> str:
    try:
        relative = os.path.relpath(file)
    except ValueError:
        return file
    return file if relative.startswith("..") else relative


def _location(node: torch._C.Node) -> str:
    path, module_type = _module_path(node)
    line = _source_line(node)
    module = f"{path} ({module_type})" if path else ""
    return ", ".join(p for p in (module, line) if p)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
