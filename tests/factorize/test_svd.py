"""Truncated SVD: exact at full rank, two real layers, error falling with the rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.factorize.svd import factorize_layer, factorize_model, full_rank
from edge_compress.graph import extract_graph
from edge_compress.zoo import build_model


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


CASES = [
    (lambda: nn.Linear(40, 24), (5, 40), "svd"),
    (lambda: nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2)), (2, 6, 11, 13), "spatial"),
    (lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=1, bias=False), (2, 6, 11, 13), "spatial"),
    (
        lambda: nn.Conv2d(6, 10, (3, 3), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
        (2, 6, 11, 13),
        "spatial",
    ),
    (lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1), (2, 6, 11, 13), "channel"),
    (lambda: nn.Conv1d(4, 12, 5, stride=2, padding=2), (3, 4, 40), "channel"),
]


@pytest.mark.parametrize(("make", "shape", "how"), CASES)
def test_full_rank_reproduces_outputs(make, shape, how):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(shape)
    g = extract_graph(nn.Sequential(layer), x[:1])
    seq = factorize_layer(layer, full_rank(g.layers[0], how), how)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("make", "shape", "how"), CASES)
def test_error_falls_with_rank_and_params_shrink(make, shape, how):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(shape)
    li = extract_graph(nn.Sequential(layer), x[:1]).layers[0]
    full = full_rank(li, how)
    errs = []
    with torch.no_grad():
        ref = layer(x)
        for r in range(1, full + 1):
            errs.append(float((factorize_layer(layer, r, how)(x) - ref).pow(2).mean()))
    assert all(b <= a * (1 + 1e-6) + 1e-10 for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-9 < errs[0]
    assert _params(factorize_layer(layer, 1, how)) < _params(layer)


def test_spatial_and_channel_shapes():
    conv = nn.Conv2d(6, 10, (3, 5), padding=(1, 2))
    sp = factorize_layer(conv, 4, "spatial")
    assert list(sp._modules) == ["vertical", "horizontal"]
    assert sp.vertical.weight.shape == (4, 6, 3, 1) and sp.horizontal.weight.shape == (10, 4, 1, 5)
    assert sp.vertical.bias is None and sp.horizontal.bias is not None
    ch = factorize_layer(conv, 4, "channel")
    assert list(ch._modules) == ["basis", "combine"]
    assert ch.basis.weight.shape == (4, 6, 3, 5) and ch.combine.weight.shape == (10, 4, 1, 1)
    lin = factorize_layer(nn.Linear(30, 20), 7, "svd")
    assert list(lin._modules) == ["down", "up"]
    assert lin.down.weight.shape == (7, 30) and lin.up.weight.shape == (20, 7)
    c1 = factorize_layer(nn.Conv1d(4, 12, 5), 3, "channel")
    assert c1.basis.weight.shape == (3, 4, 5) and c1.combine.weight.shape == (12, 3, 1)


def test_factorize_model_gives_two_real_layers(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    x = torch.from_numpy(lenet.dataset.x_test[:8])
    full = factorize_model(
        lenet.model, g, {"c3": (full_rank(g.layer("c3"), "spatial"), "spatial"), "f5": 120}
    )
    with torch.no_grad():
        torch.testing.assert_close(full(x), lenet.model(x), rtol=1e-4, atol=1e-4)
    small = factorize_model(lenet.model, g, {"f5": 16, "c3": (8, "channel")})
    g2 = extract_graph(small, x[:1])
    names = [li.name for li in g2.layers]
    assert names == ["c1", "c3.basis", "c3.combine", "f5.down", "f5.up", "f6", "out"]
    assert g2.layer("f5.down").out_channels == 16 and g2.layer("c3.basis").out_channels == 8
    assert g2.total_weight_params < g.total_weight_params
    assert lenet.evaluate(small) > 0.5
    assert lenet.model.f5.in_features == 400  # the original is untouched


def test_bad_requests_are_user_errors():
    m = build_model("mobilenetv2").eval()
    g = extract_graph(m, torch.randn(1, 1, 32, 32))
    with pytest.raises(UserError, match="depthwise"):
        factorize_model(m, g, {"block1.dw": 2})
    with pytest.raises(UserError, match="outside 1..9"):
        factorize_model(m, g, {"stem": (100, "channel")})
    with pytest.raises(UserError, match="no Conv / Linear layer named"):
        factorize_model(m, g, {"nope": 2})
    with pytest.raises(UserError, match="Linear layer: use factorization 'svd'"):
        factorize_model(m, g, {"fc": (2, "spatial")})
