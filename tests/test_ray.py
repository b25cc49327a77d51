"""rblnc.ray on a real local Ray cluster (one for the module): outputs equal the Runtime's, in order;
a killed actor's blocks are retried; row errors arrive as rblnc's; `rblnc run --ray`; no process left."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.data
from conftest import conv_relu_model, mixed_model
from test_engine import set_estimates

import rblnc
import rblnc.ray
from rblnc.errors import ArtifactError, InputShapeError

MARKER = "RBLNC_RAY_TEST_MARKER"


def processes_marked(marker: str) -> list[tuple[int, str]]:
    """Live processes (other than this one) whose environment carries `marker`: everything a Ray
    started from here inherited it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found.append((int(entry.name), command[:120]))
    return found


def wait_until_gone(marker: str, timeout: float = 90.0) -> list[tuple[int, str]]:
    """Ray's workers notice the raylet is gone and exit on their own: seconds, up to ~40 s seen
    on this loaded 2-core machine."""
    deadline = time.monotonic() + timeout
    while (left := processes_marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: sized for 2 actors plus read tasks, quiet, no dashboard;
    every process it starts must be gone after shutdown."""
    marker = f"{MARKER}={uuid.uuid4().hex}"
    name, value = marker.split("=")
    os.environ[name] = value
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's preprocess classes
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.wait_for_min_actors_s)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 300  # both actors up before the first batch, so both get rows
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        (context.execution_options.preserve_order, context.enable_progress_bars,
         context.wait_for_min_actors_s) = saved
        ray.shutdown()
        del os.environ[name]
        assert wait_until_gone(marker) == []


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32").save(folder / "conv.rbln")
    compiled = rblnc.compile_from_onnx(mixed_model(), dtype="fp32")
    set_estimates(compiled.artifact, npu_ms=0.2, dma_ms=0.01, host_ms=0.05)
    compiled.save(folder / "mixed.rbln")
    return folder


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    """What rblnc.Runtime gives, row by row, on one torch thread as the actors use."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runtime = rblnc.Runtime(path)
        return np.stack([runtime.run(row) for row in x])
    finally:
        torch.set_num_threads(threads)


def collect(dataset) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for batch in dataset.iter_batches(batch_size=None):
        for name, values in batch.items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def test_ten_thousand_rows_through_two_actors_equal_the_runtime_in_order(cluster, models):
    x = np.random.default_rng(0).standard_normal((10_000, 1, 3, 8, 8)).astype(np.float32)
    dataset = ray.data.from_numpy(np.array_split(x, 40))  # one column, "data": it feeds input "x"
    out = collect(dataset.map_batches(rblnc.ray.Predictor, batch_size=64, compute=ray.data.ActorPoolStrategy(size=2),
                                      fn_constructor_kwargs={"path": models / "conv.rbln", "worker_column": "worker"}))
    assert out["y"].shape == (10_000, 1, 4, 8, 8)
    np.testing.assert_array_equal(out["y"], reference(models / "conv.rbln", x))
    workers, counts = np.unique(out["worker"], return_counts=True)
    assert len(workers) == 2 and counts.min() > 0, dict(zip(workers, counts))


class ExitOnce:
    """Preprocess that ends its actor's process at row `victim` the first time it sees it."""

    def __init__(self, flag: Path, victim: int):
        self.flag, self.victim = flag, victim

    def __call__(self, row):
        if int(row["id"]) == self.victim and not self.flag.exists():
            self.flag.write_text(str(os.getpid()))
            os._exit(1)
        return row["x"]


def test_a_killed_actor_is_restarted_and_its_blocks_retried(cluster, models, tmp_path):
    """With Ray Data's own defaults for actor pools (max_restarts=-1, max_task_retries=-1: nothing
    passed here). The model comes from the object store: the restarted actor gets it from there again."""
    n = 3000
    x = np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)
    dataset = ray.data.from_items([{"id": i, "x": x[i]} for i in range(n)], override_num_blocks=30)
    flag = tmp_path / "killed"
    predictor = {"artifact": rblnc.ray.put_artifact(models / "mixed.rbln"), "preprocess": ExitOnce(flag, victim=1717),
                 "keep_columns": ["id"], "worker_column": "worker"}
    out = collect(dataset.map_batches(rblnc.ray.Predictor, fn_constructor_kwargs=predictor, batch_size=50,
                                      compute=ray.data.ActorPoolStrategy(size=2)))
    assert flag.exists()  # an actor did die
    assert out["id"].tolist() == list(range(n))  # every row once, in order
    np.testing.assert_array_equal(out["y"], reference(models / "mixed.rbln", x[:, None])[:, 0])
    # The victim's row came from a live actor (the restarted one or the other), not the dead process.
    assert out["worker"][1717].rsplit(":", 1)[1] != flag.read_text()


