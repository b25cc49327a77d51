"""`rblnc run --ray`: a model over a folder of shards or images on a local or joined Ray cluster, outputs as shards."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray
import ray.data
from tqdm import tqdm

from ..errors import ExecutionError, RBLNError
from ..format.artifact import Artifact, Device
from ..format.reader import load_artifact
from ..runtime.engine import pace_scale_of
from . import shards
from .predictor import Predictor, put_artifact


# Starting an actor imports torch and loads the artifact: seconds on a busy host. A cluster that
# cannot place `workers` actors fails after this long, saying so.
ACTOR_START_TIMEOUT_S = 300


@dataclass
class RunSummary:
    rows: int
    seconds: float                    # from starting the Dataset to the last shard written
    workers: int
    rows_per_worker: dict[str, int]
    npu_utilisation: float | None     # modelled NPU time / steady time, per device; None: no estimates
    written: list[Path] = field(default_factory=list)
    startup_seconds: float = 0.0      # until the first outputs arrived (reading, starting the actors)
    steady_rows: int = 0              # rows that arrived after the first outputs
    steady_seconds: float = 0.0       # ... and the time they took

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def steady_rows_per_second(self) -> float | None:
        """Throughput once the workers are up: rows after the first batch over the time since it."""
        return self.steady_rows / self.steady_seconds if self.steady_rows and self.steady_seconds > 0 else None


def run_on_ray(artifact_path: Path, inputs: Path, output_dir: Path, *, address: str | None = None,
               workers: int = 1, batch_size: int = 64, pace: bool | float = False, parallel: int | None = None,
               progress: bool = True) -> RunSummary:
    """Runs the model on every row of INPUTS with `workers` actors (one device each) and writes
    the outputs to OUTPUT_DIR, shard by shard, in input order. Without `address` a local Ray is
    started for the run and stopped after it; with one, the run joins that cluster (shards and
    images must then be on a path every node can read; the artifact travels in the object store)."""
    artifact = load_artifact(artifact_path)  # a bad file fails here, before Ray starts
    source = shards.discover(inputs, artifact.inputs)
    started_here = _connect(address, workers)
    try:
        with _data_context():
            return _run(artifact, artifact_path, source, output_dir, started_here=started_here, workers=workers,
                        batch_size=batch_size, pace=pace, parallel=parallel, progress=progress)
    finally:
        if started_here:
            ray.shutdown()


@contextlib.contextmanager
def _data_context():
    """Ray Data settings for the run, restored after it (the caller's Ray may outlive the run)."""
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.raise_original_map_exception,
             context.enable_progress_bars, context.wait_for_min_actors_s)
    context.execution_options.preserve_order = True   # outputs are written in input order
    context.raise_original_map_exception = True       # a row's error arrives as rblnc's own type
    context.enable_progress_bars = False               # ours counts rows; Ray's would interleave
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S  # every worker ready before the first batch
    try:
        yield
    finally:
        (context.execution_options.preserve_order, context.raise_original_map_exception,
         context.enable_progress_bars, context.wait_for_min_actors_s) = saved


