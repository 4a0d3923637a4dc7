"""Compute precision of the exported files: integer kernels or float kernels on integer weights.

On ``host`` (x86 AVX2 without VNNI) the profile records that int8 exports run slower than float
ones, so ``compute: auto`` writes weight-only files: the plan's int8 / int4 weights, stored as
integers, float activations. ARM profiles keep integer compute. In TFLite, int4 weight-only layers
are dequantized on every call (LiteRT's XNNPACK delegate does not take them): float compute stores
them as int8 when that file fits the byte budget, else the choice counts the per-call cost.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge_compress.compiler import ExportOptions, biased_layers, compile_model
from edge_compress.errors import UserError
from edge_compress.export import size
from edge_compress.export.base import effective_plan, effective_spec
from edge_compress.export.compute import choose
from edge_compress.export.onnx import inspect_weight_only, tiny_layers
from edge_compress.export.parity import OrtRunner, TfliteRunner
from edge_compress.plan import CompressionPlan
from edge_compress.profiles import load_profile
from edge_compress.quant.fakequant import compute_quant_spec, fold_batchnorm, simulate
from edge_compress.zoo.train import predict

from .conftest import mixed_plan

INT4 = ("c3", "f5")


@pytest.fixture(scope="module")
def art_auto(lenet, host, lenet_graph, out_root):
    """The predicted compile (compute: auto) of a mixed int8 / int4 plan for ``host`` (no byte budget:
    TFLite stores the int4 layers as int8), and the TFLite weight-only file of the same plan asked
    for under a byte budget the int8-widened file would not fit (int4 kept)."""
    plan = mixed_plan(lenet_graph, INT4)
    # the cost model's choice alone (the choice timed on this machine: test_local_target_times_both_files)
    auto = compile_model(
        lenet, host, plan=plan, out_dir=out_root, options=ExportOptions(measure_compute=False)
    )
    flt = compile_model(
        lenet,
        host,
        plan=plan,
        formats=("tflite",),
        out_dir=out_root,
        budget={"model_bytes": _int4_tflite_bytes(lenet, lenet_graph, plan) + 1000},
        options=ExportOptions(compute="float", tflite_variants=("int8",)),
    )
    return auto, flt


def _int4_tflite_bytes(lenet, graph, plan) -> int:
    from edge_compress.export.compute import weight_only_plan

    biased = biased_layers(graph, fold_batchnorm(lenet.model))
    return size.predict_file_bytes(weight_only_plan(plan), graph, "tflite", "weight-only", biased=biased)


@pytest.fixture(scope="module")
def sim_spec(lenet, lenet_graph):
    folded = fold_batchnorm(lenet.model)
    plan = mixed_plan(lenet_graph, INT4)
    return folded, plan, compute_quant_spec(folded, plan, lenet.calibration(256))


def _file(arts, fmt):
    art = arts[0] if fmt == "onnx" else arts[1]
    return next(
        art.path / n
        for n, f in art.manifest["files"].items()
        if f["format"] == fmt and f["variant"] == "weight-only"
    )


def _manifest(arts, fmt):
    return (arts[0] if fmt == "onnx" else arts[1]).manifest


def test_auto_picks_float_on_host_and_integer_on_arm(lenet_graph):
    plan = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    fc = tiny_layers(lenet_graph.layers)
    for fmt in ("onnx", "tflite"):
        host = choose("auto", fmt, load_profile("host"), lenet_graph, plan, fc)
        assert host.compute == "float" and host.variant == "weight-only"
        assert host.predicted_ms["integer"] > host.predicted_ms["float"]
        assert {"onnx": "integer_kernels", "tflite": "integer_speedup"}[fmt] in host.basis
        for arm in ("rpi4", "rpi5"):
            c = choose("auto", fmt, load_profile(arm), lenet_graph, plan, fc)
            assert c.compute == "integer" and c.variant == {"onnx": "qdq", "tflite": "int8"}[fmt]
            assert c.predicted_ms["integer"] <= c.predicted_ms["float"]
        # asked for: no prediction overrides it
        assert choose("integer", fmt, load_profile("host"), lenet_graph, plan, fc).compute == "integer"
        assert choose("float", fmt, load_profile("rpi4"), lenet_graph, plan, fc).compute == "float"
    # a float plan has nothing to choose
    flt = CompressionPlan.uniform(lenet_graph, "lenet5", "host", None, None)
    assert choose("auto", "onnx", load_profile("host"), lenet_graph, flt).compute == "integer"
    # int4 weight-only layers are dequantized on every call in LiteRT: without a byte budget they are
    # stored as int8 (float compute); under a budget the wider file misses, the per-call cost decides
    mixed = mixed_plan(lenet_graph, INT4)
    tfl = choose("auto", "tflite", load_profile("host"), lenet_graph, mixed, fc)
    assert tfl.compute == "float" and tfl.widen_int4 and "stored as int8" in tfl.basis
    tight = choose("auto", "tflite", load_profile("host"), lenet_graph, mixed, fc, budget_bytes=40_000)
    assert tight.compute == "integer" and not tight.widen_int4
    assert "int4 weights dequantized per call" in tight.basis
    onnx_c = choose("auto", "onnx", load_profile("host"), lenet_graph, mixed, fc, budget_bytes=40_000)
    assert onnx_c.compute == "float" and not onnx_c.widen_int4


def test_unknown_compute_is_a_user_error(lenet, host, tmp_path):
    with pytest.raises(UserError, match="--compute"):
        compile_model(lenet, host, out_dir=tmp_path, options=ExportOptions(compute="fast"))
    assert not any(tmp_path.iterdir())


def test_manifest_records_the_choice_and_how_to_get_the_other(art_auto):
    m = art_auto[0].manifest
    assert {(f["format"], f["variant"]) for f in m["files"].values()} == {
        ("onnx", "weight-only"),
        ("tflite", "weight-only"),
        ("tflite", "int8-full"),
    }
    for fmt in ("onnx", "tflite"):
        c = m["compute"][fmt]
        assert c["asked"] == "auto" and c["compute"] == "float" and c["variant"] == "weight-only"
        assert c["predicted_ms"]["integer"] > c["predicted_ms"]["float"] > 0
        assert "slower than float" in c["reason"] and "--compute integer" in c["other"]
        assert {"onnx": "integer_kernels", "tflite": "integer_speedup"}[fmt] in c["basis"]
    assert m["compute"]["tflite"]["widen_int4"] and not m["compute"]["onnx"]["widen_int4"]
    # TFLite: the int4 layers are stored as int8, recorded as fallbacks with the reason
    wide = {f["layer"]: f for f in m["fallbacks"] if f["variant"] == "weight-only"}
    assert set(wide) == set(INT4)
    assert all(f["actual"] == "w:int8 a:fp32" and "DEQUANTIZE" in f["reason"] for f in wide.values())
    # the full-integer variant stays integer: int8 input and output
    io = m["io"]["lenet5.int8-full.tflite"]
    assert io["input"]["dtype"] == "int8" and io["output"]["dtype"] == "int8"
    # asked for float: recorded as asked
    assert art_auto[1].manifest["compute"]["tflite"]["reason"] == "asked for (--compute float)"
    # under the tight budget every layer keeps its planned weight bits with float activations (TFLite
    # c3 / f5 are CONV_2D / FULLY_CONNECTED: int4 weight-only exists); nothing fell back
    for fmt in ("onnx", "tflite"):
        mf, name = _manifest(art_auto, fmt), _file(art_auto, fmt).name
        bits = {n: (d["weight_bits"], d["act_bits"]) for n, d in mf["layers"][name].items()}
        assert bits == {n: (4 if n in INT4 else 8, None) for n in bits}, name
        assert not [f for f in mf["fallbacks"] if f["variant"] == "weight-only" and f["format"] == fmt]
    assert not art_auto[1].manifest["compute"]["tflite"]["widen_int4"]
    # the int4 weight-only layers' latency in LiteRT is said
    assert any("dequantized on every call" in n for n in art_auto[1].manifest["notes"])


def test_float_compute_onnx_holds_integer_weights_and_no_dequantize(art_auto, sim_spec, lenet):
    folded, plan, qspec = sim_spec
    model = onnx.load(str(_file(art_auto, "onnx")))
    ops = {n.op_type for n in model.graph.node}
    assert "DequantizeLinear" not in ops and "QuantizeLinear" not in ops
    types = {i.data_type for i in model.graph.initializer}
    assert {onnx.TensorProto.INT4, onnx.TensorProto.INT8} <= types
    found = inspect_weight_only(model, list(plan.layers))
    grid = dict(simulate(folded, qspec, activations=False).named_modules())
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for name, info in found.items():
        want_bits = 4 if name in INT4 else 8
        assert info["weight_bits"] == want_bits and not info["dequantize"], (name, info)
        assert np.array_equal(info["weight_scale"], qspec[name].weight_scale.reshape(-1)), name
        # the integers times the scales are the simulation's grid weights, bit for bit
        node = next(n for n in model.graph.node if n.name == name)
        mul = producer[node.input[1]]
        q = onnx.numpy_helper.to_array(inits[producer[mul.input[0]].input[0]]).astype(np.float32)
        s = onnx.numpy_helper.to_array(inits[mul.input[1]])
        w = q * s
        want = grid[name].weight.detach().numpy()
        assert np.array_equal(w.T if node.op_type == "MatMul" else w, want), name
    # int4 really packed: two weights per byte
    for name in INT4:
        n_w = int(np.prod(grid[name].weight.shape))
        assert found[name]["weight_storage_bytes"] == (n_w + 1) // 2


def test_onnxruntime_folds_the_weight_rebuild_into_float_layers(art_auto, tmp_path):
    """What makes the file run at float speed: after session creation no Cast / Mul is left, every
    Conv / Gemm reads a float initializer."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(_file(art_auto, "onnx")), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "optimized.onnx"))
    inits = {i.name: i for i in opt.graph.initializer}
    assert not [n for n in opt.graph.node if n.op_type in ("Cast", "Mul", "DequantizeLinear")]
    layers = [n for n in opt.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm")]
    assert len(layers) == 5
    for n in layers:
        assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT, n.name


def test_weight_only_files_agree_with_the_float_activation_simulation(art_auto, sim_spec, lenet):
    folded, plan, qspec = sim_spec
    x = lenet.dataset.x_val
    for fmt, runner in (("onnx", OrtRunner), ("tflite", TfliteRunner)):
        path = _file(art_auto, fmt)
        m = _manifest(art_auto, fmt)
        bits = {n: (d["weight_bits"], d["act_bits"]) for n, d in m["layers"][path.name].items()}
        ref = predict(simulate(folded, effective_spec(folded, plan, qspec, bits)), x)
        out = runner(path).run(x)
        assert np.mean(out.argmax(1) == ref.argmax(1)) == 1.0, fmt
        assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max()), fmt
        rep = m["parity"][path.name]
        assert rep["passed"] and rep["agreement"] >= 0.99
        assert abs(rep["runtime_accuracy"] - rep["simulated_accuracy"]) <= 0.003


