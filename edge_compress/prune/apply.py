"""Physical channel pruning: a new, smaller nn.Module holding only the kept channels.

``keep`` maps a channel group (its id, or the name of any of its producers) to the channel
indices it keeps. Producers lose output channels, consumers lose the matching input channels
(at the group's concat offset, ``flatten_factor`` features per channel for a Linear after a
Flatten), depthwise passthrough convs lose channels and ``groups`` (``m`` output channels per
group channel with a channel multiplier ``m``), batch norms are sliced (at the group's offset
when they normalize a concatenation), and the producers of a residual-tied group share one keep
list. Groups that cannot be pruned (grouped convolutions, untraceable layouts) are left untouched
and reported by name with the reason.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.graph import ChannelGroup, ModelGraph, extract_graph, group_slices
from edge_compress.prune.cost import FlopsModel, group_label, prunable_groups

if TYPE_CHECKING:
    from edge_compress.plan import CompressionPlan

log = logging.getLogger(__name__)

KeepSpec = dict[Any, "list[int] | np.ndarray"]


@dataclass
class PruneResult:
    """A pruned model and what was done to it."""

    model: nn.Module
    keep: dict[int, list[int]]  # group id -> kept channel indices (pruned groups only)
    skipped: dict[str, str]  # group (its producers) -> why it was left untouched
    flops_ratio: float  # MACs of the pruned model / MACs of the original (measured by extract_graph)
    macs: int
    params: int
    params_before: int
    method: str = "manual"
    budget: float | None = None
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # group -> [count before, after] for the groups whose kept count was rounded to the channel multiple
    rounded: dict[str, list[int]] = field(default_factory=dict)

    @property
    def params_ratio(self) -> float:
        return self.params / max(1, self.params_before)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "budget": self.budget,
            "flops_ratio": self.flops_ratio,
            "macs": self.macs,
            "params": self.params,
            "params_ratio": self.params_ratio,
            "kept": {str(g): len(v) for g, v in self.keep.items()},
            "skipped": self.skipped,
            "rounded": self.rounded,
            "notes": self.notes,
        }


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def example_for(graph: ModelGraph) -> torch.Tensor:
    return torch.zeros((1, *graph.input_shape))


def resolve_keep(graph: ModelGraph, keep: KeepSpec) -> dict[int, np.ndarray]:
    """Validate a keep spec: group id / producer name -> sorted unique channel indices."""
    by_id = {g.id: g for g in graph.channel_groups}
    out: dict[int, np.ndarray] = {}
    for key, idx in keep.items():
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if int(key) not in by_id:
                raise UserError(f"keep: no channel group with id {key} (known: {sorted(by_id)}).")
            g = by_id[int(key)]
        else:
            g = graph.group_of(str(key))
            if g is None:
                raise UserError(f"keep: {key!r} is not a layer producing a channel group of this model.")
        arr = np.unique(np.asarray(list(idx), dtype=np.int64))
        if arr.size == 0:
            raise UserError(f"keep: group {group_label(g)!r} must keep at least one channel.")
        if arr[0] < 0 or arr[-1] >= g.channels:
            raise UserError(
                f"keep: group {group_label(g)!r} has {g.channels} channels; index {int(arr[-1])} is out of range."
            )
        if g.id in out and not np.array_equal(out[g.id], arr):
            raise UserError(
                f"keep: the tied producers of group {group_label(g)!r} were given different channel lists."
            )
        out[g.id] = arr
    return out


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _new_conv(
    m: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None, depthwise: bool
) -> nn.Module:
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    if out_idx is not None:
        w = w.index_select(0, out_idx)
        b = b.index_select(0, out_idx) if b is not None else None
    if in_idx is not None and not depthwise:
        w = w.index_select(1, in_idx)
    if isinstance(m, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        cout = w.shape[0]
        mult = max(1, m.out_channels // m.in_channels) if depthwise else 1  # channel multiplier
        if depthwise and cout % mult:
            raise ValueError(
                f"depthwise conv keeps {cout} channels, not whole blocks of its multiplier {mult}"
            )
        cin = cout // mult if depthwise else w.shape[1] * m.groups
        new = type(m)(
            cin,
            cout,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=cin if depthwise else m.groups,
            bias=b is not None,
            padding_mode=m.padding_mode,
        )
    new = new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.train(m.training)
    return new


def _new_bn(m: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = type(m)(
        len(idx), eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats
    )
    ref = m.weight if m.affine else m.running_mean
    new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if m.affine:
            new.weight.copy_(m.weight.detach()[idx])
            new.bias.copy_(m.bias.detach()[idx])
        if m.track_running_stats:
            new.running_mean.copy_(m.running_mean[idx])
            new.running_var.copy_(m.running_var[idx])
            new.num_batches_tracked.copy_(m.num_batches_tracked)
    new.train(m.training)
    return new


def _slices(
    model: nn.Module, graph: ModelGraph, groups: dict[int, ChannelGroup], keep: dict[int, np.ndarray]
):
    """Kept-entry masks: output channels of producers, depthwise passthroughs and batch norms
    (``out_mask``), input features of consumers (``in_mask``)."""
    info = {li.name: li for li in graph.layers}
    out_mask: dict[str, np.ndarray] = {}
    in_mask: dict[str, np.ndarray] = {}
    for gid, kept in keep.items():
        dropped = np.setdiff1d(np.arange(groups[gid].channels), kept)
        for sl in group_slices(graph, groups[gid]):
            if sl.role == "consumer":
                mask = in_mask.setdefault(sl.layer, np.ones(info[sl.layer].in_channels, bool))
            else:
                n = (
                    info[sl.layer].out_channels
                    if sl.layer in info
                    else int(_get(model, sl.layer).num_features)
                )
                mask = out_mask.setdefault(sl.layer, np.ones(n, bool))
            mask[sl.positions(dropped)] = False
    return out_mask, in_mask


def mask_channels(model: nn.Module, graph: ModelGraph, drop: dict[int, list[int] | np.ndarray]) -> nn.Module:
    """A copy of ``model`` whose dropped channels output exactly zero (weights, biases, BN affine zeroed).

    The masked model computes what the physically pruned one computes (for activations with
    f(0) = 0: ReLU, ReLU6, SiLU, GELU, pooling), also when a group loses all its channels.
    """
    m = copy.deepcopy(model)
    by_id = {g.id: g for g in graph.channel_groups}
    with torch.no_grad():
        for gid, idx in drop.items():
            idx = np.asarray(list(idx), dtype=np.int64)
            if idx.size == 0:
                continue
            for sl in group_slices(graph, by_id[int(gid)]):
                if sl.role == "consumer":
                    continue
                mod = _get(m, sl.layer)
                tt = torch.from_numpy(sl.positions(idx))
                if getattr(mod, "weight", None) is not None:
                    mod.weight[tt] = 0
                if getattr(mod, "bias", None) is not None:
                    mod.bias[tt] = 0
    return m


def apply_pruning(
    model: nn.Module, graph: ModelGraph, keep: KeepSpec, *, method: str = "manual"
) -> PruneResult:
    """Physically prune ``model`` (a deep copy) to the channels in ``keep``; see the module doc."""
    resolved = resolve_keep(graph, keep)
    ok, skipped_all = prunable_groups(graph, model)
    ok_ids = {g.id for g in ok}
    groups = {g.id: g for g in graph.channel_groups}
    skipped: dict[str, str] = {}
    effective: dict[int, np.ndarray] = {}
    for gid, kept in resolved.items():
        g = groups[gid]
        if len(kept) == g.channels:
            continue
        if gid not in ok_ids:
            skipped[group_label(g)] = skipped_all.get(group_label(g), g.reason)
            continue
        effective[gid] = kept
    if skipped:
        log.warning("left unpruned: %s", "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    new = copy.deepcopy(model)
    out_mask, in_mask = _slices(model, graph, groups, effective)
    info = {li.name: li for li in graph.layers}
    for name in sorted(set(out_mask) | set(in_mask)):
        mod = _get(new, name)
        o = torch.from_numpy(np.flatnonzero(out_mask[name])) if name in out_mask else None
        if name not in info:  # a batch norm
            _set(new, name, _new_bn(mod, o))
            continue
        if info[name].kind == "depthwise_conv":  # its inputs go with its outputs
            _set(new, name, _new_conv(mod, o, None, depthwise=True))
            continue
        i = torch.from_numpy(np.flatnonzero(in_mask[name])) if name in in_mask else None
        _set(new, name, _new_conv(mod, o, i, depthwise=False))
    new.train(model.training)
    was_training = new.training
    pruned_graph = extract_graph(new, example_for(graph).to(next(model.parameters()).device))
    new.train(was_training)
    return PruneResult(
        model=new,
        keep={g: v.tolist() for g, v in effective.items()},
        skipped=skipped,
        flops_ratio=pruned_graph.total_macs / max(1, graph.total_macs),
        macs=pruned_graph.total_macs,
        params=count_params(new),
        params_before=count_params(model),
        method=method,
    )


def prune_model(model: nn.Module, graph: ModelGraph, keep: KeepSpec) -> nn.Module:
    """A new, smaller nn.Module keeping only ``keep``'s channels (``apply_pruning`` for the report)."""
    return apply_pruning(model, graph, keep).model