def _run(artifact: Artifact, artifact_path: Path, source: shards.Inputs, output_dir: Path, *, started_here: bool,
         workers: int, batch_size: int, pace: bool | float, parallel: int | None, progress: bool) -> RunSummary:
    model = {"path": str(artifact_path)} if started_here else {"artifact": put_artifact(artifact_path)}
    options = dict(model, pace=pace, parallel=parallel, worker_column=shards.WORKER_COLUMN)
    if source.kind == "images":
        dataset, converter = shards.image_dataset(source)
        options.update(preprocess=converter, keep_columns=["path"], row_id="path")
    else:
        dataset = shards.array_dataset(source)
        options.update(row_id=shards.ShardRowName(source.files))
    # Two blocks at once per actor: the next block's rows queue on the device while the last rows
    # of the previous one drain, so the device does not idle between Ray tasks; no more queued, so
    # blocks go to whichever actor is free.
    compute = ray.data.ActorPoolStrategy(size=workers, max_concurrent_calls_per_actor=2, max_tasks_in_flight_per_actor=2)
    outputs = dataset.map_batches(Predictor, fn_constructor_kwargs=options, batch_size=batch_size, compute=compute)
    writer = shards.ShardWriter(output_dir, source, [o.name for o in artifact.outputs])
    counts: Counter[str] = Counter()
    bar = tqdm(total=source.rows, unit="row", file=sys.stderr, disable=not progress, leave=False)
    start = time.perf_counter()
    first_at, first_rows = None, 0
    try:
        for batch in outputs.iter_batches(batch_size=None):
            rows = len(batch[shards.WORKER_COLUMN])
            if first_at is None:
                first_at, first_rows = time.perf_counter(), rows
            counts.update(str(w) for w in batch[shards.WORKER_COLUMN])
            writer.add(batch)
            bar.update(rows)
        writer.close()
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RBLNError):
            raise _first_line_only(cause) from None
        raise
    except ray.exceptions.GetTimeoutError:
        raise ExecutionError(f"Ray could not start {workers} worker(s) within {ACTOR_START_TIMEOUT_S} s: the cluster "
                             "lacks the resources for them (`ray status` shows what it has)") from None
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    startup = first_at - start if first_at is not None else seconds
    total = sum(counts.values())
    summary = RunSummary(total, seconds, workers, dict(sorted(counts.items())), None, writer.written,
                         startup_seconds=startup, steady_rows=total - first_rows, steady_seconds=seconds - startup)
    if summary.steady_rows_per_second is not None:
        summary.npu_utilisation = npu_utilisation(artifact, summary.steady_rows, summary.steady_seconds, workers,
                                                  pace_scale_of(pace))
    return summary


def _first_line_only(exc: RBLNError) -> RBLNError:
    """rblnc's messages are one line; Ray Data appends its retry advice to the exception it carries."""
    lines = str(exc).splitlines()
    if len(lines) > 1 and len(exc.args) == 1:
        exc.args = (lines[0],)
    return exc


def npu_utilisation(artifact: Artifact, rows: int, seconds: float, devices: int, pace_scale: float) -> float | None:
    """The modelled NPU time of `rows` requests (x the pace scale) over the wall time of `devices`."""
    per_row = sum(p.est_time_ns or sum(c.est_time_ns for c in p.npu_program.commands)
                  for p in artifact.partitions if p.device == Device.NPU)
    if per_row <= 0 or seconds <= 0:
        return None
    return rows * per_row * 1e-9 * (pace_scale or 1) / (seconds * devices)


def _connect(address: str | None, workers: int) -> bool:
    """Joins the cluster at `address`, or starts a local one sized for `workers` actors plus
    the read tasks; True when the run owns (and stops) the cluster. Ray's own logs stay quiet."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address is not None:
        ray.init(address=address, **options)
        return False
    ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), **options)
    return True


def print_summary(summary: RunSummary, echo: Callable[[str], None] = print) -> None:
    echo(f"rows: {summary.rows} on {summary.workers} worker(s) in {summary.seconds:.2f} s "
         f"({summary.startup_seconds:.2f} s until the first outputs: reading, starting the workers)")
    steady = summary.steady_rows_per_second
    echo(f"throughput: {summary.rows_per_second:.1f} rows/s overall"
         + (f", {steady:.1f} rows/s after the first outputs" if steady is not None else ""))
    for worker, rows in summary.rows_per_worker.items():
        echo(f"  worker {worker}: {rows} rows")
    if summary.npu_utilisation is not None:
        echo(f"modelled NPU utilisation: {summary.npu_utilisation:.1%} per device (after the first outputs)")
    elif steady is None:
        echo("modelled NPU utilisation: n/a (the run was too short: every row came with the first outputs)")
    else:
        echo("modelled NPU utilisation: n/a (the artifact carries no timing estimates)")
    echo(f"wrote {len(summary.written)} shard(s) to {summary.written[0].parent if summary.written else '-'}")
