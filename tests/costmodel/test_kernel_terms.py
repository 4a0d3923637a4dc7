"""Regression terms for operators the runtime adds around a kernel.

A local pool right after a layer is part of its kernel's cost, also when a global pool follows it.
Before ``pooled_elems``, a pool was inferred from the next kernel reading fewer elements; a max pool
followed by a global average pool looked like the global pool alone, and onnxruntime's uint8 max
pool (several microseconds per thousand elements here) went unpriced.

A grouped convolution that the runtime runs group by group pays a dispatch per group; an 8-bit
convolution whose output leaves onnxruntime's NHWC chain pays a transpose.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_compress.costmodel import DEFAULT_LAUNCH_MS, Kernel, kernels_of
from edge_compress.costmodel_fit import kernel_terms
from edge_compress.costmodel_onnx import kernels_from_onnx
from edge_compress.graph import extract_graph

from .models import export


def _net(pool: object | None, cout: int = 8, size: int = 16):
    import torch
    from torch import nn

    mods: list[nn.Module] = [nn.Conv2d(1, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool is not None:
        mods.append(pool)
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cout, 10)]
    torch.manual_seed(0)
    return nn.Sequential(*mods).eval(), torch.zeros(1, 1, size, size)


def test_the_graph_records_a_local_pool_but_not_a_global_one() -> None:
    from torch import nn

    model, x = _net(nn.MaxPool2d(2))
    g = extract_graph(model, x)
    assert g.layer("0").pooled_elems == 8 * 8 * 8  # 8 channels, 16x16 -> 8x8
    assert g.layer("6").pooled_elems == 0  # the linear head
    model, x = _net(None)  # only the global pool
    assert extract_graph(model, x).layer("0").pooled_elems == 0
    model, x = _net(nn.AdaptiveAvgPool2d(4))  # adaptive, but to 4x4: a local pool
    assert extract_graph(model, x).layer("0").pooled_elems == 8 * 4 * 4


def test_pool_then_global_pool_prices_both(host) -> None:
    from torch import nn

    model, x = _net(nn.MaxPool2d(2))
    conv = kernels_of(extract_graph(model, x))[1]
    assert conv.pooled_elems == 8 * 8 * 8 and conv.next_in_elems == 8
    t = kernel_terms(conv, host)
    assert t["pool"] > 0 and t["pool_launch"] == DEFAULT_LAUNCH_MS
    assert t["gap"] == pytest.approx(t["pool"] / 4)  # the global pool reads the pooled map
    assert t["gap_launch"] == DEFAULT_LAUNCH_MS

    model, x = _net(None)
    conv = kernels_of(extract_graph(model, x))[1]
    t = kernel_terms(conv, host)
    assert t["pool"] == 0 and t["pool_launch"] == 0
    assert t["gap"] == pytest.approx(conv.out_elems * 4.0 / (host.memory.bandwidth_gb_s * 1e6))


def test_kernels_stored_without_pool_info_still_infer_a_pool(host) -> None:
    """Observations written before ``pooled_elems``: a next kernel reading a quarter of the output
    (not a global pool) still stands for a pool."""
    k = Kernel("c", "c", "conv", "int8", 9216, 72, 72.0, 256, 2048, 1, 8, 1, 9, 256, 1, 2, 512)
    assert k.pooled_elems == 0
    t = kernel_terms(k, host)
    assert t["pool"] > 0 and t["gap"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_onnx_files_give_the_same_pooled_elements(tmp_path: Path, bits: int | None) -> None:
    from torch import nn

    for i, pool in enumerate([nn.MaxPool2d(2), nn.AvgPool2d(2), None]):
        model, x = _net(pool, cout=12, size=24)
        path, graph, plan = export(model, x, tmp_path / f"p{i}.onnx", bits)
        want = [k.pooled_elems for k in kernels_of(graph, plan)]
        assert [k.pooled_elems for k in kernels_from_onnx(path)] == want
        assert want[1] == (12 * 12 * 12 if pool is not None else 0)


def _conv(prec: str, groups: int = 1, **kw: object) -> Kernel:
    """A 3x3 convolution, 32 -> 32 channels on an 8x8 map, read by an ``prec`` convolution."""
    c, sp, cg = 32, 64, 32 // groups
    kind = "depthwise_conv" if groups > 1 else "conv"
    k = Kernel(
        "c",
        "c",
        kind,
        prec,
        sp * c * cg * 9,
        c * cg * 9,
        c * cg * 9.0,
        c * sp,
        c * sp,
        c,
        c,
        groups,
        9,
        sp,
        1,
        2,
    )
    return replace(k, **{"next_in_elems": c * sp, "next_kind": "conv", "next_precision": prec, **kw})


def test_a_grouped_convolution_pays_a_dispatch_per_group(host) -> None:
    assert kernel_terms(_conv("fp32", groups=32), host)["group_launch"] == pytest.approx(
        32 * DEFAULT_LAUNCH_MS
    )
    assert kernel_terms(_conv("fp32"), host)["group_launch"] == 0


def test_an_int8_convolution_leaving_the_nhwc_chain_pays_a_transpose(host) -> None:
    def layout(k: Kernel) -> float:
        return kernel_terms(k, host)["layout_launch"]

    assert layout(_conv("int8")) == 0  # another int8 convolution reads it
    assert layout(_conv("int8", next_kind="linear")) == DEFAULT_LAUNCH_MS
    assert layout(_conv("int8", next_kind="", next_precision="")) == DEFAULT_LAUNCH_MS
    assert layout(_conv("int8", next_precision="int4")) == DEFAULT_LAUNCH_MS
    assert layout(_conv("int8", joins=True)) == DEFAULT_LAUNCH_MS
    assert layout(_conv("int8", pooled_elems=32 * 16)) == DEFAULT_LAUNCH_MS
    assert layout(_conv("fp32", next_kind="linear")) == 0  # float convolutions stay NCHW(c)
    assert layout(_conv("int4", next_kind="linear")) == 0  # 4-bit weights run as float convolutions
