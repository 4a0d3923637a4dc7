"""Channel dependencies of layer patterns beyond the zoo: depthwise convs with a channel multiplier,
batch norms after a concatenation, grouped convolutions. Each is either pruned exactly (the pruned
module computes what the masked original computes) or refused with the reason, never broken."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.graph import extract_graph, group_slices
from edge_compress.prune.apply import apply_pruning, mask_channels, predicted_flops_ratio
from edge_compress.prune.channels import ChannelParams
from edge_compress.prune.cost import FlopsModel
from edge_compress.prune.l1 import l1_prune


class DepthwiseMultiplier(nn.Module):
    """conv -> BN -> depthwise x3 (8 -> 24 channels) -> BN -> 1x1 conv -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 24, 3, padding=1, groups=8)
        self.bn_dw = nn.BatchNorm2d(24)
        self.pw = nn.Conv2d(24, 6, 1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_dw(self.dw(x)))
        return self.fc(self.flatten(torch.relu(self.pw(x))))


class ConcatBatchNorm(nn.Module):
    """Two convs concatenated (8 + 5 channels), one BN over the concat, a depthwise conv over it too."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(13)
        self.dw = nn.Conv2d(13, 13, 3, padding=1, groups=13)
        self.bn_dw = nn.BatchNorm2d(13)
        self.c = nn.Conv2d(13, 7, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        x = torch.relu(self.bn_dw(self.dw(x)))
        return self.fc(self.flatten(self.pool(torch.relu(self.c(x)))))


class Grouped(nn.Module):
    """A grouped convolution (groups=4, not depthwise) between two prunable-looking convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.c = nn.Conv2d(12, 6, 1)
        self.d = nn.Conv2d(6, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.g(torch.relu(self.a(x))))
        x = torch.relu(self.d(torch.relu(self.c(x))))
        return self.fc(self.flatten(self.pool(x)))


def _build(cls, seed: int = 0):
    torch.manual_seed(seed)
    m = cls().eval()
    with torch.no_grad():  # realistic BN statistics, so that a wrong slice would show up
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return m, x, extract_graph(m, x[:1])


