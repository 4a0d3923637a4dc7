"""Kernels read from an exported ONNX file match the kernels of the (graph, plan) it came from."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge_compress.costmodel import kernels_of
from edge_compress.costmodel_onnx import kernels_from_onnx

from .models import export, small_cnn

FIELDS = (
    "kind",
    "precision",
    "macs",
    "weight_params",
    "in_elems",
    "out_elems",
    "cin",
    "cout",
    "groups",
    "kernel_area",
    "out_spatial",
    "stride",
    "dims",
    "next_in_elems",
    "joins",
    "next_kind",
    "next_precision",
    "pooled_elems",
)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_kernels_from_onnx_match_the_plan(tmp_path: Path, bits: int | None) -> None:
    rng = random.Random(bits or 0)
    for i in range(3):
        model, x = small_cnn(rng, residual=i == 2)
        path, graph, plan = export(model, x, tmp_path / f"m{i}.onnx", bits)
        want = kernels_of(graph, plan)
        got = kernels_from_onnx(path)
        assert [k.kind for k in got] == [k.kind for k in want]
        for a, b in zip(got, want, strict=True):
            for f in FIELDS:
                assert getattr(a, f) == getattr(b, f), (i, b.name, f, getattr(a, f), getattr(b, f))
        if i == 2:  # the residual block's convolutions meet at the add
            assert sum(k.joins for k in got) >= 2


def test_a_file_without_layers_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    p = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    with pytest.raises(ValueError, match="no Conv / Gemm / MatMul"):
        kernels_from_onnx(p)


def test_weight_only_layers_count_as_the_float_kernels_onnxruntime_runs(tmp_path: Path) -> None:
    """A weight rebuilt from int8 / int4 storage by Cast -> Mul(scale) is folded by onnxruntime
    into a float weight at session creation: the layer is the float model's kernel."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(32, -1).max(1) / 127).astype(np.float32).reshape(32, 1, 1, 1)
    q = np.round(w / scale).astype(np.int8)

    def save(path: Path, weight_only: bool) -> Path:
        nodes, inits = [], []
        if weight_only:
            inits += [
                numpy_helper.from_array(q, "conv.weight.q"),
                numpy_helper.from_array(scale, "conv.weight.scale"),
            ]
            nodes += [
                helper.make_node("Cast", ["conv.weight.q"], ["conv.weight.cast"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["conv.weight.cast", "conv.weight.scale"], ["conv.weight"]),
            ]
        else:
            inits.append(numpy_helper.from_array(q.astype(np.float32) * scale, "conv.weight"))
        nodes += [
            helper.make_node("Conv", ["x", "conv.weight"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["y"]),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])],
            inits,
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
        return path

    float_ks = kernels_from_onnx(save(tmp_path / "float.onnx", False))
    wo_ks = kernels_from_onnx(save(tmp_path / "wo.onnx", True))
    assert [k.kind for k in wo_ks] == ["io", "conv"] and wo_ks[1].layer == "conv"
    assert wo_ks == float_ks and wo_ks[1].precision == "fp32"
