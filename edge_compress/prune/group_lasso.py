"""Group-lasso channel pruning under a FLOPs budget (Lagrangian, dual ascent, proximal steps).

Objective, for channel groups g and their channels c (vector w_gc of all parameters of the channel):

    min_W  L(W) + sum_gc (lam + mu * cost_g) * ||w_gc||_2      subject to  FLOPs(W) <= B * FLOPs_0

``cost_g`` is the MACs one channel of g costs (exact marginal, normalized to mean 1), so the
multiplier ``mu`` prices FLOPs. Its scale is unknown and model-dependent, so it is first searched
on a log scale (mu grows geometrically from ``mu0``) until the first channel dies; from then on it
follows dual ascent, mu += dual_step * mu_first * violation, rising while the predicted FLOPs
(counting channels whose norm is above ``zero_tol`` of their group's initial RMS norm) exceed the
budget and falling while below. Each SGD step is followed by group soft-thresholding, the
proximal step of the penalty, so the norms of unneeded channels reach exactly zero.

A group's overall scale carries no information the penalty should act on: behind a batch norm
it is free (the next BN undoes it), and elsewhere the consumers' weights can absorb it (ReLU and
pooling are positively homogeneous). A plain penalty would shrink whole groups uniformly, at no
loss behind a BN, until they vanished at once. So after each step every group is projected back
onto its initial total norm (``fixed_scale``): the penalty then only decides which channels of a
group the loss needs least. No group is pruned below ``min_keep_frac`` of its channels.

Then the ~0 channels are removed physically (snapped to within ``tolerance`` below the budget,
see ``group_lasso_prune``) and the smaller model is fine-tuned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.graph import ModelGraph, extract_graph
from edge_compress.prune.apply import PruneResult, apply_pruning
from edge_compress.prune.channels import ChannelParams
from edge_compress.prune.cost import FlopsModel, align_keep, min_keep_counts, snap_to_budget


@dataclass(frozen=True)
class GroupLassoConfig:
    epochs: int = 8  # at most this many sparsification epochs (penalized training)
    lr: float = 0.02  # SGD learning rate of the penalized phase (constant)
    momentum: float = 0.9
    batch_size: int = 64
    lam: float = 1e-3  # base group-lasso strength (per channel norm)
    mu0: float = 0.01  # initial multiplier
    # search: log-scale search for mu's scale, then dual ascent | additive: dual ascent only
    dual: str = "search"
    # search: growth of log(mu) per epoch until the first channel dies | additive: step of mu per epoch
    dual_lr: float = 1.0
    dual_step: float = 1.0  # search, after the first death: mu += dual_step * mu_first * violation per epoch
    # A channel's price in the penalty is (MACs of one channel / mean) ** cost_power. 1 prices FLOPs
    # exactly and prunes the costly high-resolution layers first; 0 prices every channel alike (the
    # multiplier then only sets how many go). Which one loses less accuracy depends on the network
    # (measured at half the FLOPs, 3 seeds, validation split: resnet 98.9% with 1 vs 99.4% with 0,
    # mobilenetv2 98.0% with 1 vs 97.0% with 0), so None tries COST_POWERS and keeps the model that
    # is most accurate on the validation data (needs x_val / y_val; 1 without them).
    cost_power: float | None = None
    # with finetune_epochs 0 (the caller fine-tunes), candidates are compared after this many
    # fine-tune epochs on copies: right after removal a pruned model is near chance
    select_finetune_epochs: int = 6
    include_consumers: bool = False  # also penalize the consumers' input slices
    zero_tol: float = 0.1  # a channel is dead when its norm < zero_tol * its group's initial RMS channel norm
    stop_at_budget: bool = True  # end the penalized phase at the first epoch within tolerance of the budget
    min_keep_frac: float = 0.25  # every prunable group keeps at least this fraction of its channels
    # keep each group's total norm constant: all | bn (batch-normalized groups only) | none
    fixed_scale: str = "all"
    tolerance: float = 0.05  # final FLOPs ratio within [budget * (1 - tolerance), budget]
    channel_multiple: int = 1  # round kept channel counts to multiples of this (8: onnxruntime AVX2 blocks)
    # 6: measured on the validation split, resnet and mobilenetv2 at half the FLOPs, 4 seeds: 3 -> 6 epochs
    # raised group lasso from 97.9 to 98.9% (resnet) and L1 one-shot from 96.8 to 98.5%
    finetune_epochs: int = 6
    finetune_lr: float = 1e-3
    seed: int = 0


COST_POWERS = (1.0, 0.0)  # tried, in this order (a tie keeps the first), when cost_power is None


def check_data(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    if x is None or y is None:
        raise UserError(
            f"{what} needs training data: pass x_train and y_train (zoo models carry theirs), "
            "or use one-shot L1 pruning, which needs none."
        )
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or len(x) != len(y):
        raise UserError(
            f"{what}: x_train has {len(x)} samples but y_train has {len(y)}; give matching, non-empty arrays."
        )
    return x, y


def finetune(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0
) -> nn.Module:
    """Short Adam fine-tune (cosine schedule) of a pruned model; a no-op for 0 epochs."""
    from edge_compress.zoo.train import TrainConfig, train

    if epochs > 0:
        train(model, x, y, TrainConfig(epochs=epochs, lr=lr, seed=seed))
    return model.eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: np.ndarray, n: int = 512, batch_size: int = 128) -> nn.Module:
    """Re-estimate batch-norm running statistics on ``x[:n]`` (in place; returns the model in eval mode).

    Shrinking BN gammas during penalized training is free in training mode (the next BN
    renormalizes) but leaves the EMA running statistics behind, so eval-mode accuracy is only
    meaningful after recalibration.
    """
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i in range(0, min(n, len(x)), batch_size):
        model(torch.from_numpy(np.ascontiguousarray(x[i : min(n, i + batch_size)])))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    return model.eval()


def _graph(model: nn.Module, graph: ModelGraph | None, x: np.ndarray) -> ModelGraph:
    if graph is not None:
        return graph
    return extract_graph(model, torch.from_numpy(np.ascontiguousarray(x[:1])))


def group_lasso_prune(
    model: nn.Module,
    graph: ModelGraph | None,
    flops_budget: float,
    x_train: np.ndarray | None,
    y_train: np.ndarray | None,
    config: GroupLassoConfig | None = None,
    *,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> PruneResult:
    """Prune ``model`` (not modified) to ``flops_budget`` x its MACs; returns the fine-tuned smaller model.

    ``result.trajectory`` has one row per epoch: loss, penalty, flops_ratio (predicted), multiplier,
    live_channels (and val_acc when ``x_val`` is given). When the live channels after training do
    not land within ``tolerance`` of the budget, the smallest-norm channels (ranked globally by
    norm per MACs) are pruned too, or the last-dropped ones restored; ``result.notes`` says so.
    With ``config.cost_power`` None and validation data, the whole procedure runs once per channel
    price in ``COST_POWERS`` and the model most accurate on ``x_val`` is returned (a note gives
    every candidate's validation accuracy); the test split is never looked at.
    """
    from edge_compress.zoo.train import accuracy

    cfg = config or GroupLassoConfig()
    x, y = check_data(x_train, y_train, "group-lasso pruning")
    graph = _graph(model, graph, x)
    has_val = x_val is not None and y_val is not None and len(x_val) > 0
    if cfg.cost_power is not None:
        powers: tuple[float, ...] = (float(cfg.cost_power),)
    else:
        powers = COST_POWERS if has_val else (1.0,)
    tried: list[tuple[float, float, PruneResult]] = []
    for power in powers:
        res = _prune_once(
            model, graph, flops_budget, x, y, replace(cfg, cost_power=power), x_val, y_val, progress
        )
        if len(powers) == 1:
            return res
        judged = res.model
        if cfg.finetune_epochs == 0:  # the caller fine-tunes: judge fine-tuned copies (unrecovered
            judged = copy.deepcopy(res.model)  # pruned models are near chance and rank at random)
            finetune(judged, x, y, cfg.select_finetune_epochs, cfg.finetune_lr, cfg.seed)
        tried.append((accuracy(judged, x_val, y_val), power, res))
    _, power, best = max(tried, key=lambda t: t[0])  # max keeps the first of equals
    epochs = cfg.finetune_epochs or cfg.select_finetune_epochs
    best.notes.insert(
        0,
        "channel price MACs^p chosen on the validation split: "
        + ", ".join(f"p={p:g} {100 * a:.1f}%" for a, p, _ in tried)
        + f" -> p={power:g} (after {epochs} fine-tune epochs"
        + ("" if cfg.finetune_epochs else ", on copies: the returned model is not fine-tuned")
        + ")",
    )
    for row in best.trajectory:
        row["cost_power"] = power
    return best


def _prune_once(
    model: nn.Module,
    graph: ModelGraph,
    flops_budget: float,
    x: np.ndarray,
    y: np.ndarray,
    cfg: GroupLassoConfig,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    progress: Callable[[dict[str, Any]], None] | None,
) -> PruneResult:
    """One penalized training, snap, removal and fine-tune at ``cfg.cost_power``."""
    from edge_compress.zoo.train import accuracy

    fm = FlopsModel.from_graph(graph, model)
    fm.check_budget(
        flops_budget,
        min_keep_counts(fm, cfg.min_keep_frac),
        cfg.min_keep_frac,
        cfg.channel_multiple,
        cfg.tolerance,
    )
    work = copy.deepcopy(model)
    cp = ChannelParams(work, graph, fm.groups, cfg.include_consumers)
    floor = min_keep_counts(fm, cfg.min_keep_frac)
    norms0 = cp.norms()
    ref = {g: float(v.pow(2).mean().sqrt()) or 1.0 for g, v in norms0.items()}  # initial RMS channel norm
    fixed = cp.scale_free if cfg.fixed_scale == "bn" else (set(fm.gid) if cfg.fixed_scale == "all" else set())
    sphere = {g: float(norms0[g].pow(2).sum().sqrt()) for g in fixed}

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    opt = torch.optim.SGD(work.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    mu = cfg.mu0
    mu_first: float | None = None
    step_size = cfg.lr / (1 - cfg.momentum)  # the effective step of SGD with momentum
    budget = float(flops_budget)

    def rel(g: int, v: torch.Tensor) -> torch.Tensor:
        """Channel norms relative to the group's initial RMS channel norm."""
        return v / ref[g]

    def live(g: int, v: torch.Tensor) -> torch.Tensor:
        """Norm above zero_tol of the initial RMS, and always the group's ``floor`` strongest channels."""
        ok = rel(g, v) > cfg.zero_tol
        ok[torch.argsort(v, descending=True)[: floor[g]]] = True
        return ok

    def live_counts(norms: dict[int, torch.Tensor]) -> dict[int, int]:
        return {g: max(1, int(live(g, v).sum())) for g, v in norms.items()}

    def costs(n: dict[int, int]) -> dict[int, float]:
        marg = fm.marginal(n)
        mean = sum(marg[g] * fm.size[g] for g in marg) / sum(fm.size.values())
        return {g: (marg[g] / mean) ** cfg.cost_power if mean > 0 else 1.0 for g in marg}

    norms = cp.norms()
    n_live = live_counts(norms)
    n_start = sum(n_live.values())
    cost = costs(n_live)
    trajectory: list[dict[str, Any]] = []
    snapshots: list[tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]] = [(norms, cp.state())]
    step = 0
    for epoch in range(cfg.epochs):
        work.train()
        total_loss = 0.0
        perm = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(work(xt[b]), yt[b])
            loss.backward()
            opt.step()
            thr = {g: step_size * (cfg.lam + mu * cost[g]) for g in cost}
            norms = cp.prox(thr, floor, sphere)
            step += 1
            total_loss += float(loss.detach()) * len(b)
            n_live = live_counts(norms)
            violation = (fm.ratio(n_live) - budget) / min(budget, 1 - budget + 1e-9)
            violation = max(-1.0, min(1.0, violation))
            if cfg.dual == "additive":
                mu = max(0.0, mu + cfg.dual_lr / steps_per_epoch * violation)
            else:
                if mu_first is None and sum(n_live.values()) < n_start:
                    mu_first = mu  # the multiplier's scale is found: the first channel died
                if mu_first is None:
                    mu = mu * math.exp(cfg.dual_lr / steps_per_epoch * violation)
                else:
                    mu = max(0.0, mu + cfg.dual_step * mu_first / steps_per_epoch * violation)
            cost = costs(n_live)
        n_live = live_counts(norms)
        penalty = sum(float(((cfg.lam + mu * cost[g]) * norms[g]).sum()) for g in norms)
        row = {
            "epoch": epoch + 1,
            "loss": total_loss / len(x),
            "penalty": penalty,
            "flops_ratio": fm.ratio(n_live),
            "multiplier": mu,
            "live_channels": int(sum(n_live.values())),
            "live_per_group": {str(g): int(v) for g, v in n_live.items()},
        }
        if x_val is not None and y_val is not None:
            row["val_acc"] = accuracy(recalibrate_bn(copy.deepcopy(work), x), x_val, y_val)
        trajectory.append(row)
        snapshots.append((norms, cp.state()))
        if progress is not None:
            progress(row)
        if cfg.stop_at_budget and row["flops_ratio"] <= budget * (1 + cfg.tolerance):
            break  # the budget is reached: stop before the channels still shrinking overshoot it
    work.eval()

    # ---- snap the live set to the budget: [budget * (1 - tolerance), budget]
    norms = cp.norms()
    alive = {g: live(g, v).numpy() for g, v in norms.items()}
    for g, a in alive.items():  # every group keeps at least its strongest channel
        if not a.any():
            a[int(torch.argmax(norms[g]))] = True
    last_alive = {g: np.full(fm.size[g], -1) for g in norms}  # last snapshot where each channel was alive
    last_norm = {g: np.zeros(fm.size[g]) for g in norms}
    for s, (sn, _) in enumerate(snapshots):
        for g, v in sn.items():
            ok = live(g, v).numpy()
            last_alive[g][ok] = s
            last_norm[g][ok] = rel(g, v).numpy()[ok]
    recalibrate_bn(work, x)
    alive_score = {g: rel(g, norms[g]).numpy() for g in norms}
    dead_score = {  # most recently alive first
        g: np.where(last_alive[g] >= 0, last_alive[g] + np.minimum(last_norm[g], 0.999), -np.inf)
        for g in norms
    }
    keep, note = snap_to_budget(
        fm,
        alive,
        alive_score=alive_score,
        dead_score=dead_score,
        budget=budget,
        tolerance=cfg.tolerance,
        min_keep=floor,
    )
    rounded: dict[str, list[int]] = {}
    if cfg.channel_multiple > 1:
        keep, align_note, rounded = align_keep(
            fm,
            keep,
            alive_score,
            budget,
            cfg.channel_multiple,
            cfg.tolerance,
            fill_scores=dead_score,
            min_keep=floor,
        )
        note = "; ".join(x for x in (note, align_note) if x)
    for g in keep:
        for c in np.flatnonzero(keep[g] & ~alive[g]):
            cp.restore(g, int(c), snapshots[int(last_alive[g][c])][1])
    notes = [note] if note else []
    result = apply_pruning(work, graph, {g: np.flatnonzero(k) for g, k in keep.items()}, method="group_lasso")
    finetune(result.model, x, y, cfg.finetune_epochs, cfg.finetune_lr, cfg.seed)
    result.params_before = sum(p.numel() for p in model.parameters())
    result.skipped = {**fm.skipped, **result.skipped}
    result.budget = budget
    result.trajectory = trajectory
    result.rounded = rounded
    result.notes = notes + [f"skipped {k}: {v}" for k, v in result.skipped.items()]
    return result
