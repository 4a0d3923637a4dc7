"""Shared, module-scoped compiles for the export tests: each real compile is done once.

Plans are given explicitly (``plan=``) so the tests exercise the exporters, not the planner.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_compress.compiler import ExportOptions, compile_model
from edge_compress.graph import extract_graph
from edge_compress.modelspec import resolve_model
from edge_compress.plan import CompressionPlan
from edge_compress.profiles import load_profile

MIXED_INT4 = ("c1", "c3", "f5")  # c1 becomes a DEPTHWISE_CONV_2D in TFLite (1 input channel): int4 falls back
# the integer-compute files (QDQ ONNX, static int8 TFLite): on ``host`` the default (compute "auto")
# picks float compute for LeNet-5, see test_compute.py; ONNX int8 weights stored exactly (uint8, zero
# point 128) rather than on the host's fast 7-bit grid (test_kernel_fit.py)
INTEGER = ExportOptions(compute="integer", onnx_int8_weights="uint8")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # trained zoo weights and data are shared with the developer's cache; exports go there too
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def lenet():
    return resolve_model("lenet5")


@pytest.fixture(scope="session")
def host():
    return load_profile("host")


@pytest.fixture(scope="session")
def lenet_graph(lenet):
    return extract_graph(lenet.model, lenet.example_input(2))


def mixed_plan(graph, int4=MIXED_INT4) -> CompressionPlan:
    plan = CompressionPlan.uniform(graph, "lenet5", "host", 8, 8)
    for name in int4:
        plan.layers[name].weight_bits = 4
    plan.method = "test-mixed"
    return plan


@pytest.fixture(scope="session")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def art_int8(lenet, host, lenet_graph, out_root):
    plan = CompressionPlan.uniform(lenet_graph, "lenet5", "host", 8, 8)
    return compile_model(lenet, host, plan=plan, out_dir=out_root, options=INTEGER)


@pytest.fixture(scope="session")
def art_mixed(lenet, host, lenet_graph, out_root):
    return compile_model(
        lenet,
        host,
        plan=mixed_plan(lenet_graph),
        out_dir=out_root,
        options=ExportOptions(tflite_variants=("int8",), compute="integer", onnx_int8_weights="uint8"),
    )
