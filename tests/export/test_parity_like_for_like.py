"""Parity compares like for like: int8 ONNX weights re-stored as uint8 (hosts whose uint8 x int8
kernels saturate) and integer TFLite outputs against the simulation on the same output grid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_compress.export import parity

OUT_SCALE = 2.0


def _qdq_conv(w_int8: np.ndarray, w_scale: np.ndarray, x_scale: float, x_zp: int) -> onnx.ModelProto:
    """input -> Q/DQ (uint8) -> Conv with int8 per-channel weights (DequantizeLinear) -> Q/DQ (uint8,
    scale 2, zero point 0) -> output: onnxruntime fuses it into an integer QLinearConv."""
    cout, cin, kh, kw = w_int8.shape
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
        numpy_helper.from_array(np.array(x_zp, np.uint8), "xz"),
        numpy_helper.from_array(w_int8, "w"),
        numpy_helper.from_array(w_scale.astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
        numpy_helper.from_array(np.array(OUT_SCALE, np.float32), "ys"),
        numpy_helper.from_array(np.array(0, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, cin, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:  # DequantizeLinear + float Conv: the QDQ graph's exact meaning
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_uint8_weights_keep_the_values_and_run_exactly():
    rng = np.random.default_rng(0)
    # large weights and inputs near the top of the uint8 grid: pairs of products overflow int16
    w = rng.choice([-127, -120, 120, 127], size=(8, 16, 3, 3)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, size=8)
    x = rng.uniform(4.5, 5.1, size=(4, 16, 6, 6)).astype(np.float32)  # uint8 values 225 to 255
    model = _qdq_conv(w, scale, 0.02, 0)
    exact = _run(model, x, optimize=False)
    changed = parity.uint8_weights(model)
    assert changed == 1
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["w"].dtype == np.uint8 and inits["wz"].dtype == np.uint8
    assert np.array_equal(inits["w"].astype(np.int16) - inits["wz"][:, None, None, None], w)
    # fused uint8 x uint8 integer kernels; the int8 file as stored is off by up to 55 output steps on
    # an x86 host without VNNI (saturated 16-bit sums)
    out = _run(model, x, optimize=True)
    assert np.abs(out - exact).max() <= OUT_SCALE  # one output step (rounding of the requantization)
    assert np.mean(out == exact) > 0.9
    assert parity.uint8_weights(model) == 0  # nothing int8 left: idempotent


def test_uint8_weights_adds_the_zero_point_when_omitted():
    w = np.arange(-64, 64, dtype=np.int8).reshape(2, 4, 4, 4)
    model = _qdq_conv(w, np.array([0.1, 0.2]), 0.05, 10)
    node = next(n for n in model.graph.node if n.input[0] == "w")
    del node.input[2:]
    exact = _run(model, np.ones((1, 4, 6, 6), np.float32), optimize=False)
    assert parity.uint8_weights(model) == 1
    assert len(node.input) == 3
    out = _run(model, np.ones((1, 4, 6, 6), np.float32), optimize=True)
    assert np.abs(out - exact).max() <= OUT_SCALE


@pytest.mark.slow
@pytest.mark.tflite
def test_integer_output_is_compared_on_its_grid(art_int8):
    path = art_int8.file("tflite", "int8-full")
    runner = parity.TfliteRunner(path)
    assert runner.integer_output
    scale, zp = runner.out["quantization"]
    y = np.linspace(-40, 40, 101, dtype=np.float32).reshape(-1, 1)
    g = runner.onto_output_grid(y)
    steps = g / scale + zp
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    assert np.all(np.abs(g - y)[(steps > -128) & (steps < 127)] <= scale / 2 + 1e-6)
    note = art_int8.manifest["parity"][path.name]["note"]
    assert "output grid" in note
    float_runner = parity.TfliteRunner(art_int8.file("tflite", "int8"))
    assert not float_runner.integer_output
    assert float_runner.onto_output_grid(y) is y