def predicted_flops_ratio(graph: ModelGraph, keep: KeepSpec, model: nn.Module | None = None) -> float:
    """FLOPs ratio the keep spec gives, computed from the graph alone (no surgery)."""
    fm = FlopsModel.from_graph(graph, model)
    n = {g: len(v) for g, v in resolve_keep(graph, keep).items() if g in fm.size}
    return fm.ratio(n)


# ---------------------------------------------------------------------------------- plans
def keep_from_plan(plan: CompressionPlan, graph: ModelGraph) -> dict[int, list[int]]:
    """Group id -> kept channels recorded in ``plan`` (tied producers must agree)."""
    out: dict[int, list[int]] = {}
    for g in graph.channel_groups:
        lists = {p: plan.layers[p].keep_channels for p in g.producers if p in plan.layers}
        lists = {p: v for p, v in lists.items() if v is not None}
        if not lists:
            continue
        first = next(iter(lists.values()))
        for p, v in lists.items():
            if sorted(v) != sorted(first):
                raise UserError(
                    f"plan: layers {sorted(lists)} are tied by a residual add but keep different channels ({p!r} differs)."
                )
        out[g.id] = sorted(int(c) for c in first)
    return out


def kept_by_layer(graph: ModelGraph, keep: KeepSpec) -> dict[str, list[int]]:
    """Layer -> the indices of its original output channels that ``keep`` keeps, for every producer
    and depthwise passthrough conv that loses channels (a passthrough may carry several groups)."""
    resolved = resolve_keep(graph, keep)
    groups = {g.id: g for g in graph.channel_groups}
    info = {li.name: li for li in graph.layers}
    masks: dict[str, np.ndarray] = {}
    for gid, kept in resolved.items():
        g = groups[gid]
        if len(kept) == g.channels:
            continue
        dropped = np.setdiff1d(np.arange(g.channels), kept)
        for sl in group_slices(graph, g):
            if sl.role in ("producer", "passthrough"):
                mask = masks.setdefault(sl.layer, np.ones(info[sl.layer].out_channels, bool))
                mask[sl.positions(dropped)] = False
    return {name: np.flatnonzero(m).tolist() for name, m in masks.items()}


def plan_with_keep(
    plan: CompressionPlan, graph: ModelGraph, keep: KeepSpec, *, model: nn.Module | None = None
) -> CompressionPlan:
    """A copy of ``plan`` recording the kept channels of every pruned producer (and depthwise passthrough)
    and the predicted FLOPs ratio in ``plan.predicted['flops_ratio']``."""
    from edge_compress.plan import LayerDecision

    new = copy.deepcopy(plan)
    info = {li.name: li for li in graph.layers}
    for name, kept in kept_by_layer(graph, keep).items():
        d = new.layers.get(name)
        if d is None:
            d = new.layers[name] = LayerDecision(name, info[name].kind)
        if d.keep_channels is not None:  # already pruned by an earlier call: keep only what both keep
            kept = sorted(set(kept) & {int(c) for c in d.keep_channels})
        d.keep_channels = list(kept)
        d.why = (d.why + "; " if d.why else "") + f"pruned to {len(kept)}/{info[name].out_channels} channels"
    new.predicted["flops_ratio"] = predicted_flops_ratio(graph, keep, model)
    return new
