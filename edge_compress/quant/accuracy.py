"""Accuracy drop as a monotone function of the (predicted) SQNR, fitted on a few measured plans.

``margin``: each evaluation sample's normalized logit margin ``r = (z_true - max_other z) / rms(z)``;
noise at a given SQNR puts a Gaussian of std ``sqrt(kappa / SQNR)`` on ``r``, so the predicted
accuracy is ``mean Phi(r / std)`` (one fitted parameter, kappa). ``margin2``: the same with
``std = sqrt(kappa / SQNR^gamma)``, a second parameter for the steepness of the cliff (a 4-bit
stem takes mobilenetv2 from 0 to a 25 pp drop within a few dB, steeper than ``margin`` can follow).
``logistic``: a logistic in SQNR dB from 0 to the drop to chance. ``auto`` keeps the one with the
smaller leave-one-out error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_compress.errors import UserError


def _phi(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)


@dataclass
class AccuracyCurve:
    """Monotone map from predicted SQNR (dB) to accuracy drop (percentage points).

    ``margin``: each evaluation sample's margin ``r = (z_true - max_other z) / rms(z)``; noise at a
    given SQNR puts a Gaussian of std ``sqrt(kappa / SQNR)`` on ``r``, so the predicted accuracy is
    ``mean Phi(r / std)`` and the drop is the fp32 accuracy minus that; ``kappa`` is fitted.
    ``margin2``: ``std = sqrt(kappa / SQNR^gamma)``, ``kappa`` and ``gamma`` fitted.
    ``logistic``: ``drop = top / (1 + exp((sqnr_db - mid) / width))`` with ``top`` the drop to chance.
    """

    kind: str
    params: dict[str, float]
    fp32_acc: float
    margins: list[float] = field(default_factory=list)
    fit_points: list[tuple[float, float]] = field(
        default_factory=list
    )  # (predicted sqnr_db, measured drop pp)
    fit_mae_pp: float = float("nan")
    plan_digests: list[str] = field(default_factory=list)  # plans the curve was fitted on

    def drop_pp(self, sqnr_db: float | np.ndarray) -> np.ndarray | float:
        s = np.asarray(sqnr_db, dtype=np.float64)
        if self.kind in ("margin", "margin2"):
            r = np.asarray(self.margins)
            g = self.params.get("gamma", 1.0)
            std = np.sqrt(self.params["kappa"] / np.power(10.0, g * s / 10.0))
            acc = _phi(r[None, :] / np.maximum(std.reshape(-1, 1), 1e-30)).mean(axis=1)
            out = 100.0 * (self.fp32_acc - acc)
        elif self.kind == "logistic":
            z = np.clip((s - self.params["mid"]) / self.params["width"], -60, 60)
            out = self.params["top"] / (1.0 + np.exp(z))
        else:
            raise UserError(f"unknown accuracy curve {self.kind!r} (use margin, margin2 or logistic).")
        out = np.asarray(out).reshape(s.shape)
        return float(out) if out.ndim == 0 else out

    @classmethod
    def fit(
        cls,
        kind: str,
        sqnr_db: np.ndarray,
        drop_pp: np.ndarray,
        fp32_acc: float,
        margins: np.ndarray,
        n_classes: int,
    ) -> AccuracyCurve:
        """Least-squares fit of one curve; ``kind="auto"`` fits both and keeps the one with the
        smaller leave-one-out error over the fitting plans (``params["loo_mae_pp"]``)."""
        s = np.asarray(sqnr_db, dtype=np.float64)
        d = np.asarray(drop_pp, dtype=np.float64)
        kinds = ("margin", "logistic", "margin2") if kind == "auto" else (kind,)
        best: tuple[float, AccuracyCurve] | None = None
        for k in kinds:
            curve = cls._fit_one(k, s, d, fp32_acc, margins, n_classes)
            loo = []
            if len(s) >= 3:
                for i in range(len(s)):
                    keep = np.arange(len(s)) != i
                    c = cls._fit_one(k, s[keep], d[keep], fp32_acc, margins, n_classes)
                    loo.append(abs(float(c.drop_pp(s[i])) - d[i]))
            curve.params["loo_mae_pp"] = float(np.mean(loo)) if loo else float("nan")
            score = curve.params["loo_mae_pp"] if loo else 0.0
            if best is None or score < best[0]:
                best = (score, curve)
        assert best is not None
        curve = best[1]
        curve.fit_points = [(float(a), float(b)) for a, b in zip(s, d, strict=True)]
        curve.fit_mae_pp = float(np.mean(np.abs(np.atleast_1d(curve.drop_pp(s)) - d)))
        return curve

    @classmethod
    def _fit_one(
        cls, kind: str, s: np.ndarray, d: np.ndarray, fp32_acc: float, margins: np.ndarray, n_classes: int
    ) -> AccuracyCurve:
        if kind == "margin":
            kappa, _ = _fit_margin(s, d, fp32_acc, margins, np.logspace(-4, 4, 161), (1.0,))
            return cls("margin", {"kappa": kappa}, fp32_acc, list(map(float, margins)))
        if kind == "margin2":
            kappa, gamma = _fit_margin(
                s, d, fp32_acc, margins, np.logspace(-4, 4, 81), np.linspace(0.5, 3.0, 26)
            )
            return cls("margin2", {"kappa": kappa, "gamma": gamma}, fp32_acc, list(map(float, margins)))
        if kind == "logistic":
            top = 100.0 * max(fp32_acc - 1.0 / n_classes, 1e-3)
            mids = np.linspace(min(s.min(), 0.0) - 5, s.max() + 5, 121)
            widths = np.logspace(-1, 1.3, 40)
            z = np.clip((s[None, None, :] - mids[:, None, None]) / widths[None, :, None], -60, 60)
            err = ((top / (1.0 + np.exp(z)) - d[None, None, :]) ** 2).mean(axis=2)
            i, j = np.unravel_index(int(np.argmin(err)), err.shape)
            return cls("logistic", {"top": top, "mid": float(mids[i]), "width": float(widths[j])}, fp32_acc)
        raise UserError(f"unknown accuracy curve {kind!r} (use auto, margin, margin2 or logistic).")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "params": self.params,
            "fp32_acc": self.fp32_acc,
            "margins": self.margins,
            "fit_points": self.fit_points,
            "fit_mae_pp": self.fit_mae_pp,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AccuracyCurve:
        return cls(
            d["kind"],
            dict(d["params"]),
            float(d["fp32_acc"]),
            list(d.get("margins", [])),
            [tuple(p) for p in d.get("fit_points", [])],
            float(d.get("fit_mae_pp", float("nan"))),
        )


def _fit_margin(
    s: np.ndarray, d: np.ndarray, fp32_acc: float, margins: np.ndarray, kappas: np.ndarray, gammas: Any
) -> tuple[float, float]:
    """Grid least squares of the margin curve, ``std = sqrt(kappa / SQNR^gamma)``: (kappa, gamma)."""
    r = np.asarray(margins, dtype=np.float64)
    best = (np.inf, 1.0, 1.0)
    for gm in gammas:
        std = np.sqrt(kappas[:, None] / np.power(10.0, gm * s[None, :] / 10.0))  # (K, P)
        acc = _phi(r[None, None, :] / np.maximum(std[:, :, None], 1e-30)).mean(axis=2)
        err = ((100.0 * (fp32_acc - acc) - d[None, :]) ** 2).mean(axis=1)
        i = int(np.argmin(err))
        if err[i] < best[0]:  # the first of equals, as argmin
            best = (float(err[i]), float(kappas[i]), float(gm))
    return best[1], best[2]


def logit_margins(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(z_true - max_other z) / rms(z) per sample: negative for misclassified samples."""
    z = np.asarray(logits, dtype=np.float64)
    idx = np.arange(len(z))
    true = z[idx, y]
    other = z.copy()
    other[idx, y] = -np.inf
    rms = np.sqrt((z**2).mean(axis=1)) + 1e-12
    return (true - other.max(axis=1)) / rms
