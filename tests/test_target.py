"""Target spec as data: presets, files, checks, the record in the artifact, kernels vs the op list."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import conv_relu_model, make_onnx
from onnx import helper

import rblnc
from rblnc.emulator import KERNELS
from rblnc.format.artifact import Device
from rblnc.target import DEFAULT_TARGET, TargetSpec, TargetSpecError, load_target

# The skeleton's NPU op list: the default preset must keep every one of them.
SKELETON_OPS = {
    "Conv", "Gemm", "MatMul", "Relu", "Add", "Sum", "Mul", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Softmax",
    "BatchNormalization", "Sigmoid", "Clip",
}

SMALL_SPEC = {
    "name": "small",
    "memory": {"sram_bytes": 1 << 20, "dram_bytes": 64 << 20, "dram_bandwidth": 1e10, "sram_bandwidth": 1e11},
    "host_link": {"bandwidth": 1e9, "latency_ns": 1000},
    "compute": {"command_overhead_ns": 100, "efficiency": 0.5,
                "peak_flops": {"fp32": 1e12, "fp16": 4e12, "bf16": 4e12}},
    "ops": {"supported": ["Conv", "Relu"]},
}


def test_default_preset_has_the_published_figures():
    spec = load_target()
    assert spec.name == DEFAULT_TARGET == "rbln-ca12"
    assert spec.sram_bytes == (8 * 4 + 32) * 2**20          # 8 engines x 4 MB + 32 MB shared
    assert spec.dram_bytes == 16 * 2**30                      # 16 GB GDDR6
    assert spec.peak("fp16") == spec.peak("bf16") == 32e12    # 32 TFLOPS
    assert spec.peak_flops["int8"] == 128e12                  # 128 TOPS
    assert spec.peak("bf16", vector=True) == spec.vector_flops["bf16"]


def test_default_preset_keeps_the_skeleton_ops_and_every_listed_op_has_a_kernel():
    spec = load_target()
    assert SKELETON_OPS <= set(spec.supported_ops)
    standard_kernels = {name for name in KERNELS if "::" not in name}
    listed_standard = {op for op in spec.supported_ops if "::" not in op}
    assert listed_standard == standard_kernels, "the NPU list and the emulator's standard kernels differ"
    assert set(spec.supported_ops) <= set(KERNELS)  # our own ops, listed by qualified name, too


@pytest.mark.parametrize("preset", ["rbln-ca12", "edge-tiny"])
def test_every_preset_loads_and_lists_only_ops_with_kernels(preset):
    spec = load_target(preset)
    assert set(spec.supported_ops) <= set(KERNELS)
    assert TargetSpec.from_json(spec.to_json()) == spec


def test_toml_and_json_files_describe_the_same_target(tmp_path):
    json_path = tmp_path / "small.json"
    json_path.write_text(json.dumps(SMALL_SPEC))
    toml_path = tmp_path / "small.toml"
    toml_path.write_text(
        'name = "small"\n[memory]\nsram_bytes = 1048576\ndram_bytes = 67108864\ndram_bandwidth = 1e10\n'
        'sram_bandwidth = 1e11\n[host_link]\nbandwidth = 1e9\nlatency_ns = 1000\n[compute]\n'
        'command_overhead_ns = 100\nefficiency = 0.5\n[compute.peak_flops]\nfp32 = 1e12\nfp16 = 4e12\n'
        'bf16 = 4e12\n[ops]\nsupported = ["Conv", "Relu"]\n'
    )
    from_json, from_toml = load_target(json_path), load_target(toml_path)
    assert from_json == from_toml
    assert from_json.sram_bytes == 1 << 20 and from_json.supported_ops == ("Conv", "Relu")
    assert from_json.peak("fp16", vector=True) == 4e12 / 16  # no vector figure: a sixteenth


@pytest.mark.parametrize("change, message", [
    (lambda s: s["memory"].pop("dram_bytes"), r"missing \[memory\] dram_bytes"),
    (lambda s: s["memory"].update(dram_bandwidth=0), r"\[memory\] dram_bandwidth must be positive"),
    (lambda s: s["compute"].update(efficiency=1.5), r"efficiency is a fraction of peak"),
    (lambda s: s["compute"]["peak_flops"].pop("bf16"), r"\[compute.peak_flops\] lacks bf16"),
    (lambda s: s["host_link"].update(latency_ns=-1), r"latency_ns must not be negative"),
])
def test_bad_spec_is_an_error_naming_the_field(tmp_path, change, message):
    spec = json.loads(json.dumps(SMALL_SPEC))
    change(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TargetSpecError, match=message) as info:
        load_target(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(TargetSpecError, match=r"no such file or preset \(presets: edge-tiny, rbln-ca12\)"):
        load_target("rbln-zz99")


def test_the_spec_used_is_recorded_in_the_artifact(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_SPEC))
    saved = rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32", target=str(path)).save(tmp_path / "m.rbln")
    loaded = rblnc.RBLNCompiledModel(saved).artifact
    assert loaded.target == load_target(path)
    assert loaded.target.name == "small" and loaded.target.supported_ops == ("Conv", "Relu")


def test_ops_missing_from_the_list_fall_back_to_the_host(tmp_path):
    path = tmp_path / "small.json"
    spec = json.loads(json.dumps(SMALL_SPEC))
    spec["ops"]["supported"] = ["Conv"]
    path.write_text(json.dumps(spec))
    # -O0: no fusion, so the Relu stays a Relu the target does not list
    artifact = rblnc.compile_from_onnx(conv_relu_model(), dtype="fp32", target=str(path), opt_level=0).artifact
    assert [p.device for p in artifact.partitions] == [Device.NPU, Device.HOST]
    assert artifact.partitions[1].fallback_reasons[0].reason.startswith("op type Relu is not supported by the NPU (small); ")


def test_attribute_limits_send_other_values_to_the_host():
    def resize(mode):
        return make_onnx(
            [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode)],
            [("x", [1, 1, 4, 4])], [("y", [1, 1, 8, 8])],
            [("scales", np.array([1, 1, 2, 2], np.float32))],
        )

    linear = rblnc.compile_from_onnx(resize("linear"), dtype="fp32").artifact
    assert [p.device for p in linear.partitions] == [Device.NPU]
    cubic = rblnc.compile_from_onnx(resize("cubic"), dtype="fp32").artifact
    assert [p.device for p in cubic.partitions] == [Device.HOST]
    assert cubic.partitions[0].fallback_reasons[0].reason == \
        "mode='cubic' is not implemented by the NPU (rbln-ca12 takes 'nearest', 'linear'); use one of those to keep it on the NPU"