def test_a_row_that_does_not_fit_fails_with_the_runtimes_error(cluster, models):
    rows = [{"id": i, "x": np.zeros((3, 8, 8), np.float32)} for i in range(40)]
    rows[23]["x"] = np.zeros((3, 9, 9), np.float32)
    predictor = {"fn_constructor_kwargs": {"path": models / "conv.rbln"}, "batch_size": 16,
                 "compute": ray.data.ActorPoolStrategy(size=1)}
    expected = r"row \d+ of the batch \(id=23\): input 'x': expected shape \[1, 3, 8, 8\], got \[3, 9, 9\]"
    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True  # a Dataset takes the context as it is when created
    try:
        with pytest.raises(InputShapeError) as caught:
            ray.data.from_items(rows).map_batches(rblnc.ray.Predictor, **predictor).materialize()
    finally:
        context.raise_original_map_exception = False
    dataset = ray.data.from_items(rows)
    # The exception raised in the actor, its message first (Ray Data appends its retry advice below).
    assert re.fullmatch(expected, str(caught.value.cause).splitlines()[0])
    # Ray's default wraps it; its message ends with the runtime's error, not with a Ray stack.
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        dataset.map_batches(rblnc.ray.Predictor, **predictor).materialize()
    text = str(caught.value)
    assert re.search(f"rblnc.errors.InputShapeError: {expected}", text)
    assert "rblnc/runtime" not in text  # no frames from inside rblnc either


def test_an_artifact_from_the_object_store_is_parsed_in_place(cluster, models, tmp_path):
    """What an actor does with artifact=put_artifact(...), here in the driver (also a Ray worker)."""
    reference_ref = rblnc.ray.put_artifact(models / "conv.rbln")
    name, data = ray.get(reference_ref)
    assert name == str(models / "conv.rbln") and not data.flags.writeable  # a view of the shared store
    local = rblnc.ray.Predictor(artifact=reference_ref)
    constants = [t.data for p in local.runtime.artifact.partitions if p.npu_program
                 for t in p.npu_program.tensors if t.data is not None]
    assert constants and all(np.shares_memory(c, data) for c in constants)  # parsed in place, not copied
    x = np.random.default_rng(2).standard_normal((5, 3, 8, 8)).astype(np.float32)
    out = asyncio.run(local({"x": x}))
    np.testing.assert_array_equal(out["y"], reference(models / "conv.rbln", x[:, None])[:, 0])
    local.close()

    damaged = tmp_path / "damaged.rbln"
    damaged.write_bytes((models / "conv.rbln").read_bytes()[:-20])
    with pytest.raises(ArtifactError, match="damaged.rbln: file is truncated or damaged"):
        rblnc.ray.put_artifact(damaged)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rblnc.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_joins_a_cluster_and_writes_shards_in_order(cluster, models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    sizes = {"part-0.npz": 700, "part-1.npz": 0, "part-2.npy": 300, "part-3.npz": 501}
    inputs = {}
    for name, rows in sizes.items():
        inputs[name] = rng.standard_normal((rows, 3, 8, 8)).astype(np.float32)
        (np.savez(folder / name, x=inputs[name]) if name.endswith(".npz") else np.save(folder / name, inputs[name]))
    result = cli("run", "--ray", "--address", cluster, "--workers", "2", "--batch-size", "32",
                 models / "mixed.rbln", folder, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^rows: 1501 on 2 worker\(s\) in [\d.]+ s \([\d.]+ s until the first outputs", out, re.M)
    assert re.search(r"^throughput: [\d.]+ rows/s overall, [\d.]+ rows/s after the first outputs$", out, re.M)
    # Which actor takes which block is Ray Data's choice: with reading slower than computing, as
    # here, one actor may take them all.
    per_worker = [int(n) for n in re.findall(r"^  worker \S+:\d+: (\d+) rows$", out, re.M)]
    assert sum(per_worker) == 1501 and 1 <= len(per_worker) <= 2
    utilisation = float(re.search(r"^modelled NPU utilisation: ([\d.]+)% per device \(after the first outputs\)$",
                                  out, re.M).group(1))
    # Unpaced, the emulator may run a row faster than its modelled NPU time (0.2 ms x 2 here), so
    # this modelled-over-wall ratio can exceed 100 % (110 % seen after main's emulator speed-up).
    assert utilisation > 0
    assert f"wrote 4 shard(s) to {tmp_path / 'out'}" in out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["part-0.npz", "part-1.npz", "part-2.npz", "part-3.npz"]
    for name, x in inputs.items():
        with np.load(tmp_path / "out" / (Path(name).stem + ".npz")) as shard:
            if len(x):
                np.testing.assert_array_equal(shard["y"], reference(models / "mixed.rbln", x[:, None])[:, 0])
            else:
                assert shard.files == []


def test_cli_on_images_starts_and_stops_its_own_ray(models, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    marker = uuid.uuid4().hex
    result = cli("run", "--ray", models / "conv.rbln", folder, "-o", tmp_path / "out",
                 env={**os.environ, MARKER: marker})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^rows: 7 on 1 worker\(s\)", result.stdout, re.M)
    assert "modelled NPU utilisation: n/a (the run was too short: every row came with the first outputs)" in result.stdout
    with np.load(tmp_path / "out" / "part-00000.npz") as shard:
        assert [Path(p).name for p in shard["path"]] == [f"img{i:02d}.png" for i in range(7)]
        chw = (images.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32)
        np.testing.assert_array_equal(shard["y"], reference(models / "conv.rbln", chw[:, None])[:, 0])
    assert wait_until_gone(f"{MARKER}={marker}") == []