def _half(fm: FlopsModel, seed: int = 1) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: np.sort(rng.choice(g.channels, max(1, g.channels // 2), replace=False)) for g in fm.groups}


@pytest.mark.parametrize("cls", [DepthwiseMultiplier, ConcatBatchNorm])
def test_pruned_module_equals_masked_original(cls):
    m, x, g = _build(cls)
    fm = FlopsModel.from_graph(g, m)
    keep = _half(fm)
    assert keep, fm.skipped
    drop = {gid: np.setdiff1d(np.arange(fm.size[gid]), k) for gid, k in keep.items()}
    masked = mask_channels(m, g, drop)
    res = apply_pruning(masked, g, keep)
    assert not res.skipped
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), masked(x), rtol=0, atol=1e-5)
        assert not torch.allclose(masked(x), m(x))  # the masking did remove something
    g2 = extract_graph(res.model, x[:1])
    assert res.flops_ratio == pytest.approx(g2.total_macs / g.total_macs)
    assert res.flops_ratio == pytest.approx(predicted_flops_ratio(g, keep, m), rel=1e-9)
    assert res.params < res.params_before


def test_depthwise_multiplier_keeps_whole_blocks():
    m, x, g = _build(DepthwiseMultiplier)
    grp = g.group_of("a")
    assert grp.prunable and grp.passthrough == ["dw"]
    slices = {(s.layer, s.role): s for s in group_slices(g, grp)}
    assert slices[("dw", "passthrough")].width == 3  # three output channels per input channel
    assert slices[("bn_dw", "batchnorm")].width == 3 and slices[("pw", "consumer")].width == 3
    keep = [1, 4, 6]
    p = apply_pruning(m, g, {"a": keep}).model
    assert (p.a.out_channels, p.bn_a.num_features) == (3, 3)
    assert (p.dw.in_channels, p.dw.out_channels, p.dw.groups) == (3, 9, 3)
    assert p.bn_dw.num_features == 9 and p.pw.in_channels == 9
    rows = [3 * c + k for c in keep for k in range(3)]
    torch.testing.assert_close(p.dw.weight, m.dw.weight[rows])
    torch.testing.assert_close(p.pw.weight, m.pw.weight[:, rows])
    torch.testing.assert_close(p.bn_dw.running_var, m.bn_dw.running_var[rows])


def test_batchnorm_after_concat_is_sliced_at_each_groups_offset():
    m, x, g = _build(ConcatBatchNorm)
    ga, gb = g.group_of("a"), g.group_of("b")
    assert ga.prunable and gb.prunable
    assert [(b.layer, b.offset) for b in gb.batchnorm_at] == [("bn", 8), ("bn_dw", 8)]
    p = apply_pruning(m, g, {"a": [0, 7], "b": [1, 2, 4]}).model
    kept = [0, 7, 9, 10, 12]  # a's channels 0 and 7, then b's 1, 2, 4 behind a's 8
    assert p.bn.num_features == p.dw.out_channels == p.c.in_channels == 5
    torch.testing.assert_close(p.bn.running_mean, m.bn.running_mean[kept])
    torch.testing.assert_close(p.bn_dw.weight, m.bn_dw.weight[kept])


def test_grouped_convolution_is_refused_with_the_reason_and_left_intact():
    m, x, g = _build(Grouped)
    why = g.unprunable()
    assert "grouped convolution 'g'" in why["a"] and "groups=4" in why["a"]
    assert "unequal width" in why["g"]
    assert g.group_of("c").prunable  # the layers behind it are unaffected
    res = apply_pruning(m, g, {"a": [0, 1, 2, 3], "g": list(range(6)), "c": [0, 2, 4]})
    assert set(res.skipped) == {"a", "g"}
    assert (res.model.a.out_channels, res.model.g.in_channels, res.model.g.out_channels) == (8, 8, 12)
    assert res.model.c.out_channels == 3 and res.model.d.in_channels == 3
    with torch.no_grad():
        assert res.model(x).shape == (6, 4)
    pruned = l1_prune(m, g, 0.9)  # budgets only touch the prunable groups
    assert pruned.model.g.groups == 4 and pruned.model.g.in_channels == 8
    assert "a" in pruned.skipped and pruned.flops_ratio <= 0.9


@pytest.mark.parametrize("cls", [DepthwiseMultiplier, ConcatBatchNorm])
def test_group_lasso_parameter_views_zero_exactly_what_is_removed(cls):
    """The penalty's per-channel vectors (offsets, multiplier blocks) cover every parameter of a channel:
    zeroing them gives a network that pruning leaves unchanged."""
    m, x, g = _build(cls)
    fm = FlopsModel.from_graph(g, m)
    work = copy.deepcopy(m)
    cp = ChannelParams(work, g, fm.groups)
    keep = {}
    for grp in fm.groups:
        factor = torch.ones(grp.channels)
        factor[::2] = 0
        cp.scale(grp.id, factor)
        norms = cp.norms()[grp.id]
        assert (norms[::2] == 0).all() and (norms[1::2] > 0).all()
        keep[grp.id] = np.arange(1, grp.channels, 2)
    res = apply_pruning(work, g, keep)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), work(x), rtol=0, atol=1e-5)


def test_depthwise_conv_reading_untracked_channels_is_not_pruned():
    class Reshaped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            y = y.reshape(y.shape[0], 8, 4, 4)  # untracked channel layout
            return self.c(self.dw(y)).mean((2, 3))

    m = Reshaped().eval()
    g = extract_graph(m, torch.randn(1, 3, 4, 4))
    assert "depthwise conv 'dw'" in g.unprunable()["dw"]
    res = apply_pruning(m, g, {"dw": [0, 1]})
    assert "dw" in res.skipped and res.model.dw.out_channels == 8 and res.model.c.in_channels == 8


def test_batchnorm_over_a_flattened_map_is_refused():
    class FlatBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.flatten = nn.Flatten()
            self.bn = nn.BatchNorm1d(4 * 16)
            self.fc = nn.Linear(4 * 16, 3)

        def forward(self, x):
            return self.fc(self.bn(self.flatten(self.a(x))))

    m = FlatBN().eval()
    g = extract_graph(m, torch.randn(1, 3, 4, 4))
    assert "batch norm 'bn' normalizes 64 features" in g.unprunable()["a"]
    res = apply_pruning(m, g, {"a": [0, 1]})
    assert "a" in res.skipped and res.model.bn.num_features == 64
