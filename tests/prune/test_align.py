"""Kept channel counts in multiples of the profile's channel multiple, chosen to land on the FLOPs budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.errors import BudgetError
from edge_compress.graph import extract_graph
from edge_compress.prune.cost import (
    FlopsModel,
    _prefix_values,
    align_keep,
    allowed_counts,
    choose_counts,
    group_label,
    min_keep_counts,
)
from edge_compress.prune.group_lasso import GroupLassoConfig, group_lasso_prune
from edge_compress.prune.l1 import l1_prune
from edge_compress.zoo import build_model


def _within(ratio: float, budget: float, tol: float = 0.05) -> bool:
    return abs(ratio / budget - 1) <= tol


def _check_counts(fm: FlopsModel, keep: dict[int, list[int]], multiple: int, frac: float = 0.25) -> None:
    floor = min_keep_counts(fm, frac)
    for g in fm.gid:
        n = len(keep.get(g, range(fm.size[g])))
        assert n in allowed_counts(fm.size[g], floor[g], multiple), (g, n, fm.size[g])


def test_allowed_counts():
    assert allowed_counts(16, 4, 8) == [8, 16]
    assert allowed_counts(6, 2, 8) == [2, 3, 4, 5, 6]  # narrower than one block: any count
    assert allowed_counts(84, 21, 8) == [24, 32, 40, 48, 56, 64, 72, 80, 84]  # not a multiple: also all of it
    assert allowed_counts(36, 9, 8) == [16, 24, 32, 36]  # the minimum per group is respected
    assert allowed_counts(10, 3, 1) == list(range(3, 11))


@pytest.mark.parametrize("name", ["lenet5", "resnet", "mobilenetv2", "inception"])
def test_flops_polynomial_is_the_flops_model(name):
    torch.manual_seed(0)
    m = build_model(name).eval()
    g = extract_graph(m, torch.zeros(1, 1, 32, 32))
    fm = FlopsModel.from_graph(g, m)
    c, lin, quad = fm.polynomial()
    assert any(a != b for a, b in quad)  # producer x consumer cross terms exist
    rng = np.random.default_rng(0)
    for _ in range(10):
        n = {k: int(rng.integers(1, fm.size[k] + 1)) for k in fm.gid}
        poly = (
            c
            + sum(lin.get(k, 0.0) * v for k, v in n.items())
            + sum(q * n[a] * n[b] for (a, b), q in quad.items())
        )
        assert poly == pytest.approx(fm.macs(n), rel=1e-12)


def test_integer_program_matches_brute_force(lenet):
    """On LeNet-5 (4 groups) every combination of allowed counts can be enumerated: the program's
    choice is the best one inside the band."""
    g = extract_graph(lenet.model, lenet.example_input())
    fm = FlopsModel.from_graph(g, lenet.model)
    floor = min_keep_counts(fm, 0.25)
    allowed = {k: allowed_counts(fm.size[k], floor[k], 8) for k in fm.gid}
    rng = np.random.default_rng(3)
    value = {}
    for k in fm.gid:
        keep = rng.random(fm.size[k]) < 0.6
        value[k] = _prefix_values(keep, rng.random(fm.size[k]), rng.random(fm.size[k]))[1]
    combos = [dict(zip(fm.gid, c, strict=True)) for c in itertools.product(*(allowed[k] for k in fm.gid))]
    ratios = [fm.ratio(n) for n in combos]
    for budget in (0.75, 0.5, 0.35):
        lo, hi = 0.95 * budget, budget
        got = choose_counts(fm, allowed, value, lo, hi)
        best, best_v = None, -np.inf
        for n, r in zip(combos, ratios, strict=True):
            if lo <= r <= hi:
                v = sum(value[k][n[k]] for k in fm.gid)
                if v > best_v:
                    best, best_v = n, v
        assert best is not None and got is not None
        assert sum(value[k][got[k]] for k in fm.gid) == pytest.approx(best_v, abs=1e-9)
        assert lo <= fm.ratio(got) <= hi


def test_lenet_at_half_the_flops_with_multiples_of_8(lenet):
    """c1 has 6 channels and c3 16: one c3 block of 8 is a third of the MACs, so rounding each
    group on its own misses the budget; the counts are chosen together."""
    g = extract_graph(lenet.model, lenet.example_input())
    fm = FlopsModel.from_graph(g, lenet.model)
    res = l1_prune(lenet.model, g, 0.5, channel_multiple=8)
    assert 0.5 * 0.95 <= res.flops_ratio <= 0.5
    _check_counts(fm, res.keep, 8)
    note = next(n for n in res.notes if "multiples of 8" in n)
    assert f"-> {res.flops_ratio:.3f} for budget 0.5" in note
    assert res.rounded and set(res.rounded) <= {group_label(x) for x in fm.groups}
    for label, (before, after) in res.rounded.items():
        assert before != after and f"{label} {before}->{after}" in note


@pytest.mark.slow
def test_group_lasso_on_lenet_with_multiples_of_8(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    fm = FlopsModel.from_graph(g, lenet.model)
    ds = lenet.dataset
    cfg = GroupLassoConfig(epochs=3, finetune_epochs=1, channel_multiple=8)
    res = group_lasso_prune(lenet.model, g, 0.5, ds.x_train, ds.y_train, cfg)
    assert 0.5 * 0.95 <= res.flops_ratio <= 0.5
    _check_counts(fm, res.keep, 8)
    assert any("integer program" in n for n in res.notes)
    assert lenet.evaluate(res.model) > 0.9


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class MobileBlock(nn.Module):
    """MobileNetV2-style: stem, two inverted residuals (one with a skip), head; widths that are not
    all multiples of 8 (12, 36, 20, 40)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, 1, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6())
        self.b1 = InvertedResidual(12, 36, 12, 1)
        self.b2 = InvertedResidual(12, 72, 20, 2)
        self.head = nn.Sequential(nn.Conv2d(20, 40, 1, bias=False), nn.BatchNorm2d(40), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        return self.fc(self.pool(self.head(self.b2(self.b1(self.stem(x))))).flatten(1))


@pytest.mark.parametrize("budget", [0.75, 0.5, 0.35])
def test_mobilenet_block_lands_on_the_budget(budget):
    torch.manual_seed(0)
    m = MobileBlock().eval()
    x = torch.randn(2, 1, 16, 16)
    g = extract_graph(m, x[:1])
    fm = FlopsModel.from_graph(g, m)
    assert (
        len(fm.groups) >= 4
    )  # stem + skip tied, the two expands (with their depthwise convs), b2's output, head
    res = l1_prune(m, g, budget, channel_multiple=8)
    assert _within(res.flops_ratio, budget)
    _check_counts(fm, res.keep, 8)
    assert res.flops_ratio == pytest.approx(extract_graph(res.model, x[:1]).total_macs / g.total_macs)
    with torch.no_grad():
        assert res.model(x).shape == (2, 10)


def test_zoo_mobilenetv2_aligned_within_5pct():
    torch.manual_seed(0)
    m = build_model("mobilenetv2").eval()
    g = extract_graph(m, torch.zeros(1, 1, 32, 32))
    fm = FlopsModel.from_graph(g, m)
    for budget in (0.75, 0.5, 0.35):
        res = l1_prune(m, g, budget, channel_multiple=8)
        assert res.keep and all(len(k) % 8 == 0 for k in res.keep.values())
        _check_counts(fm, res.keep, 8)
        assert budget * 0.95 <= res.flops_ratio <= budget


def test_coarse_multiple_falls_back_to_the_closest_with_a_note(lenet):
    """With 8-channel blocks LeNet-5 cannot land in [0.19, 0.2]: the closest choice is taken and said."""
    g = extract_graph(lenet.model, lenet.example_input())
    fm = FlopsModel.from_graph(g, lenet.model)
    floor = min_keep_counts(fm, 0.25)
    keep = {k: np.ones(fm.size[k], bool) for k in fm.gid}
    scores = {k: np.ones(fm.size[k]) for k in fm.gid}
    out, note, _ = align_keep(fm, keep, scores, 0.2, 8, 0.05, min_keep=floor)
    r = fm.ratio({k: int(v.sum()) for k, v in out.items()})
    assert "took the closest" in note and f"{r / 0.2 - 1:+.1%}" in note
    assert _within(r, 0.2) and not 0.19 <= r <= 0.2


def test_budget_below_the_smallest_aligned_network_is_a_budget_error(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    fm = FlopsModel.from_graph(g, lenet.model)
    floor = min_keep_counts(fm, 0.25)
    least = fm.ratio({k: allowed_counts(fm.size[k], floor[k], 8)[0] for k in fm.gid})
    budget = least * 0.9  # reachable with single channels, not with blocks of 8
    assert budget > fm.ratio(floor)
    fm.check_budget(budget, floor, 0.25)  # fine without the multiple
    with pytest.raises(BudgetError, match=rf"below {least:.4f}, the smallest network .* multiples of 8"):
        l1_prune(lenet.model, g, budget, channel_multiple=8)
    with pytest.raises(BudgetError, match="lower channel_multiple"):
        group_lasso_prune(
            lenet.model,
            g,
            budget,
            lenet.dataset.x_train,
            lenet.dataset.y_train,
            GroupLassoConfig(channel_multiple=8),
        )
    lo = fm.min_ratio()  # below even single channels: the existing error
    with pytest.raises(BudgetError, match="keeps one channel"):
        l1_prune(lenet.model, g, lo / 2, channel_multiple=8)
