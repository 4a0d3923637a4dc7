"""A 1-D CNN (MNIST-1D): litert-torch lowers Conv1d to 2-D convolutions; both files must still map
every planned layer and agree with the simulation."""

from __future__ import annotations

import pytest

from edge_compress.compiler import ExportOptions, compile_model
from edge_compress.graph import extract_graph
from edge_compress.modelspec import resolve_model
from edge_compress.plan import CompressionPlan

pytestmark = [pytest.mark.slow, pytest.mark.tflite]


def test_conv1d_exports_and_agrees(host, tmp_path):
    spec = resolve_model("conv1d")
    graph = extract_graph(spec.model, spec.example_input(2))
    plan = CompressionPlan.uniform(graph, "conv1d", "host", 8, 8)
    plan.layers["conv2"].weight_bits = 4  # a mixed plan on a 1-D model
    art = compile_model(
        spec,
        host,
        plan=plan,
        out_dir=tmp_path,
        options=ExportOptions(tflite_variants=("int8",), compute="integer"),
    )
    m = art.manifest
    assert set(m["files"]) == {"conv1d.qdq.onnx", "conv1d.int8.tflite"}
    for name, rep in m["parity"].items():
        assert rep["agreement"] >= 0.99, (name, rep)
        # MNIST-1D has many near-ties: the runtimes' int32 bias rounding and requantization shift a few
        # activations by one step, which flips a few of the 1000 test predictions either way
        assert abs(rep["runtime_accuracy"] - rep["simulated_accuracy"]) <= 0.01
    tfl = m["layers"]["conv1d.int8.tflite"]
    assert tfl["conv2"]["weight_bits"] == 4 and "CONV_2D" in tfl["conv2"]["op"]
    assert set(tfl) == {"conv1", "conv2", "conv3", "fc"}


def test_conv1d_int4_int8_full_agrees_on_its_output_grid(host, tmp_path):
    """All-int4 weights (what alpha=0 plans) in the full-integer variant: its int8 logits tie where
    the float logits of the simulation differ by less than an output step; argmax then takes the
    first class. The simulation of that file has the same output grid (0.984 agreement without it)."""
    spec = resolve_model("conv1d")
    graph = extract_graph(spec.model, spec.example_input(2))
    plan = CompressionPlan.uniform(graph, "conv1d", "host", 4, 8)
    art = compile_model(
        spec,
        host,
        plan=plan,
        formats=("tflite",),
        out_dir=tmp_path,
        parity_gate=False,
        options=ExportOptions(tflite_variants=("int8-full",)),
    )
    m = art.manifest
    rep = m["parity"]["conv1d.int8-full.tflite"]
    assert m["io"]["conv1d.int8-full.tflite"]["output"]["dtype"] == "int8"
    assert "output grid" in rep["note"]
    assert rep["agreement"] >= 0.99, rep
    assert abs(rep["runtime_accuracy"] - rep["simulated_accuracy"]) <= 0.01, rep  # near-ties, as above
