"""Fitting a target's cost model from measurements (non-negative least squares on roofline terms).

A fused kernel's time is a non-negative combination of its roofline terms, with one coefficient
vector per kernel class (``kind/precision``, e.g. ``conv/int8``)::

    t_k = sum_j theta[class(k), j] * term_j(k)            (milliseconds)

with terms ``compute`` (MACs / peak MAC/s of that precision), ``weights`` and ``acts`` (bytes /
memory bandwidth), ``launch`` (one kernel dispatch). A whole-model observation is the row
``base + sum_k t_k = latency``; a per-kernel timing from the profiler is the row ``t_k = time``.
Rows are divided by their measured value (relative error, as the accuracy targets are stated),
and a weak ridge row pulls each coefficient toward the roofline prior, so classes with few
observations stay sensible and every new measurement moves the fit. ``rel_error`` is the 80th
percentile of the cross-validated relative error: the width of the optimistic bounds that
selection uses.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.costmodel import (
    DEFAULT_BASE_MS,
    DEFAULT_LAUNCH_MS,
    DEFAULT_P99_RATIO,
    Kernel,
    activation_peak_bytes,
    peak_macs_per_s,
    precision_fallback,
    weights_bytes,
)

if TYPE_CHECKING:
    from edge_compress.costmodel import CostModel
    from edge_compress.profiles import DeviceProfile

TERMS = ("compute", "weights", "acts", "launch")
PRIOR = {"compute": 1.0, "weights": 1.0, "acts": 1.0, "launch": 1.0}
RIDGE = 0.5  # weight of each prior row, in typical observation rows
KERNEL_ROW_WEIGHT = 0.5  # a profiled kernel row counts half a whole-model row (profiler overhead)


def kernel_class(k: Kernel) -> str:
    return f"{k.kind}/{k.precision}"


def kernel_terms(k: Kernel, profile: DeviceProfile, threads: int = 1) -> dict[str, float]:
    """The roofline terms of one kernel, milliseconds."""
    bw = profile.memory.bandwidth_gb_s * 1e9
    return {
        "compute": k.macs / peak_macs_per_s(profile, k.precision, threads) * 1e3,
        "weights": k.weight_bytes / bw * 1e3,
        "acts": k.act_bytes / bw * 1e3,
        "launch": DEFAULT_LAUNCH_MS,
    }


def _coeffs_for(cm: CostModel, cls: str) -> dict[str, float]:
    if cls in cm.coeffs:
        return cm.coeffs[cls]
    kind, prec = cls.split("/")
    p: str | None = prec
    while p is not None:
        c = f"{kind}/{p}"
        if c in cm.coeffs:
            return cm.coeffs[c]
        p = precision_fallback(p)
    return PRIOR


def kernel_time_ms(cm: CostModel, k: Kernel) -> float:
    th = _coeffs_for(cm, kernel_class(k))
    t = kernel_terms(k, cm.profile, cm.threads)
    return float(sum(th.get(j, 0.0) * t[j] for j in TERMS))


# ---------------------------------------------------------------------------------------------


class _Design:
    """Column layout: one block of TERMS per kernel class, then the model base column."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.index = {c: i for i, c in enumerate(classes)}
        self.n = len(classes) * len(TERMS) + 1

    def row(self, kernels: list[Kernel], profile: DeviceProfile, threads: int, base: bool) -> np.ndarray:
        r = np.zeros(self.n)
        for k in kernels:
            off = self.index[kernel_class(k)] * len(TERMS)
            t = kernel_terms(k, profile, threads)
            for j, name in enumerate(TERMS):
                r[off + j] += t[name]
        if base:
            r[-1] = DEFAULT_BASE_MS
        return r

    def prior(self) -> np.ndarray:
        v = np.array([PRIOR[t] for _ in self.classes for t in TERMS] + [1.0])
        return v


