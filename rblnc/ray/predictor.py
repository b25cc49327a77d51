"""`Predictor`: the callable class `Dataset.map_batches` runs on each actor, one AsyncRuntime (one device) per actor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import ray

from ..errors import ExecutionError, InputNameError, InputShapeError, RBLNError
from ..format.reader import load_artifact, parse_artifact
from ..runtime import AsyncRuntime
from ..runtime.io import as_numpy

RowId = str | Sequence[str] | Callable[[Mapping[str, Any]], str] | None

DEFAULT_ROW_ID = ("id", "path")


def put_artifact(path: str | os.PathLike) -> ray.ObjectRef:
    """Checks the .rbln file here (a bad file fails now, with its ArtifactError, not in every
    actor), then puts its bytes into Ray's object store once: `Predictor(artifact=ref)` on any
    node of the cluster maps them from the node's shared-memory store, zero-copy, instead of
    reading a path that may exist only on this machine."""
    load_artifact(path)
    return ray.put((str(path), np.fromfile(path, dtype=np.uint8)))


class Predictor:
    """Runs a compiled model on the batches of a Ray Dataset, as the callable class of
    `map_batches`:

        ds.map_batches(rblnc.ray.Predictor, fn_constructor_kwargs={"path": "model.rbln"},
                       compute=ray.data.ActorPoolStrategy(size=2), batch_size=64)

    Each actor loads the artifact once (memory-mapped from `path`, or from the object store
    with `artifact=put_artifact(path)`) and owns one AsyncRuntime, i.e. one device (`device`,
    `pace`, `parallel`, `max_inflight`, `host_workers`, `host_threads` pass through). Every row of
    a batch is one request submitted with `async_run`, so the rows' DMA and compute overlap; as
    `__call__` is a coroutine, Ray Data also keeps a few batches per actor in flight.

    Inputs: the model's inputs are read from the columns named after them; `columns=` maps
    input name -> column name otherwise; a batch with one column feeds a one-input model
    whatever the column is called. A row may omit a leading batch dimension of 1 (an image
    [3, 224, 224] for an input [1, 3, 224, 224]); its outputs then omit it too.
    `preprocess(row) -> {input: array}` (or one array for a one-input model) and
    `postprocess({output: array}) -> {column: value}` run per row on `process_threads` host
    threads of the actor, overlapping the device work of other rows.

    Outputs: one column per model output, named after it (or postprocess's columns), plus the
    batch's columns that do not feed the model (`keep_columns=None`; with a preprocess every
    column feeds it, so none), e.g. `path` or `id`; `keep_columns=[...]` names them instead.
    `worker_column="worker"` adds the actor that computed each row (node address:pid).

    A row that does not fit the model fails the batch with the runtime's error type
    (InputShapeError, InputDtypeError, ...), its message prefixed with the row: its index in the
    batch and the values of the `row_id` columns present ("id", "path"), or what a callable
    `row_id(row)` says."""

    def __init__(self, path: str | os.PathLike | None = None, *, artifact: Any = None, device: int = 0,
                 pace: bool | float = False, parallel: int | None = None, max_inflight: int = 64,
                 host_workers: int | None = None, host_threads: int | None = None,
                 columns: Mapping[str, str] | None = None,
                 preprocess: Callable[[dict], Any] | None = None,
                 postprocess: Callable[[dict], Mapping[str, Any]] | None = None,
                 process_threads: int = 2, keep_columns: Sequence[str] | None = None,
                 row_id: RowId = DEFAULT_ROW_ID, worker_column: str | None = None):
        if (path is None) == (artifact is None):
            raise TypeError("Predictor needs the model as path= (a .rbln file every worker can read) or "
                            "artifact= (from rblnc.ray.put_artifact), not both")
        model = path if path is not None else _from_object_store(artifact)
        self.runtime = AsyncRuntime(model, device=device, pace=pace, parallel=parallel, max_inflight=max_inflight,
                                    host_workers=host_workers, host_threads=host_threads)
        self.input_specs = {v.name: v for v in self.runtime.artifact.inputs}
        self.output_names = self.runtime.output_names
        if columns is not None:
            unknown = [name for name in columns if name not in self.input_specs]
            if unknown:
                raise InputNameError(f"columns= names {', '.join(map(repr, unknown))}, which the model does not take; "
                                     f"its inputs are {_names(self.input_specs)}")
        self.columns = dict(columns) if columns is not None else None
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.keep_columns = list(keep_columns) if keep_columns is not None else None
        self.row_id = row_id
        self.worker_column = worker_column
        self.worker = _worker_name()
        self._pool = (concurrent.futures.ThreadPoolExecutor(process_threads, thread_name_prefix="rblnc-process")
                      if preprocess is not None or postprocess is not None else None)
        self.rows = 0

    # -- one batch ---------------------------------------------------------------------------
    async def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        columns = _as_columns(batch)
        count = _row_count(columns)
        feeding = self._feeding_columns(columns)
        tasks = [asyncio.ensure_future(self._row(columns, feeding, i)) for i in range(count)]
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [i for i, task in enumerate(tasks) if task.done() and not task.cancelled() and task.exception()]
        if failed:
            for task in tasks:
                task.cancel()  # cancelling an awaited async_run cancels its request
            await asyncio.gather(*tasks, return_exceptions=True)
            first = failed[0]
            raise self._at_row(tasks[first].exception(), columns, first) from None
        results = [task.result() for task in tasks]
        self.rows += count
        return self._assemble(columns, feeding, results, count)

    def _feeding_columns(self, columns: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Model input -> the column feeding it (empty with a preprocess, which feeds the model itself)."""
        if self.preprocess is not None:
            return {}
        return _match(self.input_specs, list(columns), self.columns, "the batch's columns")

    async def _row(self, columns: Mapping[str, np.ndarray], feeding: dict[str, str], index: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self.preprocess is not None:
            row = {name: values[index] for name, values in columns.items()}
            prepared = await loop.run_in_executor(self._pool, self.preprocess, row)
            feeds = self._from_preprocess(prepared)
        else:
            feeds = {name: columns[column][index] for name, column in feeding.items()}
        feeds, unbatched = _add_batch_dimension(self.input_specs, feeds)
        outputs = await self.runtime.async_run(**feeds)
        if len(self.output_names) == 1:
            outputs = [outputs]
        result = {name: (value[0] if unbatched and value.ndim and value.shape[0] == 1 else value)
                  for name, value in zip(self.output_names, outputs)}
        if self.postprocess is not None:
            result = await loop.run_in_executor(self._pool, self.postprocess, result)
            if not isinstance(result, Mapping):
                raise TypeError(f"postprocess must return a mapping of column name -> value, got "
                                f"{type(result).__name__}")
        return result

    def _from_preprocess(self, prepared: Any) -> dict[str, Any]:
        if not isinstance(prepared, Mapping):
            if len(self.input_specs) != 1:
                raise InputNameError(f"preprocess returned one {type(prepared).__name__}; the model takes "
                                     f"{len(self.input_specs)} inputs ({_names(self.input_specs)}): return "
                                     "a dict keyed by input name")
            return {next(iter(self.input_specs)): prepared}
        feeding = _match(self.input_specs, list(prepared), self.columns, "preprocess's keys")
        return {name: prepared[key] for name, key in feeding.items()}

    def _assemble(self, columns: Mapping[str, np.ndarray], feeding: dict[str, str], results: list[dict],
                  count: int) -> dict[str, np.ndarray]:
        if self.keep_columns is not None:
            missing = [c for c in self.keep_columns if c not in columns]
            if missing:
                raise InputNameError(f"keep_columns names {', '.join(map(repr, missing))}, which the batch does "
                                     f"not have; its columns are {', '.join(map(repr, columns))}")
            kept = self.keep_columns
        elif self.preprocess is not None:
            kept = []
        else:
            kept = [c for c in columns if c not in feeding.values()]
        out: dict[str, np.ndarray] = {}
        names = list(results[0]) if results else list(self.output_names)
        for name in names:
            values = [r[name] for r in results]
            try:
                out[name] = np.stack([as_numpy(v) for v in values]) if values else np.empty((0,))
            except ValueError:
                shapes = sorted({tuple(np.shape(v)) for v in values})
                raise InputShapeError(f"output {name!r} has different shapes across the rows of one batch "
                                      f"({', '.join(map(str, shapes))}): give every row the same shape, all with "
                                      "or all without the batch dimension") from None
        for column in kept:
            if column in out:
                raise InputNameError(f"column {column!r} is both an output and a column kept from the batch; "
                                     "rename one or pass keep_columns=")
            out[column] = columns[column]
        if self.worker_column is not None:
            out[self.worker_column] = np.full(count, self.worker)
        return out

    def _at_row(self, exc: BaseException, columns: Mapping[str, np.ndarray], index: int) -> BaseException:
        """The row's error with the row named: rblnc's errors keep their type and gain the row in
        their message; other errors (a user's preprocess) get a note."""
        where = f"row {index} of the batch{self._describe(columns, index)}"
        if isinstance(exc, RBLNError):
            try:
                named = type(exc)(f"{where}: {exc}")
            except TypeError:  # an error type with another constructor
                named = ExecutionError(f"{where}: {type(exc).__name__}: {exc}")
            return named
        if hasattr(exc, "add_note"):
            exc.add_note(f"rblnc.ray.Predictor: raised for {where}")
        return exc

    def _describe(self, columns: Mapping[str, np.ndarray], index: int) -> str:
        if self.row_id is None:
            return ""
        if callable(self.row_id):
            return f" ({self.row_id({c: v[index] for c, v in columns.items()})})"
        names = [self.row_id] if isinstance(self.row_id, str) else list(self.row_id)
        parts = [f"{c}={_scalar(columns[c][index])!r}" for c in names if c in columns]
        return f" ({', '.join(parts)})" if parts else ""

    # -- life --------------------------------------------------------------------------------
    def close(self) -> None:
        """Finishes what is in flight and stops the runtime's and the process threads."""
        self.runtime.close()
        if self._pool is not None:
            self._pool.shutdown()

    def __repr__(self) -> str:
        return f"<rblnc.ray.Predictor {self.runtime.source} on {self.worker}, {self.rows} rows>"


def _from_object_store(artifact: Any):
    """The artifact from `put_artifact`: parsed in place from the object store's shared memory."""
    if isinstance(artifact, ray.ObjectRef):
        artifact = ray.get(artifact)
    if not (isinstance(artifact, tuple) and len(artifact) == 2):
        raise TypeError(f"artifact= expects what rblnc.ray.put_artifact returns, got {type(artifact).__name__}")
    name, data = artifact
    # Constants stay views of `data`, which Ray maps read-only from the node's object store.
    return SimpleNamespace(artifact=parse_artifact(data, Path(name)), path=name)


def _match(specs: Mapping[str, Any], available: list[str], explicit: Mapping[str, str] | None,
           what: str) -> dict[str, str]:
    """Model input -> the name among `available` that feeds it."""
    inputs = list(specs)
    if explicit is not None:
        mapping = {name: explicit.get(name, name) for name in inputs}
    elif all(name in available for name in inputs):
        mapping = {name: name for name in inputs}
    elif len(inputs) == 1 and len(available) == 1:
        mapping = {inputs[0]: available[0]}
    else:
        raise InputNameError(f"{what} ({', '.join(map(repr, available))}) do not name the model's input(s) "
                             f"{_names(specs)}; name them after the inputs or pass columns={{input: column}}")
    missing = [f"{column!r} (for input {name!r})" for name, column in mapping.items() if column not in available]
    if missing:
        raise InputNameError(f"{what} ({', '.join(map(repr, available))}) lack {', '.join(missing)}")
    return mapping


def _add_batch_dimension(specs: Mapping[str, Any], feeds: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Rows that omit the model's leading batch dimension of 1 get it back; True if every input did."""
    expanded = 0
    for name, value in feeds.items():
        shape = specs[name].shape
        array = as_numpy(value)
        if shape and shape[0] == 1 and tuple(array.shape) == tuple(shape[1:]):
            feeds[name] = array[np.newaxis]
            expanded += 1
    return feeds, bool(feeds) and expanded == len(feeds)


def _as_columns(batch: Any) -> Mapping[str, np.ndarray]:
    if isinstance(batch, Mapping):
        return batch
    if type(batch).__module__.startswith("pandas"):
        return {str(c): _pandas_column(batch[c]) for c in batch.columns}
    raise TypeError(f"Predictor takes batches as a dict of numpy arrays (map_batches' default batch_format), "
                    f"got {type(batch).__name__}")


def _pandas_column(series) -> np.ndarray:
    values = series.to_numpy()
    if values.dtype == object and len(values) and all(isinstance(v, np.ndarray) for v in values):
        try:
            return np.stack(values)
        except ValueError:  # ragged: the rows keep their own shapes
            return values
    return values


def _row_count(columns: Mapping[str, np.ndarray]) -> int:
    counts = {len(v) for v in columns.values()}
    if len(counts) > 1:
        raise InputShapeError(f"the batch's columns have different lengths ({sorted(counts)})")
    return counts.pop() if counts else 0


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) \
        else value


def _names(specs: Mapping[str, Any]) -> str:
    return ", ".join(map(repr, specs))


def _worker_name() -> str:
    try:
        node = ray.util.get_node_ip_address() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - only a label
        node = "local"
    return f"{node}:{os.getpid()}"
