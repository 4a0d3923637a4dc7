"""Training and evaluation routines shared by the zoo, pruning fine-tuning and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    label_smoothing: float = 0.0


def _batches(n: int, bs: int, rng: np.random.Generator):
    idx = rng.permutation(n)
    for i in range(0, n, bs):
        yield idx[i : i + bs]


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig = TrainConfig(),
    *,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Adam + cosine schedule. ``penalty(model)`` is added to the loss (group lasso, L1 ...).

    ``after_step`` runs after every optimizer step (e.g. proximal shrinkage, dual ascent).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(y))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    for epoch in range(cfg.epochs):
        total = 0.0
        for b in _batches(len(x), cfg.batch_size, rng):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[b]), yt[b])
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            total += float(loss.detach()) * len(b)
        if on_epoch is not None:
            on_epoch(epoch, total / len(x))
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits as a float32 array."""
    model.eval()
    outs = []
    for i in range(0, len(x), batch_size):
        outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((predict(model, x).argmax(1) == y).mean())
