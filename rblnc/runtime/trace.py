"""Timelines of runtime steps: Chrome-trace / Perfetto JSON and a Gantt chart (PNG), a track per resource."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .engine import Resource, StepRecord

# Tracks top to bottom as the vendor profiler lays them out: host, then the device's engines.
_RESOURCE_ORDER = {Resource.HOST: 0, Resource.H2D: 1, Resource.NPU: 2, Resource.D2H: 3}
PROCESS_ID = 1


def _tracks(records: Sequence[StepRecord]) -> list[str]:
    lanes = {(_RESOURCE_ORDER[r.resource], r.lane) for r in records}
    return [lane for _, lane in sorted(lanes)]


def chrome_trace(records: Iterable[StepRecord], *, title: str = "rblnc runtime") -> dict:
    """The Trace Event Format (the JSON that chrome://tracing and ui.perfetto.dev open): one
    thread track per resource lane, one complete ("X") slice per step named by its request, and
    flow arrows from each step of a request to its next. Times in microseconds from the first step."""
    records = sorted(records, key=lambda r: (r.start, r.end))
    tracks = _tracks(records)
    tid = {lane: index + 1 for index, lane in enumerate(tracks)}
    origin = records[0].start if records else 0.0
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": PROCESS_ID, "tid": 0, "args": {"name": title}}]
    for lane, index in tid.items():
        events.append({"ph": "M", "name": "thread_name", "pid": PROCESS_ID, "tid": index, "args": {"name": lane}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": PROCESS_ID, "tid": index,
                       "args": {"sort_index": index}})

    def us(seconds: float) -> float:
        return round((seconds - origin) * 1e6, 3)

    previous: dict[int, StepRecord] = {}
    flow_id = 0
    for r in records:
        args = {"request": r.request, "step": r.step, "partition": r.partition, "resource": r.resource.value}
        if r.modelled_ns:
            args["modelled_us"] = round(r.modelled_ns / 1e3, 3)
        if r.compute_s:
            args["compute_us"] = round(r.compute_s * 1e6, 3)
        if r.failed:
            args["failed"] = True
        events.append({"ph": "X", "name": f"req {r.request}", "cat": r.resource.name.lower(), "pid": PROCESS_ID,
                       "tid": tid[r.lane], "ts": us(r.start), "dur": round((r.end - r.start) * 1e6, 3), "args": args})
        before = previous.get(r.request)
        if before is not None:
            flow_id += 1
            # The arrow leaves from inside the earlier slice and binds to the slice it enters.
            events.append({"ph": "s", "name": "request", "cat": "flow", "id": flow_id, "pid": PROCESS_ID,
                           "tid": tid[before.lane], "ts": us((before.start + before.end) / 2)})
            events.append({"ph": "f", "bp": "e", "name": "request", "cat": "flow", "id": flow_id, "pid": PROCESS_ID,
                           "tid": tid[r.lane], "ts": us(r.start)})
        previous[r.request] = r
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"producer": "rblnc", "title": title}}


def write_chrome_trace(records: Iterable[StepRecord], path: str | os.PathLike, *, title: str = "rblnc runtime") -> Path:
    """Writes chrome_trace(records) as JSON; the file appears whole or not at all."""
    path = Path(path)
    data = json.dumps(chrome_trace(records, title=title))
    _write_atomically(path, data.encode())
    return path


def plot_timeline(records: Iterable[StepRecord], path: str | os.PathLike, *, title: str = "rblnc runtime") -> Path:
    """Draws the same timeline as a Gantt chart (PNG): a row per resource lane, a bar per step,
    one colour per request. Needs matplotlib (`pip install 'rblnc[plot]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("drawing a timeline needs matplotlib: pip install 'rblnc[plot]'") from None
    records = sorted(records, key=lambda r: r.start)
    tracks = _tracks(records)
    origin = records[0].start if records else 0.0
    end = max((r.end for r in records), default=origin) - origin
    colours = plt.get_cmap("tab20").colors
    figure, axes = plt.subplots(figsize=(12, 1.0 + 0.6 * len(tracks)), dpi=100)
    label_bars = len({r.request for r in records}) <= 40
    for row, lane in enumerate(tracks):
        lane_records = [r for r in records if r.lane == lane]
        bars = [((r.start - origin) * 1e3, max((r.end - r.start) * 1e3, end * 1e3 * 1e-4)) for r in lane_records]
        axes.broken_barh(bars, (row - 0.4, 0.8), facecolors=[colours[r.request % len(colours)] for r in lane_records],
                         edgecolor="black", linewidth=0.3)
        if label_bars:
            for r, (x, width) in zip(lane_records, bars):
                if width > end * 1e3 * 0.02:
                    axes.text(x + width / 2, row, str(r.request), ha="center", va="center", fontsize=6)
    axes.set_yticks(range(len(tracks)), tracks)
    axes.invert_yaxis()
    axes.set_xlabel("time (ms)")
    axes.set_title(f"{title} — a bar per step, coloured and numbered by request")
    axes.grid(axis="x", linewidth=0.3)
    figure.tight_layout()
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent or ".", suffix=".png", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        temporary.unlink(missing_ok=True)
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent or ".", prefix=f".{path.name}.", delete=False) as handle:
        handle.write(data)
        temporary = Path(handle.name)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
