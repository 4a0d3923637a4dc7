"""The file-size model: exact parameter bytes, the fitted container, and byte budgets on files."""

from __future__ import annotations

import pytest

from edge_compress.compiler import biased_layers
from edge_compress.errors import BudgetError
from edge_compress.export import size
from edge_compress.plan import CompressionPlan
from edge_compress.quant.fakequant import fold_batchnorm

FILES = [("onnx", "qdq"), ("tflite", "int8")]


def test_coefficients_are_fitted_for_every_exported_variant():
    for fmt, variant in (*FILES, ("tflite", "int8-full"), ("onnx", "weight-only"), ("tflite", "weight-only")):
        coef = size.coefficients(fmt, variant)
        assert set(coef) == {"q_channels", "layers", "const"}, (fmt, variant)
        assert all(v >= 0 for v in coef.values())


def test_payload_counts_packed_int4_and_per_channel_parameters(lenet_graph):
    u8 = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    u4 = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 4, 8)
    w = lenet_graph.total_weight_params
    for fmt in ("onnx", "tflite"):
        # halving every weight's bits saves exactly half the weight bytes (rounded up per layer);
        # ONNX zero points are stored at the weight's width too
        saved = size.payload_bytes(u8, lenet_graph, fmt) - size.payload_bytes(u4, lenet_graph, fmt)
        zp = sum(li.out_channels for li in lenet_graph.layers) // 2 if fmt == "onnx" else 0
        assert abs(saved - (w // 2 + zp)) <= len(lenet_graph.layers), fmt
    # TFLite's schema stores a float32 scale and an int64 zero point per channel: 12 bytes
    one = lenet_graph.layers[0]
    p = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    assert size.layer_payload(p, one, "tflite", False) == one.weight_params + 12 * one.out_channels


def test_weight_only_payload_has_no_activation_or_bias_quantization(lenet_graph):
    u8 = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    one = lenet_graph.layers[0]
    n, c = one.weight_params, one.out_channels
    # ONNX: int8 weights and a float32 scale per channel (no zero point); TFLite: the schema's float32
    # scale and int64 zero point per channel; float32 biases in both
    assert size.layer_payload(u8, one, "onnx", True, "weight-only") == n + 4 * c + 4 * c
    assert size.layer_payload(u8, one, "tflite", True, "weight-only") == n + 12 * c + 4 * c
    assert size.layer_payload(u8, one, "tflite", True, "int8") == n + 12 * c + 16 * c
    assert size.key("onnx", "weight-only") == "onnx/weight-only" and size.key("onnx", "qdq") == "onnx/qdq"


def test_planned_bytes_predict_the_exported_files(art_int8, art_mixed):
    for art in (art_int8, art_mixed):
        for name, f in art.manifest["files"].items():
            ratio = f["bytes"] / f["planned_bytes"]
            assert 0.9 <= ratio <= 1.1, (name, f["bytes"], f["planned_bytes"])


@pytest.fixture(scope="module")
def calib(lenet):
    return lenet.calibration(64)


def _file_bytes(plan, graph, folded):
    b = biased_layers(graph, folded)
    return {f"{f}/{v}": size.predict_file_bytes(plan, graph, f, v, biased=b) for f, v in FILES}


def test_byte_budget_bounds_every_file(lenet, host, lenet_graph, calib):
    from edge_compress.quant.planner import plan_model

    folded = fold_batchnorm(lenet.model)
    u8 = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    u4 = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 4, 8)
    hi = max(_file_bytes(u8, lenet_graph, folded).values())
    lo = max(_file_bytes(u4, lenet_graph, folded).values())
    budget = (lo + hi) / 2
    kw = dict(method="noise", model_name="lenet5", budget={"model_bytes": budget})
    plan = plan_model(lenet.model, lenet_graph, host, calib, file_formats=FILES, **kw)
    files = _file_bytes(plan, lenet_graph, folded)
    assert max(files.values()) <= budget, files
    assert any(4 == d.weight_bits for d in plan.layers.values())  # the budget forced some int4
    # without the files the same budget bounds the parameters only: the files may exceed it
    loose = plan_model(lenet.model, lenet_graph, host, calib, **kw)
    assert loose.model_bytes(lenet_graph) <= budget
    assert max(_file_bytes(loose, lenet_graph, folded).values()) >= max(files.values())

    with pytest.raises(BudgetError) as e:
        plan_model(
            lenet.model,
            lenet_graph,
            host,
            calib,
            file_formats=FILES,
            **{**kw, "budget": {"model_bytes": lo - 100}},
        )
    msg = str(e.value)
    # the message speaks of the user's budget and of a file's smallest achievable size
    assert f"={lo - 100:,.0f} is below the smallest plan" in msg, msg
    assert "model_bytes[" in msg


def test_code_fingerprint_follows_the_code_that_shapes_artifacts(tmp_path) -> None:
    """Editing the exporter changes the fingerprint in every artifact's key; editing the command
    line or the result store does not (they cannot change a file's bytes)."""
    import shutil
    from pathlib import Path

    import edge_compress
    from edge_compress.artifact import code_fingerprint, package_fingerprint

    pkg = tmp_path / "edge_compress"
    shutil.copytree(Path(edge_compress.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    base = package_fingerprint(pkg)
    assert base == code_fingerprint() and len(base) == 16
    (pkg / "cli" / "__init__.py").write_text((pkg / "cli" / "__init__.py").read_text() + "\n# note\n")
    (pkg / "store.py").write_text((pkg / "store.py").read_text() + "\n# note\n")
    assert package_fingerprint(pkg) == base
    onnx_py = pkg / "export" / "onnx.py"
    onnx_py.write_text(onnx_py.read_text() + "\n# a fix\n")
    assert package_fingerprint(pkg) != base
