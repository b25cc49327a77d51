"""rblnc.ray without a Ray cluster: the Predictor called directly on batches, the shard reader and
writer, and the `rblnc run --ray` checks that fail before Ray starts."""

from __future__ import annotations

import asyncio
import mmap
import os
import threading

import numpy as np
import pytest
import ray
from conftest import conv_relu_model, make_onnx, mixed_model
from onnx import helper

import rblnc
from rblnc.errors import InputDtypeError, InputError, InputNameError, InputShapeError
from rblnc.format.artifact import ValueInfo
from rblnc.ray import shards
from rblnc.ray.predictor import Predictor


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_predictor")
    rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32").save(folder / "conv.rbln")   # x[1,3,8,8] -> y[1,4,8,8]
    rblnc.compile_from_onnx(mixed_model(), dtype="fp32").save(folder / "mixed.rbln")      # NPU, host (Erf), NPU
    two = make_onnx([helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["product"])],
                    [("a", [1, 4]), ("b", [1, 4])], [("sum", [1, 4]), ("product", [1, 4])])
    rblnc.compile_from_onnx(two, dtype="fp32").save(folder / "two.rbln")
    return folder


def call(predictor, batch):
    return asyncio.run(predictor(batch))


def rows(n, shape=(3, 8, 8), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_one_column_feeds_a_one_input_model_whatever_its_name(models):
    x = rows(20)
    out = call(Predictor(models / "conv.rbln"), {"pixels": x})
    runtime = rblnc.Runtime(models / "conv.rbln")
    assert list(out) == ["y"] and out["y"].shape == (20, 4, 8, 8)  # rows without the batch dimension keep none
    for i in range(20):
        np.testing.assert_array_equal(out["y"][i], runtime.run(x[i][None])[0])


def test_rows_with_the_batch_dimension_keep_it(models):
    x = rows(5, (1, 3, 8, 8))
    out = call(Predictor(models / "mixed.rbln"), {"x": x})
    runtime = rblnc.Runtime(models / "mixed.rbln")
    assert out["y"].shape == (5, 1, 2, 8, 8)
    for i in range(5):
        np.testing.assert_array_equal(out["y"][i], runtime.run(x[i]))


def test_inputs_by_column_name_and_other_columns_kept(models):
    a, b = rows(6, (4,), seed=1), rows(6, (4,), seed=2)
    ids = np.arange(100, 106)
    out = call(Predictor(models / "two.rbln"), {"id": ids, "b": b, "a": a})
    assert list(out) == ["sum", "product", "id"]
    np.testing.assert_array_equal(out["id"], ids)
    np.testing.assert_allclose(out["sum"], a + b, rtol=1e-6)
    np.testing.assert_allclose(out["product"], a * b, rtol=1e-6)
    mapped = call(Predictor(models / "two.rbln", columns={"a": "left", "b": "right"}, keep_columns=[]),
                  {"left": a, "right": b})
    assert list(mapped) == ["sum", "product"]
    np.testing.assert_allclose(mapped["sum"], a + b, rtol=1e-6)


def test_pandas_batches(models):
    import pandas as pd

    x = rows(4)
    frame = pd.DataFrame({"x": list(x), "id": np.arange(4)})  # a tensor column as pandas holds it: arrays
    out = call(Predictor(models / "conv.rbln"), frame)
    np.testing.assert_array_equal(out["y"], call(Predictor(models / "conv.rbln"), {"x": x})["y"])
    assert out["id"].tolist() == [0, 1, 2, 3]


def test_columns_that_do_not_name_the_inputs(models):
    with pytest.raises(InputNameError, match=r"the batch's columns \('data', 'id'\) do not name the model's "
                                             r"input\(s\) 'x'; .*columns=\{input: column\}"):
        call(Predictor(models / "conv.rbln"), {"data": rows(2), "id": np.arange(2)})
    with pytest.raises(InputNameError, match=r"lack 'right' \(for input 'b'\)"):
        call(Predictor(models / "two.rbln", columns={"a": "left", "b": "right"}), {"left": rows(2, (4,))})
    with pytest.raises(InputNameError, match=r"columns= names 'c', which the model does not take; its inputs are 'a', 'b'"):
        Predictor(models / "two.rbln", columns={"c": "x"})
    with pytest.raises(InputNameError, match="column 'sum' is both an output and a column kept"):
        call(Predictor(models / "two.rbln"), {"a": rows(2, (4,)), "b": rows(2, (4,)), "sum": np.zeros(2)})
    with pytest.raises(TypeError, match="path= .* or artifact="):
        Predictor()


def test_a_row_that_does_not_fit_names_the_row_and_stops_the_others(models):
    x = np.empty(8, dtype=object)
    x[:] = list(rows(8))
    x[5] = np.zeros((3, 9, 9), np.float32)
    predictor = Predictor(models / "conv.rbln")
    with pytest.raises(InputShapeError) as caught:
        call(predictor, {"x": x, "path": np.array([f"img{i}.png" for i in range(8)])})
    assert str(caught.value) == ("row 5 of the batch (path='img5.png'): input 'x': expected shape [1, 3, 8, 8], "
                                 "got [3, 9, 9]")
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert predictor.runtime.inflight() == 0
    with pytest.raises(InputDtypeError, match=r"^row 0 of the batch \(id=7\): input 'x': expected float32, got float64"):
        call(predictor, {"x": rows(2).astype(np.float64), "id": np.array([7, 8])})
    describe = Predictor(models / "conv.rbln", row_id=lambda row: f"sample {row['key']}")
    with pytest.raises(InputDtypeError, match=r"^row 1 of the batch \(sample b\): "):
        call(describe, {"x": _one_bad_dtype(rows(3), 1), "key": np.array(["a", "b", "c"])})


def _one_bad_dtype(x, index):
    column = np.empty(len(x), dtype=object)
    column[:] = list(x)
    column[index] = x[index].astype(np.float64)
    return column


def test_preprocess_and_postprocess_run_on_the_actors_host_threads(models):
    seen = set()

    def preprocess(row):
        seen.add(threading.current_thread().name)
        return (row["image"].transpose(2, 0, 1) / np.float32(255)).astype(np.float32)

    def postprocess(outputs):
        seen.add(threading.current_thread().name)
        return {"peak": outputs["y"].max(), "y": outputs["y"]}

    images = np.random.default_rng(3).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    out = call(Predictor(models / "conv.rbln", preprocess=preprocess, postprocess=postprocess),
               {"image": images, "path": np.arange(12)})
    assert list(out) == ["peak", "y"]  # with a preprocess no column is kept unless asked
    assert seen and all(name.startswith("rblnc-process") for name in seen)
    runtime = rblnc.Runtime(models / "conv.rbln")
    for i in range(12):
        expected = runtime.run((images[i].transpose(2, 0, 1) / np.float32(255)).astype(np.float32)[None])[0]
        np.testing.assert_array_equal(out["y"][i], expected)
        assert out["peak"][i] == expected.max()
    broken = Predictor(models / "conv.rbln", postprocess=lambda outputs: 3)
    with pytest.raises(TypeError, match="postprocess must return a mapping of column name -> value, got int"):
        call(broken, {"x": rows(1)})


def test_worker_column_and_row_count(models):
    predictor = Predictor(models / "conv.rbln", worker_column="worker")
    out = call(predictor, {"x": rows(3)})
    assert out["worker"].tolist() == [predictor.worker] * 3 and predictor.worker.endswith(f":{os.getpid()}")
    assert predictor.rows == 3


def test_a_path_is_memory_mapped_not_copied(models):
    artifact = Predictor(models / "conv.rbln").runtime.artifact
    constants = [t.data for p in artifact.partitions if p.npu_program for t in p.npu_program.tensors if t.data is not None]
    assert constants
    for array in constants:
        base = array
        while getattr(base, "base", None) is not None and not isinstance(base, mmap.mmap):
            base = base.base if not isinstance(base.base, memoryview) else base.base.obj
        assert isinstance(base, mmap.mmap)


# -- shards ---------------------------------------------------------------------------------
CONV_INPUT = [ValueInfo("x", np.dtype(np.float32), (1, 3, 8, 8))]


def test_discover_checks_every_shard_against_the_model(tmp_path):
    np.savez(tmp_path / "a.npz", x=rows(3))
    np.save(tmp_path / "b.npy", rows(2, (1, 3, 8, 8)))
    np.savez(tmp_path / "c.npz", rows(4))  # arr_0: by position
    found = shards.discover(tmp_path, CONV_INPUT)
    assert found.kind == "arrays" and found.rows == 9
    assert [(s.path.name, s.keys, s.rows) for s in found.shards] == [
        ("a.npz", {"x": "x"}, 3), ("b.npy", {"x": "data"}, 2), ("c.npz", {"x": "arr_0"}, 4)]

    np.savez(tmp_path / "d.npz", x=rows(2, (3, 9, 9)))
    with pytest.raises(InputShapeError, match=r"d.npz: array 'x' \(input 'x'\): rows of shape \[3, 9, 9\], the model takes \[1, 3, 8, 8\]"):
        shards.discover(tmp_path, CONV_INPUT)
    (tmp_path / "d.npz").unlink()
    np.savez(tmp_path / "e.npz", x=rows(2).astype(np.float64))
    with pytest.raises(InputDtypeError, match=r"e.npz: array 'x' \(input 'x'\): float64, the model takes float32"):
        shards.discover(tmp_path, CONV_INPUT)
    (tmp_path / "e.npz").unlink()
    np.savez(tmp_path / "f.npz", image=rows(2), label=np.zeros(2))
    with pytest.raises(InputNameError, match=r"f.npz: arrays 'image', 'label' do not match the model's inputs \('x'\)"):
        shards.discover(tmp_path, CONV_INPUT)
    (tmp_path / "f.npz").unlink()
    (tmp_path / "g.npz").write_bytes(b"not a zip")
    with pytest.raises(shards.ShardError, match=r"g.npz: not a readable .npz file"):
        shards.discover(tmp_path, CONV_INPUT)
    (tmp_path / "g.npz").unlink()
    np.save(tmp_path / "a.npy", rows(1))
    with pytest.raises(shards.ShardError, match="a.npy and a.npz would both write a.npz"):
        shards.discover(tmp_path, CONV_INPUT)


def test_read_chunks_gives_rows_with_their_shard_and_index(tmp_path):
    x = rows(5)
    np.savez(tmp_path / "a.npz", x=x)
    np.save(tmp_path / "b.npy", x[:3])
    found = shards.discover(tmp_path, CONV_INPUT)
    files = [(str(s.path), s.keys) for s in found.shards]
    got = shards.read_chunks({"file": np.array([0, 1]), "start": np.array([2, 0]), "stop": np.array([5, 2])}, files)
    np.testing.assert_array_equal(got["x"], np.concatenate([x[2:5], x[0:2]]))
    assert got[shards.FILE_COLUMN].tolist() == [0, 0, 0, 1, 1]
    assert got[shards.ROW_COLUMN].tolist() == [2, 3, 4, 0, 1]


def test_shard_writer_writes_each_shard_whole_and_in_order(tmp_path):
    source = shards.Inputs("arrays", [tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"],
                           shards=[shards.ArrayShard(tmp_path / "a.npz", {}, 3), shards.ArrayShard(tmp_path / "b.npz", {}, 0),
                                   shards.ArrayShard(tmp_path / "c.npz", {}, 2)])
    writer = shards.ShardWriter(tmp_path / "out", source, ["y"])
    y = np.arange(5.0)
    writer.add({"y": y[:2], shards.FILE_COLUMN: np.array([0, 0]), shards.ROW_COLUMN: np.array([0, 1])})
    writer.add({"y": y[2:], shards.FILE_COLUMN: np.array([0, 2, 2]), shards.ROW_COLUMN: np.array([2, 0, 1])})
    writer.close()
    assert [p.name for p in writer.written] == ["a.npz", "b.npz", "c.npz"]
    with np.load(tmp_path / "out" / "a.npz") as a, np.load(tmp_path / "out" / "c.npz") as c:
        assert a["y"].tolist() == [0, 1, 2] and c["y"].tolist() == [3, 4]
    shuffled = shards.ShardWriter(tmp_path / "bad", source, ["y"])
    shuffled.add({"y": y[:3], shards.FILE_COLUMN: np.array([0, 0, 0]), shards.ROW_COLUMN: np.array([1, 0, 2])})
    with pytest.raises(InputError, match=r"a.npz: its outputs came back as rows 0..2 \(3 rows\) of 3; Ray Data did not keep the order"):
        shuffled.close()
    assert not (tmp_path / "bad" / "a.npz").exists() and not list((tmp_path / "bad").iterdir())


@pytest.mark.parametrize("shape, layout, expected", [
    ((1, 3, 8, 6), "", ("CHW", 8, 6, 3)), ((1, 8, 6, 3), "NHWC", ("HWC", 8, 6, 3)), ((8, 6, 3), "", ("HWC", 8, 6, 3)),
    ((1, 1, 8, 6), "", ("CHW", 8, 6, 1)),
])
def test_image_layouts(shape, layout, expected):
    spec = ValueInfo("x", np.dtype(np.float32), shape, layout)
    convert = shards.ImageToInput(spec)
    assert (convert.layout, convert.height, convert.width, convert.channels) == expected
    image = np.random.default_rng(0).integers(0, 256, (8, 6, expected[3]), dtype=np.uint8)
    result = convert({"image": image[:, :, 0] if expected[3] == 1 else image, "path": "p"})
    assert result.shape == (shape[1:] if len(shape) == 4 else shape) and result.dtype == np.float32
    reference = image.transpose(2, 0, 1) if expected[0] == "CHW" else image
    np.testing.assert_array_equal(result.reshape(reference.shape), reference.astype(np.float32) / 255)


def test_inputs_that_take_no_images():
    with pytest.raises(shards.ShardError, match=r"input 'x' of shape \[1, 16\] does not take images"):
        shards.ImageToInput(ValueInfo("x", np.dtype(np.float32), (1, 16)))


# -- the command line, before Ray starts --------------------------------------------------------
def rblnc_cli(*args, check=True):
    """`rblnc ...` in this process (these runs stop before Ray starts, so no subprocess is needed)."""
    from click.testing import CliRunner

    from rblnc.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    if check and result.exit_code != 0:
        raise AssertionError(f"rblnc {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def test_cli_refuses_what_ray_runs_do_not_take(models, tmp_path):
    np.savez(tmp_path / "in.npz", x=rows(2))
    for args, message in [
        (["--ray", models / "conv.rbln", tmp_path / "in.npz"], "--ray needs -o OUTPUT_DIR"),
        (["--ray", "--trace", tmp_path / "t.json", models / "conv.rbln", tmp_path / "in.npz", "-o", tmp_path / "o"],
         "--trace cannot be combined with --ray"),
        (["--workers", "2", models / "conv.rbln", tmp_path / "in.npz"], "--workers applies to --ray runs"),
        ([models / "conv.rbln", tmp_path], "is a folder; a folder of shards or images is read with --ray"),
        (["--ray", models / "conv.rbln", tmp_path / "in.npz", "-o", tmp_path / "in.npz"], "is a file; --ray writes"),
    ]:
        result = rblnc_cli("run", *args, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_cli_names_a_bad_shard_in_one_line_before_starting_ray(models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    np.savez(folder / "a.npz", x=rows(2))
    np.savez(folder / "b.npz", x=rows(2, (3, 4, 4)))
    result = rblnc_cli("run", "--ray", models / "conv.rbln", folder, "-o", tmp_path / "out", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {folder / 'b.npz'}: array 'x' (input 'x'): rows of shape [3, 4, 4], "
                                     "the model takes [1, 3, 8, 8] (a row may leave out the leading 1)")
    assert not (tmp_path / "out").exists() and not ray.is_initialized()
    result = rblnc_cli("run", "--ray", tmp_path / "missing.rbln", folder, "-o", tmp_path / "out", check=False)
    assert result.returncode == 1 and "missing.rbln: no such file" in result.stderr


def test_summary_lines(models):
    from rblnc.ray.batch_run import RunSummary, npu_utilisation, print_summary

    artifact = rblnc.RBLNCompiledModel(models / "mixed.rbln").artifact
    assert npu_utilisation(artifact, 100, 1.0, 2, 0.0) > 0  # every compile estimates times
    for partition in artifact.partitions:  # as an artifact written before the timing model
        partition.est_time_ns = 0
        for command in partition.npu_program.commands if partition.npu_program is not None else ():
            command.est_time_ns = 0
    assert npu_utilisation(artifact, 100, 1.0, 2, 0.0) is None  # no estimates in the artifact
    for partition in artifact.partitions:
        partition.est_time_ns = 4e6 if partition.npu_program is not None else 0  # 2 NPU partitions: 8 ms a row
    assert npu_utilisation(artifact, 100, 1.0, 2, 0.0) == pytest.approx(0.4)   # 0.8 s of NPU per device-second x2
    assert npu_utilisation(artifact, 100, 10.0, 2, 5.0) == pytest.approx(0.2)  # paced x5
    lines = []
    print_summary(RunSummary(100, 3.0, 2, {"n:1": 60, "n:2": 40}, 0.4, [models / "a.npz"], startup_seconds=2.0,
                             steady_rows=80, steady_seconds=1.0), lines.append)
    assert lines == ["rows: 100 on 2 worker(s) in 3.00 s (2.00 s until the first outputs: reading, starting the workers)",
                     "throughput: 33.3 rows/s overall, 80.0 rows/s after the first outputs",
                     "  worker n:1: 60 rows", "  worker n:2: 40 rows",
                     "modelled NPU utilisation: 40.0% per device (after the first outputs)",
                     f"wrote 1 shard(s) to {models}"]
    lines.clear()
    print_summary(RunSummary(100, 3.0, 1, {"n:1": 100}, None, [], startup_seconds=2.0, steady_rows=80,
                             steady_seconds=1.0), lines.append)
    assert lines[-2] == "modelled NPU utilisation: n/a (the artifact carries no timing estimates)"
