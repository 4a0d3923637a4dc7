"""The p**k redundancy model against Monte-Carlo random pruning of a network with known duplicates."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.graph import extract_graph
from edge_compress.prune.redundancy import analyze_redundancy, cluster_channels, montecarlo_failure

SIZES = (1, 2, 3, 4)  # functional groups of k duplicate hidden units; group j detects class j


def _duplicate_net(seed: int = 0):
    """Hidden unit copies of group j compute relu(x_j); class j's logit sums its group's copies.

    A sample of class j stays correct while any copy of group j survives; removing all of them
    misclassifies exactly class j (a quarter of the data): failure <=> some group fully removed.
    """
    rng = np.random.default_rng(seed)
    m, h = len(SIZES), sum(SIZES)
    owner = np.repeat(np.arange(m), SIZES)
    w1 = np.zeros((h, m), np.float32)
    w1[np.arange(h), owner] = 1 + 0.01 * rng.standard_normal(h)
    w2 = np.zeros((m, h), np.float32)
    w2[owner, np.arange(h)] = 1.0
    net = nn.Sequential(OrderedDict(hidden=nn.Linear(m, h), relu=nn.ReLU(), out=nn.Linear(h, m))).eval()
    with torch.no_grad():
        net.hidden.weight.copy_(torch.from_numpy(w1))
        net.hidden.bias.zero_()
        net.out.weight.copy_(torch.from_numpy(w2))
        net.out.bias.zero_()
    y = np.repeat(np.arange(m), 50)
    x = rng.uniform(0.01, 0.1, (len(y), m)).astype(np.float32)
    x[np.arange(len(y)), y] = rng.uniform(1.0, 1.5, len(y))
    return net, x, y, owner


def test_clustering_recovers_the_duplicates():
    net, x, y, owner = _duplicate_net()
    g = extract_graph(net, torch.from_numpy(x[:1]))
    rep = analyze_redundancy(net, g, x, y, corr_threshold=0.95, drop_threshold=0.1)
    (layer,) = rep.layers
    assert layer.name == "hidden"
    assert sorted(layer.sizes) == sorted(SIZES)
    assert sorted(sorted(owner[c].tolist()) for c in layer.clusters) == sorted(
        [[j] * k for j, k in enumerate(SIZES)]
    )
    assert all(layer.critical)
    assert layer.single_points == [int(np.flatnonzero(owner == 0)[0])]
    assert rep.single_points_of_failure() == {"hidden": layer.single_points}


def test_predicted_pk_matches_montecarlo():
    net, x, y, _ = _duplicate_net()
    g = extract_graph(net, torch.from_numpy(x[:1]))
    rep = analyze_redundancy(net, g, x, y, corr_threshold=0.95, drop_threshold=0.1)
    ps = [0.1, 0.3, 0.5, 0.7]
    trials = 300
    pred = rep.predicted(ps)["model"]
    exact = [1 - np.prod([1 - p**k for k in SIZES]) for p in ps]
    np.testing.assert_allclose(pred, exact, rtol=1e-12)
    mc = montecarlo_failure(net, g, x, y, ps, trials=trials, drop_threshold=0.1, per_layer=False)["model"]
    for p, a, b in zip(ps, pred, mc, strict=True):
        sigma = np.sqrt(a * (1 - a) / trials)
        assert abs(a - b) <= 4 * sigma + 0.01, (p, a, b)


def test_dead_channels_form_their_own_clusters():
    acts = np.vstack([np.zeros(50), np.arange(50.0), 2 * np.arange(50.0) + 1, np.sin(np.arange(50.0))])
    clusters = cluster_channels(acts, corr_threshold=0.9)
    assert [1, 2] in clusters and [0] in clusters and [3] in clusters


@pytest.mark.parametrize("p", [0.0])
def test_no_pruning_no_failure(p, lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    ds = lenet.dataset
    mc = montecarlo_failure(lenet.model, g, ds.x_val[:64], ds.y_val[:64], [p], trials=2, per_layer=False)
    assert mc["model"] == [0.0]
