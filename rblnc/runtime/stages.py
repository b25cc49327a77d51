"""The user's host stages around a model: `preprocess` turns what the caller passes into the model's
inputs, `postprocess` turns the model's outputs into the result; each a host step of the chain."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..format.artifact import ValueInfo
from .engine import Resource, Step
from .io import bind_inputs, deliver_outputs

# Keys of a request's values that no partition reads (partition values are named by the model).
RAW = "\0raw"          # (args, kwargs) as the caller gave them, for preprocess
OUT = "\0out"          # the caller's out= arrays
RESULT = "\0result"    # what postprocess returned
FEEDS = "\0feeds"      # the bound model inputs (Runtime's check_finite reads them)

PREPROCESS = "preprocess"
POSTPROCESS = "postprocess"


def check_stage(name: str, fn: Any) -> None:
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be a callable (or None), got {type(fn).__name__}")


def as_call(returned: Any) -> tuple[tuple, dict]:
    """What preprocess returned, as the arguments of `run`: a dict -> inputs by name, a tuple or
    list -> by position, anything else -> the one positional input."""
    if isinstance(returned, dict):
        return (), returned
    if isinstance(returned, (tuple, list)):
        return tuple(returned), {}
    return (returned,), {}


def preprocess_step(fn: Callable, inputs: Sequence[ValueInfo]) -> Step:
    """A host step: preprocess(*args, **kwargs), its result bound to the model's inputs (checked
    as run() checks them; an error fails this request only)."""

    def run(values: dict) -> None:
        args, kwargs = values.pop(RAW)
        feeds = bind_inputs(inputs, *as_call(fn(*args, **kwargs)))
        values.update(feeds)
        values[FEEDS] = feeds

    return Step(Resource.HOST, PREPROCESS, PREPROCESS, 0.0, run, cpu_timed=True)


def postprocess_step(fn: Callable, outputs: Sequence[ValueInfo], tensor_type: str) -> Step:
    """A host step: postprocess(the outputs as run() would return them, out= filled)."""

    def run(values: dict) -> None:
        arrays = [values[o.name] for o in outputs]
        values[RESULT] = fn(deliver_outputs(arrays, outputs, values.get(OUT), tensor_type))

    return Step(Resource.HOST, POSTPROCESS, POSTPROCESS, 0.0, run, cpu_timed=True)


def with_stages(steps: list[Step], artifact, preprocess: Callable | None, postprocess: Callable | None,
                tensor_type: str) -> list[Step]:
    """The model's chain with the user's host stages before and after it."""
    check_stage("preprocess", preprocess)
    check_stage("postprocess", postprocess)
    before = [preprocess_step(preprocess, artifact.inputs)] if preprocess is not None else []
    after = [postprocess_step(postprocess, artifact.outputs, tensor_type)] if postprocess is not None else []
    return before + steps + after
