"""Group lasso with a FLOPs Lagrangian, and the one-shot L1 baseline, on the real LeNet-5 / digits."""

from __future__ import annotations

import numpy as np
import pytest

from edge_compress.errors import BudgetError, UserError
from edge_compress.graph import extract_graph
from edge_compress.prune.channels import ChannelParams
from edge_compress.prune.cost import FlopsModel
from edge_compress.prune.group_lasso import GroupLassoConfig, group_lasso_prune
from edge_compress.prune.l1 import l1_prune


@pytest.mark.slow
def test_group_lasso_lands_within_5pct_of_the_budget(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    ds = lenet.dataset
    budget = 0.35
    cfg = GroupLassoConfig(epochs=6, finetune_epochs=2)
    res = group_lasso_prune(
        lenet.model, g, budget, ds.x_train, ds.y_train, cfg, x_val=ds.x_val, y_val=ds.y_val
    )
    assert budget * 0.95 <= res.flops_ratio <= budget
    assert res.params < res.params_before
    assert 1 <= len(res.trajectory) <= 6
    rows = res.trajectory
    assert {"loss", "flops_ratio", "multiplier", "live_channels", "val_acc"} <= set(rows[-1])
    # the multiplier rose while the predicted FLOPs were above the budget, and they came down
    assert (
        rows[-1]["multiplier"] > cfg.mu0
        and rows[-1]["flops_ratio"] < rows[0]["flops_ratio"]
        or len(rows) == 1
    )
    assert lenet.evaluate(res.model) > 0.9
    assert "out" in res.skipped  # the output layer is reported, not pruned


def test_proximal_step_reaches_exact_zeros(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    fm = FlopsModel.from_graph(g, lenet.model)
    import copy

    m = copy.deepcopy(lenet.model)
    cp = ChannelParams(m, g, fm.groups, include_consumers=True)
    before = cp.norms()
    gid = g.group_of("c3").id
    thr = float(np.median(before[gid].numpy()))
    after = cp.prox({gid: thr})[gid].numpy()
    small = before[gid].numpy() <= thr
    assert small.any() and (after[small] == 0).all()
    assert (m.c3.weight.detach()[small] == 0).all() and (
        m.f5.weight.detach().reshape(-1, 16, 25)[:, small] == 0
    ).all()
    np.testing.assert_allclose(after[~small], before[gid].numpy()[~small] - thr, rtol=1e-4)


def test_group_lasso_without_training_data_is_a_user_error(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    with pytest.raises(UserError, match="needs training data"):
        group_lasso_prune(lenet.model, g, 0.5, None, None)


def test_impossible_budget_names_the_minimum(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    lo = FlopsModel.from_graph(g, lenet.model).min_ratio()
    with pytest.raises(
        BudgetError, match=rf"below the smallest network .* {lo:.4f} of the original MACs"
    ) as e:
        l1_prune(lenet.model, g, lo / 2)
    assert str(e.value).count(".") >= 2 and "\n" not in str(e.value)
    with pytest.raises(BudgetError, match="keeps one channel"):
        group_lasso_prune(lenet.model, g, lo / 2, lenet.dataset.x_train, lenet.dataset.y_train)
    with pytest.raises(UserError, match=r"in \(0, 1\]"):
        l1_prune(lenet.model, g, 1.5)


@pytest.mark.parametrize("budget", [0.75, 0.5, 0.35])
def test_l1_meets_the_budget(lenet, budget):
    g = extract_graph(lenet.model, lenet.example_input())
    res = l1_prune(lenet.model, g, budget)  # no data: one-shot, not fine-tuned
    assert budget * 0.95 <= res.flops_ratio <= budget
    assert any("not fine-tuned" in n for n in res.notes)
    # the smallest-L1 channels went first: every dropped c3 filter is weaker than every kept one
    l1 = lenet.model.c3.weight.detach().abs().sum((1, 2, 3)).numpy()
    kept = res.keep.get(g.group_of("c3").id)
    if kept is not None and len(kept) < 16:
        dropped = np.setdiff1d(np.arange(16), kept)
        assert l1[dropped].max() <= l1[kept].min()


def test_channel_counts_aligned_to_multiples_of_8():
    import torch

    from edge_compress.zoo import build_model

    torch.manual_seed(0)
    m = build_model("mobilenetv2").eval()
    g = extract_graph(m, torch.zeros(1, 1, 32, 32))
    for budget in (0.5, 0.35):
        res = l1_prune(m, g, budget, channel_multiple=8)
        assert res.keep and all(len(k) % 8 == 0 for k in res.keep.values())
        assert budget * 0.9 <= res.flops_ratio <= budget


@pytest.mark.slow
def test_channel_price_is_chosen_on_the_validation_split(lenet):
    """cost_power None: the procedure runs at each price and keeps the most accurate on x_val."""
    from edge_compress.prune.group_lasso import COST_POWERS
    from edge_compress.zoo.train import accuracy

    g = extract_graph(lenet.model, lenet.example_input())
    ds = lenet.dataset

    def prune(val: bool = True, **kw):
        v = dict(x_val=ds.x_val, y_val=ds.y_val) if val else {}
        return group_lasso_prune(
            lenet.model, g, 0.5, ds.x_train, ds.y_train, GroupLassoConfig(epochs=3, **kw), **v
        )

    res = prune(finetune_epochs=1)
    note = res.notes[0]
    assert note.startswith("channel price MACs^p chosen on the validation split")
    parts = note.split(": ", 1)[1].split(" -> ")
    tried = {float(t.split(" ")[0][2:]): float(t.split(" ")[1][:-1]) for t in parts[0].split(", ")}
    chosen = float(parts[1].split(" ")[0][2:])
    assert parts[1].endswith("(after 1 fine-tune epochs)")
    assert set(tried) == set(COST_POWERS)
    assert tried[chosen] == max(tried.values())
    assert abs(100 * accuracy(res.model, ds.x_val, ds.y_val) - tried[chosen]) < 0.06  # the model returned
    assert all(r["cost_power"] == chosen for r in res.trajectory)
    # an explicit price runs once, and without validation data the FLOPs price (1) is used
    one = prune(val=False, finetune_epochs=1, cost_power=0.0)
    assert not any(n.startswith("channel price") for n in one.notes)
    assert 0.5 * 0.95 <= one.flops_ratio <= 0.5
    # a caller that fine-tunes itself (finetune_epochs 0) gets the choice made on fine-tuned copies
    raw = prune(finetune_epochs=0, select_finetune_epochs=1)
    assert raw.notes[0].endswith(
        "(after 1 fine-tune epochs, on copies: the returned model is not fine-tuned)"
    )
