"""A local pool right after a layer is part of its kernel's cost, also when a global pool follows it.

Before ``pooled_elems``, a pool was inferred from the next kernel reading fewer elements; a max pool
followed by a global average pool looked like the global pool alone, and onnxruntime's uint8 max
pool (several microseconds per thousand elements here) went unpriced.
"""

from __future__ import annotations

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