def _rows(cm: CostModel, obs: list[dict[str, Any]], design: _Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A, y, w = [], [], []
    for o in obs:
        ks = [Kernel.from_json(k) for k in o["kernels"]]
        if o.get("latency_ms"):
            A.append(design.row(ks, cm.profile, cm.threads, True))
            y.append(float(o["latency_ms"]))
            w.append(1.0)
        for name, t in (o.get("kernel_ms") or {}).items():
            kk = [k for k in ks if k.name == name]
            if kk and t > 0:
                A.append(design.row(kk, cm.profile, cm.threads, False))
                y.append(float(t))
                w.append(KERNEL_ROW_WEIGHT)
    return np.array(A).reshape(-1, design.n), np.array(y), np.array(w)


def _solve(A: np.ndarray, y: np.ndarray, w: np.ndarray, design: _Design, ridge: float) -> np.ndarray:
    from scipy.optimize import nnls

    scale = w / y
    As = A * scale[:, None]
    ys = y * scale
    prior = design.prior()
    # One prior row per coefficient, as heavy as ``ridge`` typical observations of that column
    # (the RMS of its non-zero entries): it decides classes nobody measured and fades with data.
    nz = As != 0
    cnt = nz.sum(axis=0)
    colmag = np.sqrt(np.where(cnt > 0, (As**2).sum(axis=0) / np.maximum(cnt, 1), 0.0))
    colmag = np.where(colmag > 0, colmag, 1.0)
    R = np.diag(colmag) * math.sqrt(ridge)
    theta, _ = nnls(np.vstack([As, R]), np.concatenate([ys, R @ prior]), maxiter=50 * design.n)
    return theta


def _predict(A: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return A @ theta


def fit_costmodel(
    cm: CostModel, *, ridge: float = RIDGE, folds: int = 5, seed: int = 0, update_error: bool = True
) -> dict[str, Any]:
    """Refit ``cm`` (in place) on all its observations; returns fit statistics."""
    obs = [o for o in cm.observations if o.get("kernels")]
    classes = sorted({kernel_class(Kernel.from_json(k)) for o in obs for k in o["kernels"]})
    if not classes or not any(o.get("latency_ms") or o.get("kernel_ms") for o in obs):
        return {"observations": 0}
    design = _Design(classes)
    A, y, w = _rows(cm, obs, design)
    theta = _solve(A, y, w, design, ridge)
    cm.coeffs = {
        c: {t: float(theta[i * len(TERMS) + j]) for j, t in enumerate(TERMS)} for i, c in enumerate(classes)
    }
    cm.base_ms = float(theta[-1] * DEFAULT_BASE_MS)
    # cross-validated relative error on whole-model observations
    model_obs = [o for o in obs if o.get("latency_ms")]
    errs = []
    if folds > 1 and len(model_obs) >= 2 * folds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(model_obs))
        for f in range(folds):
            test = [model_obs[i] for i in order[f::folds]]
            test_ids = {id(o) for o in test}
            train = [o for o in obs if id(o) not in test_ids]
            At, yt, wt = _rows(cm, train, design)
            th = _solve(At, yt, wt, design, ridge)
            Ae, ye, _ = _rows(cm, [{**o, "kernel_ms": {}} for o in test], design)
            errs += list(np.abs(_predict(Ae, th) / ye - 1.0))
    Am, ym, _ = _rows(cm, [{**o, "kernel_ms": {}} for o in model_obs], design)
    fit_err = np.abs(_predict(Am, theta) / ym - 1.0) if len(ym) else np.array([])
    basis = np.array(errs) if errs else fit_err * 1.5
    if update_error and len(basis):
        cm.rel_error = float(max(0.03, np.percentile(basis, 80)))
    # p99 / median, memory base, energy scale
    ratios = [o["p99_ms"] / o["latency_ms"] for o in model_obs if o.get("p99_ms") and o["latency_ms"] > 0]
    cm.p99_ratio = float(np.median(ratios)) if ratios else DEFAULT_P99_RATIO
    bases = []
    scales = []
    for o in model_obs:
        ks = [Kernel.from_json(k) for k in o["kernels"]]
        if o.get("rss_bytes"):
            bases.append(o["rss_bytes"] - weights_bytes(ks) - activation_peak_bytes(ks))
        if o.get("energy_measured") and o.get("energy_j"):
            scales.append(o["energy_j"] / (cm.power_w() * o["latency_ms"] / 1e3))
    cm.memory_base_bytes = float(np.median(bases)) if bases else cm.memory_base_bytes
    cm.energy_scale = float(np.median(scales)) if scales else None
    cm.fit_info = {
        "observations": len(obs),
        "model_rows": int(len(model_obs)),
        "kernel_rows": int(len(y) - len(model_obs)),
        "classes": classes,
        "fit_mape_pct": float(100 * fit_err.mean()) if len(fit_err) else None,
        "cv_mape_pct": float(100 * np.mean(errs)) if errs else None,
        "cv_within10_pct": float(100 * np.mean(np.array(errs) <= 0.10)) if errs else None,
        "rel_error": cm.rel_error,
    }
    return cm.fit_info