def test_weight_only_tflite_dequantizes_integer_weights(art_auto):
    from edge_compress.export.tflite import read_tflite

    model_t = read_tflite(_file(art_auto, "tflite").read_bytes())
    sg = model_t.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model_t.operatorCodes]
    builtins = [codes[op.opcodeIndex] for op in sg.operators]
    deq = [op for op, b in zip(sg.operators, builtins, strict=True) if b == 6]  # DEQUANTIZE
    assert 114 not in builtins  # no QUANTIZE: activations stay float
    assert sorted(sg.tensors[op.inputs[0]].type for op in deq) == [9, 9, 9, 17, 17]  # INT8 x3, INT4 x2
    assert sg.tensors[sg.inputs[0]].type == 0 and sg.tensors[sg.outputs[0]].type == 0  # float32 I/O


def test_weight_only_sizes_are_what_the_size_model_plans(art_auto, lenet_graph, lenet):
    folded = fold_batchnorm(lenet.model)
    plan = mixed_plan(lenet_graph, INT4)
    for fmt in ("onnx", "tflite"):
        m = _manifest(art_auto, fmt)
        name = _file(art_auto, fmt).name
        f = m["files"][name]
        bits = {n: (d["weight_bits"], d["act_bits"]) for n, d in m["layers"][name].items()}
        eff = effective_plan(plan, bits)
        planned = size.predict_file_bytes(
            eff, lenet_graph, fmt, "weight-only", biased=biased_layers(lenet_graph, folded)
        )
        assert f["planned_bytes"] == planned
        assert 0.9 <= f["bytes"] / planned <= 1.1, (name, f["bytes"], planned)
    # the ONNX parameters are counted exactly: integer weights, a float32 scale per channel, float biases
    model = onnx.load(str(_file(art_auto, "onnx")))
    stored = sum(
        len(i.raw_data)
        for i in model.graph.initializer
        if i.data_type != onnx.TensorProto.INT64  # shape constants of the flatten
    )
    payload = size.payload_bytes(
        effective_plan(plan, {n: (4 if n in INT4 else 8, None) for n in plan.layers}),
        lenet_graph,
        "onnx",
        biased=biased_layers(lenet_graph, folded),
        variant="weight-only",
    )
    assert stored == payload


