"""Input-feature pruning with LASSO: which sensor features / time samples can the model do without?

An L1 (group) penalty is put on everything that reads each input feature: for a model whose first
layer is a Linear over the (flattened) input, the column ``W[:, f]`` (group lasso over the column);
otherwise a per-feature gate ``x_f -> g_f * x_f`` in front of the model (e.g. the 40 time samples of a
1-D conv's input, where no weight belongs to a single sample). Training uses proximal SGD, so a
feature's group reaches exactly zero; going up a path of increasing penalties (warm-started), a
feature that reached zero is removed for good (its sensor need not be sampled), so the number of
dropped features never decreases along the path. At each penalty the accuracy of the model with
the dropped features physically removed is reported (and, with ``refit_epochs``, after an
unpenalized refit on the kept features). ``sklearn_l1_path`` gives the classical L1 logistic
regression path on the same data for comparison.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError


@dataclass
class LassoStep:
    penalty: float
    kept: list[int]
    dropped: list[int]
    acc: float  # accuracy with the dropped features removed (= the penalized model's accuracy)
    acc_refit: float | None = None

    @property
    def n_kept(self) -> int:
        return len(self.kept)


@dataclass
class LassoPath:
    mode: str  # linear | gate
    n_features: int
    base_acc: float
    steps: list[LassoStep] = field(default_factory=list)
    feature_names: list[str] | None = None
    # the model at the last penalty (wrapped as Sequential(gate, model) in gate mode)
    model: nn.Module | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        rows = []
        for s in self.steps:
            d = asdict(s)
            d["n_kept"] = s.n_kept
            if self.feature_names:
                d["dropped_names"] = [self.feature_names[i] for i in s.dropped]
            del d["kept"]
            rows.append(d)
        return {"mode": self.mode, "n_features": self.n_features, "base_acc": self.base_acc, "path": rows}


def mlp(in_features: int, hidden: int, classes: int) -> nn.Sequential:
    """Flatten -> Linear(in, hidden) -> ReLU -> Linear(hidden, classes); hidden=0: logistic regression."""
    if hidden <= 0:
        return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(in_features, classes)))
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(in_features, hidden),
            relu=nn.ReLU(),
            fc2=nn.Linear(hidden, classes),
        )
    )


class InputGate(nn.Module):
    """Per-feature multiplicative gate over the input (all dims but the batch)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate


def _first_linear(model: nn.Module, n_features: int) -> nn.Linear | None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return m if isinstance(m, nn.Linear) and m.in_features == n_features else None
    return None


class _Features:
    """The per-feature parameter groups and their proximal step."""

    def __init__(self, model: nn.Module, n_features: int, mode: str) -> None:
        self.mode = mode
        if mode == "linear":
            lin = _first_linear(model, n_features)
            assert lin is not None
            self.param = lin.weight  # (out, features): feature f is column f
        else:
            self.param = model.gate.gate  # type: ignore[union-attr]
        self.alive = torch.ones(n_features, dtype=torch.bool)

    def _mat(self) -> torch.Tensor:
        p = self.param.detach()
        return p if self.mode == "linear" else p.reshape(1, -1)

    def norms(self) -> torch.Tensor:
        return self._mat().norm(dim=0)

    @torch.no_grad()
    def prox(self, thr: float) -> None:
        m = self._mat()
        nrm = m.norm(dim=0)
        factor = torch.clamp(1 - thr / nrm.clamp_min(1e-12), min=0.0) * self.alive
        m.mul_(factor)

    @torch.no_grad()
    def freeze_zeros(self) -> None:
        self.alive &= self.norms() > 0


MOMENTUM = 0.9


