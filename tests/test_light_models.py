"""The nine light models shipped with the onnx package: compile, save, load, run, match."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import LIGHT_DIR, LIGHT_MODELS
from onnx import numpy_helper
from onnx.backend.test.runner import Runner

import rblnc
from rblnc.format.artifact import Device


def _inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {t.name for t in model.graph.initializer}
    # As the onnx backend test runner makes them for these models.
    return {
        vi.name: Runner.generate_dummy_data(vi, seed=0, random=False)
        for vi in model.graph.input if vi.name not in initializers
    }


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_reference(name, tmp_path):
    path = LIGHT_DIR / f"{name}.onnx"
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"{name}_output_0.pb")))
    inputs = _inputs(onnx.load(str(path)))

    compiled = rblnc.compile_from_onnx(str(path), dtype="fp32")
    saved = compiled.save(tmp_path / f"{name}.rbln")
    runtime = rblnc.Runtime(saved)
    actual = runtime.run(**inputs)

    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)
    assert any(p.device == Device.NPU for p in runtime.artifact.partitions)
