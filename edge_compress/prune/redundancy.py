"""Functional redundancy of a layer's channels, and what it predicts about random pruning.

Within one channel group, channels whose activations on calibration data are nearly collinear
(correlation >= ``corr_threshold``, agglomerative clustering with ``scipy.cluster.hierarchy``)
form a functional group of k near-duplicate units. Under random pruning at rate p (each channel
removed independently with probability p) a functional group fails when all its k units are
removed, with probability p**k; a layer fails when any of its *critical* functional groups fails
(critical: masking the whole cluster alone costs more than ``drop_threshold`` accuracy), so

    P(layer fails) = 1 - prod_j (1 - p ** k_j)        P(model fails) = 1 - prod_layers (1 - P(layer))

``montecarlo_failure`` measures the same on the real network: mask random channels at rate p
(weights, biases and BN affine zeroed, the exact equivalent of removing them), many trials, and
count a failure when the accuracy drops by more than ``drop_threshold``. Single points of failure
are critical clusters with k = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_compress.graph import ChannelGroup, ModelGraph
from edge_compress.prune.apply import mask_channels
from edge_compress.prune.cost import group_label, prunable_groups


@dataclass
class LayerRedundancy:
    group: int
    name: str
    channels: int
    clusters: list[list[int]]
    importance: list[float] = field(default_factory=list)  # accuracy drop when the whole cluster is masked
    critical: list[bool] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.clusters]

    @property
    def single_points(self) -> list[int]:
        """Channels that are critical and have no functional duplicate (k = 1)."""
        return [c[0] for c, crit in zip(self.clusters, self.critical, strict=True) if crit and len(c) == 1]

    def fail_prob(self, p: float) -> float:
        ks = [len(c) for c, crit in zip(self.clusters, self.critical, strict=True) if crit]
        return float(1 - np.prod([1 - p**k for k in ks])) if ks else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "channels": self.channels,
            "cluster_sizes": self.sizes,
            "critical_sizes": [len(c) for c, k in zip(self.clusters, self.critical, strict=True) if k],
            "single_points_of_failure": self.single_points,
            "max_importance": max(self.importance) if self.importance else None,
        }


@dataclass
class RedundancyReport:
    layers: list[LayerRedundancy]
    base_acc: float
    drop_threshold: float

    def predicted(self, ps: list[float]) -> dict[str, list[float]]:
        """Predicted failure probability over ``ps``: per layer and for the model ("model")."""
        out = {layer.name: [layer.fail_prob(p) for p in ps] for layer in self.layers}
        out["model"] = [float(1 - np.prod([1 - layer.fail_prob(p) for layer in self.layers])) for p in ps]
        return out

    def single_points_of_failure(self) -> dict[str, list[int]]:
        return {layer.name: layer.single_points for layer in self.layers if layer.single_points}


def _reader(g: ChannelGroup, graph: ModelGraph):
    """A consumer reading the group's channels directly (not a depthwise passthrough)."""
    for c in g.consumers:
        if c.layer not in g.passthrough:
            return c
    return g.consumers[0]


@torch.no_grad()
def group_activations(model: nn.Module, graph: ModelGraph, g: ChannelGroup, x: np.ndarray) -> np.ndarray:
    """(channels, observations): what the group's first consumer reads, per channel."""
    c = _reader(g, graph)
    store: list[torch.Tensor] = []

    def hook(mod, inp):
        t = inp[0]
        if c.flatten_factor > 1 or t.dim() == 2:
            t = t[:, c.offset : c.offset + g.channels * c.flatten_factor].reshape(t.shape[0], g.channels, -1)
        else:
            t = t[:, c.offset : c.offset + g.channels].reshape(t.shape[0], g.channels, -1)
        store.append(t.transpose(0, 1).reshape(g.channels, -1).float().cpu())

    h = model.get_submodule(c.layer).register_forward_pre_hook(hook)
    try:
        model.eval()(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        h.remove()
    return torch.cat(store, 1).numpy()


def cluster_channels(
    acts: np.ndarray, corr_threshold: float = 0.9, method: str = "average"
) -> list[list[int]]:
    """Agglomerative clusters of channels whose activations correlate >= ``corr_threshold``.

    Constant (dead) channels correlate with nothing and form their own clusters.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = acts.shape[0]
    if n == 1:
        return [[0]]
    a = acts - acts.mean(1, keepdims=True)
    sd = np.sqrt((a**2).sum(1))
    ok = sd > 1e-12 * max(1.0, float(sd.max()))
    corr = np.zeros((n, n))
    an = a[ok] / sd[ok, None]
    corr[np.ix_(ok, ok)] = an @ an.T
    np.fill_diagonal(corr, 1.0)
    dist = np.clip(1.0 - corr, 0.0, 2.0)
    z = linkage(squareform(dist, checks=False), method=method)
    labels = fcluster(z, t=1.0 - corr_threshold, criterion="distance")
    clusters: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        clusters.setdefault(int(lab), []).append(i)
    return sorted(clusters.values(), key=lambda c: (-len(c), c[0]))


def _acc(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from edge_compress.zoo.train import accuracy

    return accuracy(model, x, y)


def analyze_redundancy(
    model: nn.Module,
    graph: ModelGraph,
    x: np.ndarray,
    y: np.ndarray,
    *,
    corr_threshold: float = 0.9,
    drop_threshold: float = 0.02,
    groups: list[int] | None = None,
) -> RedundancyReport:
    """Cluster every prunable group's channels and measure each cluster's importance on (x, y)."""
    ok, _ = prunable_groups(graph, model)
    sel = [g for g in ok if groups is None or g.id in groups]
    base = _acc(model, x, y)
    layers = []
    for g in sel:
        clusters = cluster_channels(group_activations(model, graph, g, x), corr_threshold)
        imp = [base - _acc(mask_channels(model, graph, {g.id: cl}), x, y) for cl in clusters]
        layers.append(
            LayerRedundancy(
                g.id, group_label(g), g.channels, clusters, imp, [d > drop_threshold for d in imp]
            )
        )
    return RedundancyReport(layers, base, drop_threshold)


def montecarlo_failure(
    model: nn.Module,
    graph: ModelGraph,
    x: np.ndarray,
    y: np.ndarray,
    ps: list[float],
    *,
    trials: int = 50,
    drop_threshold: float = 0.02,
    groups: list[int] | None = None,
    per_layer: bool = True,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Fraction of random-pruning trials (rate p) whose accuracy drop exceeds ``drop_threshold``.

    Returns curves over ``ps`` per layer (only that layer pruned; when ``per_layer``) and for the
    model ("model": every prunable group pruned at rate p at once).
    """
    ok, _ = prunable_groups(graph, model)
    sel = [g for g in ok if groups is None or g.id in groups]
    rng = np.random.default_rng(seed)
    base = _acc(model, x, y)

    def run(gs: list[ChannelGroup], p: float) -> float:
        fails = 0
        for _ in range(trials):
            drop = {g.id: np.flatnonzero(rng.random(g.channels) < p) for g in gs}
            fails += (base - _acc(mask_channels(model, graph, drop), x, y)) > drop_threshold
        return fails / trials

    out: dict[str, list[float]] = {}
    if per_layer:
        for g in sel:
            out[group_label(g)] = [run([g], p) for p in ps]
    out["model"] = [run(sel, p) for p in ps]
    return out