def _train(model, feats, x, y, epochs, lr, batch_size, penalty, rng):
    """Proximal SGD with momentum; the threshold uses the momentum's effective step lr / (1 - beta),
    so that ``penalty`` means what it means in the objective mean(CE) + penalty * sum_f ||w_f||."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt[b]), yt[b]).backward()
            opt.step()
            feats.prox(lr / (1 - MOMENTUM) * penalty)
    model.eval()


def drop_input_features(model: nn.Module, kept: list[int]) -> nn.Module:
    """A copy of ``model`` (first layer a Linear over the flattened input) that reads only ``kept`` features."""
    new = copy.deepcopy(model)
    for name, m in new.named_modules():
        if isinstance(m, nn.Linear):
            lin = nn.Linear(len(kept), m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(m.weight[:, kept])
                if m.bias is not None:
                    lin.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, child, lin)
            return new
    raise UserError("drop_input_features: the model has no Linear layer reading its input.")


def lasso_path(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    penalties: list[float],
    *,
    mode: str = "auto",
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 64,
    refit_epochs: int = 0,
    feature_names: list[str] | None = None,
    seed: int = 0,
) -> LassoPath:
    """Go up ``penalties`` (sorted ascending), training ``epochs`` per step from the previous one.

    ``mode``: "linear" (group lasso on the first Linear's input columns), "gate" (L1 on a per-feature
    input gate) or "auto" (linear when the first layer is a Linear over the flattened input).
    """
    from edge_compress.zoo.train import accuracy

    n_features = int(np.prod(x_train.shape[1:]))
    if mode == "auto":
        mode = "linear" if _first_linear(model, n_features) is not None else "gate"
    if mode == "linear" and _first_linear(model, n_features) is None:
        raise UserError(
            f"lasso mode 'linear' needs a first Linear layer over the {n_features} input features; use mode='gate'."
        )
    if mode not in ("linear", "gate"):
        raise UserError(f"unknown lasso mode {mode!r} (use linear, gate or auto).")
    if feature_names is not None and len(feature_names) != n_features:
        raise UserError(f"{len(feature_names)} feature names given for {n_features} features.")
    work = copy.deepcopy(model)
    if mode == "gate":
        work = nn.Sequential(OrderedDict(gate=InputGate(tuple(x_train.shape[1:])), model=work))
    feats = _Features(work, n_features, mode)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    path = LassoPath(mode, n_features, accuracy(work, x_test, y_test), feature_names=feature_names)
    for lam in sorted(penalties):
        _train(work, feats, x_train, y_train, epochs, lr, batch_size, lam, rng)
        feats.freeze_zeros()
        kept = np.flatnonzero(feats.alive.numpy()).tolist()
        dropped = np.flatnonzero(~feats.alive.numpy()).tolist()
        step = LassoStep(float(lam), kept, dropped, accuracy(work, x_test, y_test))
        if refit_epochs > 0 and kept:
            refit = copy.deepcopy(work)
            rfeats = _Features(refit, n_features, mode)
            rfeats.alive = feats.alive.clone()
            _train(refit, rfeats, x_train, y_train, refit_epochs, lr, batch_size, 0.0, rng)
            step.acc_refit = accuracy(refit, x_test, y_test)
        path.steps.append(step)
    path.model = work
    return path


def sklearn_l1_path(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cs: list[float]
) -> list[dict[str, float]]:
    """scikit-learn's L1 logistic regression over inverse strengths ``cs``: features kept, test accuracy."""
    from sklearn.linear_model import LogisticRegression

    xtr, xte = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    binary = len(np.unique(y_train)) == 2
    modern = inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated"
    out = []
    for c in sorted(cs, reverse=True):
        kw: dict[str, Any] = {"l1_ratio": 1.0} if modern else {"penalty": "l1"}
        clf = LogisticRegression(C=c, solver="liblinear" if binary else "saga", max_iter=3000, tol=1e-3, **kw)
        clf.fit(xtr, y_train)
        kept = int((np.abs(clf.coef_).sum(0) > 0).sum())
        out.append(
            {
                "C": float(c),
                "penalty": 1.0 / (c * len(xtr)),
                "n_kept": kept,
                "acc": float(clf.score(xte, y_test)),
            }
        )
    return out


def l1_strengths(n: int = 8, lo: float = 1e-3, hi: float = 1.0) -> list[float]:
    """A log-spaced path of penalties."""
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), n)]
