"""Physical pruning: smaller modules, identical outputs for zeroed channels, coupled layers right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.graph import extract_graph
from edge_compress.plan import CompressionPlan
from edge_compress.prune.apply import (
    apply_pruning,
    keep_from_plan,
    mask_channels,
    plan_with_keep,
    predicted_flops_ratio,
    prune_model,
)
from edge_compress.prune.cost import FlopsModel
from edge_compress.zoo import build_model


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(name).eval()
    with torch.no_grad():  # realistic BN statistics, so that a stale slice would show up
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    shape = (4, 1, 40) if name == "conv1d" else (4, 1, 32, 32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return m, x, extract_graph(m, x[:1])


def _random_keep(fm: FlopsModel, seed: int = 1) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: np.sort(rng.choice(g.channels, max(1, g.channels // 2), replace=False)) for g in fm.groups}


@pytest.mark.parametrize("name", ["lenet5", "conv1d", "resnet", "mobilenetv2", "inception"])
def test_pruning_zeroed_channels_changes_nothing(name):
    m, x, g = _model(name)
    fm = FlopsModel.from_graph(g, m)
    keep = _random_keep(fm)
    drop = {gid: np.setdiff1d(np.arange(fm.size[gid]), k) for gid, k in keep.items()}
    masked = mask_channels(m, g, drop)  # dropped channels output exactly zero
    res = apply_pruning(masked, g, keep)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), masked(x), rtol=0, atol=1e-5)
    assert res.params < res.params_before
    # the pruned graph is consistent with the prediction from the original graph
    g2 = extract_graph(res.model, x[:1])
    assert res.flops_ratio == pytest.approx(g2.total_macs / g.total_macs)
    assert res.flops_ratio == pytest.approx(fm.ratio({k: len(v) for k, v in keep.items()}), rel=1e-9)
    assert res.flops_ratio == pytest.approx(predicted_flops_ratio(g, keep, m), rel=1e-9)
    assert [li.name for li in g2.layers] == [li.name for li in g.layers]


def test_original_model_is_not_modified():
    m, x, g = _model("resnet")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    prune_model(m, g, {"stem": [0, 1, 2]})
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_resnet_residual_group_shares_one_keep_list():
    m, x, g = _model("resnet")
    keep = [1, 4, 5, 9, 15]
    p = prune_model(m, g, {"layer1.conv2": keep})  # a producer name selects the tied group
    assert p.stem.out_channels == 5 and p.layer1.conv2.out_channels == 5
    assert p.stem_bn.num_features == 5 and p.layer1.bn2.num_features == 5
    for consumer in (p.layer1.conv1, p.layer2.conv1, p.layer2.shortcut[0]):
        assert consumer.in_channels == 5
    torch.testing.assert_close(p.stem.weight, m.stem.weight[keep])
    torch.testing.assert_close(p.layer2.conv1.weight, m.layer2.conv1.weight[:, keep])
    torch.testing.assert_close(p.layer1.bn2.running_var, m.layer1.bn2.running_var[keep])
    assert p(x).shape == (4, 10)
    g2 = extract_graph(p, x[:1])
    assert g2.group_of("stem").channels == 5 and g2.group_of("stem").producers == ["stem", "layer1.conv2"]


def test_mobilenet_depthwise_passthrough_loses_channels_and_groups():
    m, x, g = _model("mobilenetv2")
    keep = list(range(0, 64, 3))
    p = prune_model(m, g, {"block2.expand": keep})
    dw = p.block2.dw
    assert dw.in_channels == dw.out_channels == dw.groups == len(keep)
    assert dw.weight.shape == (len(keep), 1, 3, 3)
    assert p.block2.bn1.num_features == p.block2.bn2.num_features == len(keep)
    assert p.block2.project.in_channels == len(keep)
    torch.testing.assert_close(dw.weight, m.block2.dw.weight[keep])
    assert p(x).shape == (4, 10)
    g2 = extract_graph(p, x[:1])
    assert g2.layer("block2.dw").kind == "depthwise_conv"
    assert g2.group_of("block2.expand").passthrough == ["block2.dw"]


def test_inception_concat_offsets():
    m, x, g = _model("inception")
    grp = g.group_of("inc1.b3")
    assert {c.offset for c in grp.consumers} == {16}  # behind inc1.b1's 16 channels in the concat
    keep = [0, 5, 6, 31]
    drop = {grp.id: np.setdiff1d(np.arange(32), keep)}
    masked = mask_channels(m, g, drop)
    p = prune_model(masked, g, {grp.id: keep})
    for name in ("b1", "b3_reduce", "b5_reduce", "bp"):
        conv = getattr(p.inc2, name)
        assert conv.in_channels == 80 - 28
        torch.testing.assert_close(
            conv.weight[:, 16:20], getattr(m.inc2, name).weight[:, [16 + k for k in keep]]
        )
        torch.testing.assert_close(conv.weight[:, :16], getattr(m.inc2, name).weight[:, :16])
    with torch.no_grad():
        torch.testing.assert_close(p(x), masked(x), rtol=0, atol=1e-5)


def test_linear_after_flatten_loses_whole_feature_blocks(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    keep = [0, 3, 7]
    p = prune_model(lenet.model, g, {"c3": keep})
    assert p.c3.out_channels == 3 and p.f5.in_features == 3 * 25
    cols = [c * 25 + s for c in keep for s in range(25)]
    torch.testing.assert_close(p.f5.weight, lenet.model.f5.weight[:, cols])


def test_unprunable_group_left_untouched_and_reported():
    m, x, g = _model("lenet5")
    res = apply_pruning(m, g, {"out": [0, 1], "f6": [0, 1, 2]})
    assert "out" in res.skipped and "output" in res.skipped["out"]
    assert res.model.out.out_features == 10 and res.model.f6.out_features == 3


def test_untraceable_model_is_reported_not_pruned():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3)
            self.b = nn.Conv2d(8, 4, 3)

        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                y = y * 2
            return self.b(y).mean((2, 3))

    m = Dynamic().eval()
    g = extract_graph(m, torch.randn(1, 1, 8, 8))
    res = apply_pruning(m, g, {"a": [0, 1]})
    assert "a" in res.skipped and "torch.fx" in res.skipped["a"]
    assert res.model.a.out_channels == 8
    fm = FlopsModel.from_graph(g, m)
    with pytest.raises(UserError, match="no channel group of this model can be pruned"):
        fm.check_budget(0.5)


@pytest.mark.parametrize(
    ("keep", "msg"),
    [
        ({"nope": [0]}, "not a layer producing"),
        ({"c1": []}, "at least one channel"),
        ({"c1": [0, 6]}, "out of range"),
        ({999: [0]}, "no channel group with id 999"),
    ],
)
def test_bad_keep_is_a_user_error(keep, msg):
    m, x, g = _model("lenet5")
    with pytest.raises(UserError, match=msg):
        prune_model(m, g, keep)


def test_plan_round_trip():
    m, x, g = _model("resnet")
    plan = CompressionPlan.uniform(g, "resnet", "host")
    keep = {"stem": [0, 2, 4, 6], "layer2.conv1": list(range(16))}
    p2 = plan_with_keep(plan, g, keep, model=m)
    assert p2.layers["stem"].keep_channels == p2.layers["layer1.conv2"].keep_channels == [0, 2, 4, 6]
    assert plan.layers["stem"].keep_channels is None  # the input plan is not modified
    back = keep_from_plan(CompressionPlan.from_json(p2.to_json()), g)
    assert back == {g.group_of("stem").id: [0, 2, 4, 6], g.group_of("layer2.conv1").id: list(range(16))}
    assert p2.predicted["flops_ratio"] == pytest.approx(apply_pruning(m, g, back).flops_ratio)
    p2.layers["layer1.conv2"].keep_channels = [0, 1, 2, 3]
    with pytest.raises(UserError, match="tied by a residual add"):
        keep_from_plan(p2, g)