def test_local_target_times_both_files(lenet, host, lenet_graph, tmp_path):
    """On a local target ``auto`` exports the integer and the float file of each format, times both
    here and keeps the faster one (integer only when clearly faster); the other file is gone."""
    from edge_compress.export.compute import MEASURED_INTEGER_MAX_RATIO

    assert host.transport == "local"
    plan = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    art = compile_model(
        lenet, host, plan=plan, out_dir=tmp_path, options=ExportOptions(tflite_variants=("int8",))
    )
    m = art.manifest
    kept = {f["format"]: (n, f["variant"]) for n, f in m["files"].items()}
    assert len(m["files"]) == 2 and set(kept) == {"onnx", "tflite"}
    for fmt, (name, variant) in kept.items():
        c = m["compute"][fmt]
        ms = c["measured_ms"]
        assert ms["integer"] > 0 and ms["float"] > 0 and ms["rounds"] >= 5
        integer = ms["ratio"] < MEASURED_INTEGER_MAX_RATIO
        assert c["compute"] == ("integer" if integer else "float")
        assert (
            variant == c["variant"] == ({"onnx": "qdq", "tflite": "int8"}[fmt] if integer else "weight-only")
        )
        assert "on this machine" in c["reason"] and "timed on this machine" in c["basis"]
        assert c["predicted_ms"]["integer"] > 0 and c["predicted_ms"]["float"] > 0
        other = "weight-only" if integer else {"onnx": "qdq", "tflite": "int8"}[fmt]
        assert not (art.path / f"lenet5.{other}.{fmt}").exists(), other  # the slower file ...
        assert not (art.path / f"lenet5.{other}.recipe.json").exists()  # ... and its recipe
        assert (art.path / name).is_file()
    # the cost model alone: nothing timed
    pred = compile_model(
        lenet,
        host,
        plan=plan,
        out_dir=tmp_path,
        options=ExportOptions(tflite_variants=("int8",), measure_compute=False),
    )
    assert all(c["measured_ms"] is None for c in pred.manifest["compute"].values())
    # a remote target is never timed here
    rpi = compile_model(
        lenet,
        load_profile("rpi4"),
        plan=plan,
        out_dir=tmp_path,
        options=ExportOptions(tflite_variants=("int8",)),
    )
    assert all(c["measured_ms"] is None for c in rpi.manifest["compute"].values())


def test_a_local_target_that_cannot_time_keeps_the_predicted_file(
    lenet, host, lenet_graph, tmp_path, monkeypatch
):
    """If the two files cannot be timed here, the predicted file is kept and the reason says so."""
    import edge_compress.export.compute as compute_mod

    def broken(*a, **k):
        raise RuntimeError("no timer here")

    monkeypatch.setattr(compute_mod, "measure_here", broken)
    plan = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    art = compile_model(lenet, host, plan=plan, out_dir=tmp_path, formats=("onnx",))
    c = art.manifest["compute"]["onnx"]
    assert c["measured_ms"] is None and "not timed here" in c["reason"] and "no timer here" in c["reason"]
    predicted = choose("auto", "onnx", host, lenet_graph, plan)
    assert c["compute"] == predicted.compute
    assert [p.name for p in art.path.glob("*.onnx")] == [f"lenet5.{c['variant']}.onnx"]
