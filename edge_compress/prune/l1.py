"""One-shot L1-norm filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

Each channel is scored by the L1 norm of its producers' weights (summed across the producers of a
residual-tied group). Scores are divided by their group's mean so that layers of different scale
compete fairly, then channels are removed greedily by ascending ``score / MACs saved`` until the
FLOPs budget is met (each group keeps at least ``min_keep_frac`` of its channels, as in group lasso). The pruned model is fine-tuned
briefly (the same epochs as group lasso's fine-tune, for a fair comparison).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge_compress.graph import ModelGraph, extract_graph
from edge_compress.prune.apply import PruneResult, apply_pruning
from edge_compress.prune.cost import FlopsModel, align_keep, greedy_select, min_keep_counts, snap_to_budget


def l1_scores(model: nn.Module, graph: ModelGraph, fm: FlopsModel | None = None) -> dict[int, np.ndarray]:
    """Group id -> L1 norm of each channel's producer weights (summed over tied producers)."""
    fm = fm or FlopsModel.from_graph(graph, model)
    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for g in fm.groups:
            s = torch.zeros(g.channels)
            for p in g.producers:
                w = model.get_submodule(p).weight.detach().float()
                s += w.abs().reshape(w.shape[0], -1).sum(1).cpu()
            out[g.id] = s.numpy()
    return out


def l1_keep(
    model: nn.Module,
    graph: ModelGraph,
    flops_budget: float,
    *,
    cost_power: float = 0.0,
    tolerance: float = 0.05,
    min_keep_frac: float = 0.25,
    channel_multiple: int = 1,
) -> dict[int, np.ndarray]:
    """Kept channel indices per group meeting ``flops_budget`` (ratio of the original MACs).

    Channels are removed by ascending ``normalized L1 / MACs saved ** cost_power``. With
    ``cost_power=1`` (pure norm-per-MAC) the greedy empties the most expensive groups first; on
    batch-normalized networks, whose per-channel L1 norms are nearly uniform, it leaves the stem
    with one channel and the accuracy collapses, so the default ranks by norm alone and lets the
    FLOPs decide only how many channels go. The result is snapped to within ``tolerance`` below
    the budget (coarse groups can overshoot: one channel of a thin first layer may cost 10% of the
    MACs), then the counts are aligned to ``channel_multiple`` (``align_keep``).
    """
    return l1_select(
        model,
        graph,
        flops_budget,
        cost_power=cost_power,
        tolerance=tolerance,
        min_keep_frac=min_keep_frac,
        channel_multiple=channel_multiple,
    )[0]


def l1_select(
    model: nn.Module,
    graph: ModelGraph,
    flops_budget: float,
    *,
    cost_power: float = 0.0,
    tolerance: float = 0.05,
    min_keep_frac: float = 0.25,
    channel_multiple: int = 1,
) -> tuple[dict[int, np.ndarray], str, dict[str, list[int]]]:
    """``l1_keep`` plus the alignment's note and the groups it rounded."""
    fm = FlopsModel.from_graph(graph, model)
    floor = min_keep_counts(fm, min_keep_frac)
    fm.check_budget(flops_budget, floor, min_keep_frac, channel_multiple, tolerance)
    raw = l1_scores(model, graph, fm)
    scores = {g: v / max(float(v.mean()), 1e-12) for g, v in raw.items()}
    keep = greedy_select(fm, scores, flops_budget, cost_power=cost_power, min_keep=floor)
    keep, _ = snap_to_budget(
        fm, keep, scores, scores, flops_budget, tolerance, cost_power=cost_power, min_keep=floor
    )
    keep, note, rounded = align_keep(
        fm, keep, scores, flops_budget, channel_multiple, tolerance, min_keep=floor
    )
    return {g: np.flatnonzero(k) for g, k in keep.items()}, note, rounded


def l1_prune(
    model: nn.Module,
    graph: ModelGraph | None,
    flops_budget: float,
    x_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    *,
    finetune_epochs: int = 5,
    finetune_lr: float = 1e-3,
    seed: int = 0,
    cost_power: float = 0.0,
    min_keep_frac: float = 0.25,
    channel_multiple: int = 1,
) -> PruneResult:
    """One-shot L1 pruning to ``flops_budget``; fine-tuned when training data is given."""
    from edge_compress.prune.group_lasso import finetune

    if graph is None:
        if x_train is None:
            from edge_compress.errors import UserError

            raise UserError("l1 pruning needs the model graph or training data to build one from.")
        graph = extract_graph(model, torch.from_numpy(np.ascontiguousarray(np.asarray(x_train)[:1])))
    fm = FlopsModel.from_graph(graph, model)
    keep, note, rounded = l1_select(
        model,
        graph,
        flops_budget,
        cost_power=cost_power,
        min_keep_frac=min_keep_frac,
        channel_multiple=channel_multiple,
    )
    result = apply_pruning(model, graph, keep, method="l1")
    result.budget = float(flops_budget)
    result.rounded = rounded
    result.skipped = {**fm.skipped, **result.skipped}
    result.notes = ([note] if note else []) + [f"skipped {k}: {v}" for k, v in result.skipped.items()]
    if x_train is not None and y_train is not None and finetune_epochs > 0:
        finetune(result.model, np.asarray(x_train), np.asarray(y_train), finetune_epochs, finetune_lr, seed)
    else:
        result.notes.append("not fine-tuned (no training data)")
    return result
