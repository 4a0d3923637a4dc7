"""LeNet-5 exported to ONNX (QDQ) and TFLite (static int8, int8-full, mixed int4) and run in the
real runtimes: agreement with the simulation, exact scales, packed int4, fallbacks, manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edge_compress.artifact import FILE_KEYS, load_artifact
from edge_compress.export.base import sha256_file
from edge_compress.export.onnx import inspect_qdq
from edge_compress.export.parity import OrtRunner, TfliteRunner
from edge_compress.plan import CompressionPlan
from edge_compress.quant.fakequant import compute_quant_spec, fold_batchnorm, simulate
from edge_compress.zoo.train import predict

pytestmark = [pytest.mark.slow, pytest.mark.tflite]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_int8_files_agree_with_simulation_in_runtimes(art_int8, lenet):
    m = art_int8.manifest
    assert {d["format"] for d in m["files"].values()} == {"onnx", "tflite"}
    assert {d["variant"] for d in m["files"].values()} == {"qdq", "int8", "int8-full"}
    for name, rep in m["parity"].items():
        assert rep["agreement"] >= 0.99, (name, rep)
        assert rep["passed"]
    # independently: run the files again and compare with a fresh simulation of the plan
    plan = CompressionPlan.load(art_int8.path / "plan.json")
    folded = fold_batchnorm(lenet.model)
    spec = compute_quant_spec(folded, plan, lenet.calibration(256))
    x = lenet.dataset.x_val
    tfl = TfliteRunner(art_int8.file("tflite", "int8")).run(x)
    assert _agreement(tfl, predict(simulate(folded, spec), x)) >= 0.99
    assert abs(m["accuracy"]["runtime"]["lenet5.int8.tflite"] - m["accuracy"]["simulated"]) <= 0.003


def test_onnx_weight_scales_equal_the_simulation(art_int8, lenet):
    plan = CompressionPlan.load(art_int8.path / "plan.json")
    folded = fold_batchnorm(lenet.model)
    spec = compute_quant_spec(folded, plan, lenet.calibration(256))
    found = inspect_qdq(onnx.load(str(art_int8.file("onnx"))), list(plan.layers))
    integer_layers = [n for n, info in found.items() if info["weight_bits"] is not None]
    assert len(integer_layers) >= 4
    for name in integer_layers:
        assert np.array_equal(found[name]["weight_scale"], spec[name].weight_scale), name
        act = spec[name].act
        assert found[name]["act_scale"] == np.float32(act.scale)
        assert found[name]["act_zero_point"] == act.zero_point
    # the runtime matches the plan's simulation closely, not just in top-1
    out = OrtRunner(art_int8.file("onnx")).run(lenet.dataset.x_val)
    assert art_int8.manifest["parity"]["lenet5.qdq.onnx"]["sqnr_db"] is None or (
        art_int8.manifest["parity"]["lenet5.qdq.onnx"]["sqnr_db"] > 40
    )
    assert out.shape == (len(lenet.dataset.x_val), 10)


def test_manifest_keys_and_hashes(art_int8):
    m = load_artifact(art_int8.path).manifest  # verifies sizes and sha256 on load
    for key in (
        "id",
        "created",
        "model",
        "profile",
        "files",
        "parity",
        "predicted",
        "fallbacks",
        "versions",
        "stages_s",
    ):
        assert key in m, key
    for name, d in m["files"].items():
        assert set(d) == set(FILE_KEYS), d
        f = art_int8.path / name
        assert d["sha256"] == sha256_file(f)
        assert d["bytes"] == f.stat().st_size
        assert d["planned_bytes"] > 0
    for tool in ("edge_compress", "torch", "onnx", "onnxruntime", "ai_edge_quantizer", "litert_torch"):
        assert tool in m["versions"]
    assert {"simulate", "export_onnx", "export_tflite", "parity"} <= set(m["stages_s"])
    assert m["id"].startswith(art_int8.path.name.rsplit("-", 1)[1])
    assert json.loads((art_int8.path / "plan.json").read_text())["layers"]


def test_recompile_is_a_cache_hit(art_int8, lenet, host, lenet_graph, out_root):
    from edge_compress.compiler import compile_model

    from .conftest import INTEGER

    plan = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    again = compile_model(lenet, host, plan=plan, out_dir=out_root, options=INTEGER)
    assert again.cached is True
    assert again.stages_s == {}  # no stage ran
    assert again.path == art_int8.path
    assert again.id == art_int8.id


def test_mixed_int4_plan_runs_and_is_packed(art_mixed, art_int8):
    m = art_mixed.manifest
    for name, rep in m["parity"].items():
        assert rep["agreement"] >= 0.99, (name, rep)
    onnx_file = art_mixed.file("onnx")
    found = inspect_qdq(onnx.load(str(onnx_file)), ["c3", "f5", "f6"])
    assert found["f5"]["weight_dtype"] == "int4" and found["c3"]["weight_dtype"] == "int4"
    assert found["f5"]["weight_storage_bytes"] == (120 * 400) // 2  # two weights per byte
    assert found["f6"]["weight_bits"] == 8
    # the int4 file is smaller than the int8 one by about the planned ratio
    for fmt, variant in (("onnx", "qdq"), ("tflite", "int8")):
        small = m["files"][art_mixed.file(fmt, variant).name]
        big = art_int8.manifest["files"][art_int8.file(fmt, variant).name]
        actual = small["bytes"] / big["bytes"]
        planned = small["planned_bytes"] / big["planned_bytes"]
        assert actual < 0.75, (fmt, actual)
        assert abs(actual - planned) < 0.08, (fmt, actual, planned)


def test_depthwise_int4_falls_back_to_int8_in_tflite_and_is_recorded(art_mixed):
    m = art_mixed.manifest
    fb = [f for f in m["fallbacks"] if f["format"] == "tflite" and f["layer"] == "c1"]
    assert fb and fb[0]["planned"].startswith("w:int4") and fb[0]["actual"].startswith("w:int8")
    assert "DEPTHWISE_CONV_2D" in fb[0]["reason"]
    plan = json.loads((art_mixed.path / "plan.json").read_text())
    c1 = next(d for d in plan["layers"] if d["name"] == "c1")
    assert c1["weight_bits"] == 4 and "tflite" in c1["fallback"]
    tfl_layers = m["layers"][art_mixed.file("tflite", "int8").name]
    assert tfl_layers["c1"]["weight_bits"] == 8 and tfl_layers["c3"]["weight_bits"] == 4


def test_files_carry_the_bias_correction(art_mixed, lenet):
    """The exported biases are the simulation's corrected ones: the ONNX file runs as the corrected
    simulation, much closer to it than to the same plan without the correction."""
    from dataclasses import replace

    plan = CompressionPlan.load(art_mixed.path / "plan.json")
    assert plan.bias_correction
    folded = fold_batchnorm(lenet.model)
    spec = compute_quant_spec(folded, plan, lenet.calibration(256))
    assert any(lq.bias_delta is not None and np.abs(lq.bias_delta).max() > 0 for lq in spec.values())
    plain = {n: replace(lq, bias_delta=None) for n, lq in spec.items()}
    x = lenet.dataset.x_val
    out = OrtRunner(art_mixed.file("onnx")).run(x)
    err = {
        k: float(np.mean((out - predict(simulate(folded, s), x)) ** 2))
        for k, s in (("corrected", spec), ("plain", plain))
    }
    # (with GPTQ weights the uncorrected mean shift is small: 4x, where it was > 10x with nearest rounding)
    assert err["corrected"] < 0.4 * err["plain"], err


def test_files_carry_the_gptq_weights(art_mixed, lenet):
    """The exported weights are the plan's GPTQ-rounded ones: the ONNX file runs as the GPTQ
    simulation, far closer to it than to the same plan rounded to nearest."""
    from dataclasses import replace

    plan = CompressionPlan.load(art_mixed.path / "plan.json")
    assert plan.weight_rounding == "gptq"
    folded = fold_batchnorm(lenet.model)
    calib = lenet.calibration(256)
    specs = {
        r: compute_quant_spec(folded, replace(plan, weight_rounding=r), calib) for r in ("gptq", "nearest")
    }
    x = lenet.dataset.x_val
    out = OrtRunner(art_mixed.file("onnx")).run(x)
    err = {r: float(np.mean((out - predict(simulate(folded, s), x)) ** 2)) for r, s in specs.items()}
    assert err["gptq"] < 0.1 * err["nearest"], err
