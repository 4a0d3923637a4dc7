"""Fitting a target's cost model from measurements (non-negative least squares on roofline terms).

A fused kernel's time is a non-negative combination of its roofline terms, with one coefficient
vector per kernel class (``kind/precision``, e.g. ``conv/int8``)::

    t_k = sum_j theta[block(class(k), j), j] * term_j(k)            (milliseconds)

with terms for compute (MACs / peak MAC/s of that precision, with padded or narrow channels),
memory traffic (weights, input / output activations, an im2col patch matrix: elements over the
memory bandwidth), per-output-position overheads, what follows the kernel (a pool, a global
pool, a residual add, a flatten, a change of precision: their elements and one operator dispatch
each) and one dispatch of the kernel itself. Most coefficients belong to the kernel's class; the
few that describe operators a runtime runs whatever the kernel are shared by all classes or by
the classes of one precision (``TERM_SCOPE``).

A whole-model observation is the row ``base + sum_k t_k = latency``; a per-kernel timing from
the runtime's operator profile is the row ``t_k = time`` (weighted less: profilers distort small
operators). Rows are divided by their measured value (relative error, as the accuracy targets
are stated), and a ridge row pulls each coefficient toward the roofline prior, so classes with
few observations stay sensible and every new measurement moves the fit. With few observations
the fit uses fewer terms (``basic``) or one scale per class on the roofline (``simple``).
``rel_error`` is the 80th percentile of the cross-validated relative error: the width of the
optimistic bounds that selection uses.

Measured latency need not be additive in the kernels: on a shared host timed by reference-paired
runs, small models come out relatively slower than large ones, and by how much changes between
measurement campaigns (the same 150 models re-measured in a new process: per-model ratios from
0.73 to 0.95 between 0.05 and 0.5 ms). With enough whole-model observations the fit therefore
works on ``ref x (latency / ref)^(1 / power)`` and predicts ``ref x (sum / ref)^power``, the one
exponent chosen on the training error (``POWER_GRID``), continued linearly above the largest
measured model so it does not extrapolate a power law.
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
    kernels_from_json,
    peak_macs_per_s,
    precision_fallback,
    weights_bytes,
)

if TYPE_CHECKING:
    from edge_compress.costmodel import CostModel
    from edge_compress.profiles import DeviceProfile

TERMS = (
    "compute",
    "compute_pad",
    "im2col",
    "weights",
    "in",
    "out",
    "pool",
    "gap",
    "join",
    "pixels",
    "pixels_smallk",
    "compute_narrow",
    "launch",
    "group_launch",
    "layout_launch",
    "pool_launch",
    "gap_launch",
    "flat_launch",
    "join_launch",
    "xprec_launch",
)
IO_TERMS = ("in", "out", "launch")
BASIC_TERMS = ("compute", "compute_pad", "weights", "in", "out", "pixels", "launch")
# What a coefficient shrinks toward when its class has few observations: the roofline (sum form),
# with the correction terms off.
PRIOR = {t: 0.0 for t in TERMS} | {"compute": 1.0, "weights": 1.0, "in": 1.0, "out": 1.0, "launch": 1.0}
SHARED = "*"  # the pseudo-class of coefficients every kernel class shares
# Which kernels share a term's coefficient: "class" (default: each kernel class its own), "precision"
# (the classes of one activation precision / layout: a pool or residual add after an int8 convolution
# is the same uint8 kernel whichever convolution produced its input), "all" (the extra operators
# a runtime inserts around a kernel: one dispatch each, whatever the kernel).
TERM_SCOPE: dict[str, str] = {
    "pool": "precision",
    "gap": "precision",
    "join": "precision",
    "pool_launch": "all",
    "gap_launch": "all",
    "flat_launch": "all",
    "join_launch": "all",
    "xprec_launch": "all",
}
RIDGE = 1.0  # weight of each prior row, in typical observation rows
KERNEL_ROW_WEIGHT = 0.1  # a profiled kernel row vs one whole-model row
# Per-call overhead of the runtime (an empty model's latency) when turning profiled shares into
# milliseconds; ``fit_info["call_overhead_ms"]`` overrides it once measured on the target.
BASE_GUESS_MS = 0.02
FORM: str | None = None  # force a form (experiments); None: the richest the data supports
MIN_ROWS_PER_COEFF = 1.0
FORM_KERNEL_ROW_SUPPORT = 0.3  # what a profiled kernel row counts for when choosing the form
# Measured latency as a power of the kernels' sum (see ``_with_power``): the exponents tried, and
# the whole-model observations needed before one other than 1 is fitted.
POWER_GRID = tuple(round(0.6 + 0.05 * i, 2) for i in range(11))  # 0.60 ... 1.10
MIN_MODEL_ROWS_FOR_POWER = 30


def kernel_class(k: Kernel) -> str:
    """``kind/precision``; float 2-D convolutions whose output channels fill 8-lane blocks are their
    own class (onnxruntime runs them in its blocked NCHWc layout, a different kernel family)."""
    if k.precision == "fp32" and k.kind in ("conv", "depthwise_conv") and k.dims == 2 and k.cout % 8 == 0:
        return f"{k.kind}/fp32nchwc"
    return f"{k.kind}/{k.precision}"


def _pad(x: int, b: int) -> int:
    return -(-x // b) * b


def kernel_terms(k: Kernel, profile: DeviceProfile, threads: int = 1) -> dict[str, float]:
    """The regression terms of one kernel, in milliseconds of roofline time.

    ``compute`` (MACs at the precision's peak), ``compute_pad`` (MACs with channels padded to the
    8-lane vector width: small or odd channel counts waste lanes), ``im2col`` (the patch matrix a
    GEMM-based convolution gathers), ``weights`` / ``in`` / ``out`` (elements over memory bandwidth:
    weight dequantization, activation quantize / dequantize / layout copies), ``pool`` (elements
    a following pool reduces), ``join`` (a residual add / concat on the output), ``pixels`` and
    ``pixels_smallk`` (per-output-position overhead, larger when the reduction is short, as for a
    first convolution on a 1-channel image), ``launch`` (one kernel dispatch), ``group_launch`` (one
    dispatch per group: onnxruntime's plain float convolution runs a grouped or depthwise
    convolution group by group), ``layout_launch`` (the transpose after an 8-bit convolution whose
    output leaves the runtime's NHWC chain).
    """
    bw_ms = profile.memory.bandwidth_gb_s * 1e9 / 1e3  # bytes per ms
    ab = 4.0 if k.precision in ("fp32", "wonly") else 2.0 if k.precision == "int16" else 1.0
    if k.kind == "io":
        return {"in": k.in_elems * 4.0 / bw_ms, "out": k.out_elems * 4.0 / bw_ms, "launch": DEFAULT_LAUNCH_MS}
    peak = peak_macs_per_s(profile, k.precision, threads) / 1e3  # MACs per ms
    cg = max(1, k.cin // max(1, k.groups))
    if k.kind == "depthwise_conv":
        padded = k.out_spatial * _pad(k.cout, 8) * k.kernel_area
    else:
        padded = k.out_spatial * _pad(k.cout, 8) * _pad(cg, 8) * k.kernel_area
    px = k.out_spatial * 4.0 / bw_ms if k.kind != "linear" else 0.0  # a GEMV has no spatial positions
    spatial = k.kind != "linear"
    reduces = spatial and k.next_in_elems < k.out_elems
    gap = reduces and k.next_in_elems <= k.cout  # global pooling
    # a local pool: known from the model (``pooled_elems``), else inferred from the next kernel
    # reading fewer elements (which misses a pool followed by a global pool)
    pool = spatial and (k.pooled_elems > 0 or (reduces and not gap))
    gap_in = k.pooled_elems if k.pooled_elems > 0 else k.out_elems  # what the global pool reads
    # onnxruntime runs 8-bit convolutions in NHWC and transposes where the chain of them ends: at a
    # residual add, a pool, a flatten into a linear layer, a change of precision, the model output
    leaves_nhwc = (
        k.precision == "int8"
        and spatial
        and (k.joins or k.pooled_elems > 0 or k.next_kind in ("linear", "") or k.next_precision != "int8")
    )
    launch = DEFAULT_LAUNCH_MS
    return {
        "compute": k.macs / peak,
        "compute_pad": padded / peak,
        "im2col": k.out_spatial * cg * k.kernel_area * ab / bw_ms if k.kind != "linear" else 0.0,
        "weights": k.weight_params * 4.0 / bw_ms,
        "in": k.in_elems * ab / bw_ms,
        "out": k.out_elems * ab / bw_ms,
        "pool": k.out_elems * ab / bw_ms if pool else 0.0,
        "gap": gap_in * ab / bw_ms if gap else 0.0,
        "join": k.out_elems * ab / bw_ms if k.joins else 0.0,
        "pixels": px,
        "pixels_smallk": px if cg * k.kernel_area < 32 else 0.0,
        "compute_narrow": k.macs / peak if spatial and k.cout % 8 else 0.0,
        "launch": launch,
        "group_launch": launch * k.groups if k.groups > 1 else 0.0,
        "layout_launch": launch if leaves_nhwc else 0.0,
        "pool_launch": launch if pool else 0.0,
        "gap_launch": launch if gap else 0.0,
        "flat_launch": launch if spatial and k.next_kind == "linear" else 0.0,
        "join_launch": launch if k.joins else 0.0,
        "xprec_launch": launch if spatial and k.next_precision not in ("", k.precision) else 0.0,
    }


def effective_coeffs(cm: CostModel, cls: str) -> dict[str, float] | None:
    """The coefficients a kernel of class ``cls`` is predicted with: its class's (or, never fitted,
    its nearest fitted precision's) plus the shared blocks' (``TERM_SCOPE``). None: nothing fitted."""
    kind, prec = cls.split("/")
    p: str | None = prec
    while p is not None:
        c = f"{kind}/{p}"
        own = cm.coeffs.get(c)
        if own is not None and "roofline" in own:
            return own
        out: dict[str, float] = {}
        found = False
        for t in TERMS if kind != "io" else IO_TERMS:
            for blk in _blocks_of(c, t, "full"):
                th = cm.coeffs.get(blk)
                if th is not None and (blk != c or own is not None):
                    out[t] = out.get(t, 0.0) + th.get(t, 0.0)
                    found = found or blk == c
        if found:
            return out
        p = precision_fallback(p)
    return None


def kernel_time_ms(cm: CostModel, k: Kernel) -> float:
    from edge_compress.costmodel import roofline_ms

    th = effective_coeffs(cm, kernel_class(k))
    if th is None:  # a kind never measured on this target: the roofline
        return roofline_ms(k, cm.profile, cm.threads)
    if "roofline" in th:  # fitted on few observations: a scaled roofline
        return th["roofline"] * roofline_ms(k, cm.profile, cm.threads)
    t = kernel_terms(k, cm.profile, cm.threads)
    return float(sum(th.get(j, 0.0) * v for j, v in t.items()))


# ---------------------------------------------------------------------------------------------


def _blocks_of(c: str, term: str, form: str) -> list[str]:
    """The coefficient blocks a kernel of class ``c`` adds its ``term`` to (see :class:`_Design`)."""
    if form != "full" or c.startswith("io/"):
        return [c]
    scope = TERM_SCOPE.get(term, "class")
    if scope == "all":
        return [SHARED]
    if scope == "precision":
        return [f"{SHARED}/{c.split('/', 1)[1]}"]
    return [c]


class _Design:
    """Column layout: one block of terms per kernel class (``io`` classes have fewer), the shared
    blocks, then the base.

    A kernel's term goes to the block ``TERM_SCOPE`` names: its class's, the one of every class of
    its precision (``*/int8``: e.g. a pool after an int8 convolution runs the same uint8 pooling
    kernel whatever the convolution), or the one all classes share (``*``: one more operator
    dispatch). Sharing is what lets a few hundred measured models fit the rarer combinations.
    """

    def __init__(self, classes: list[str], form: str = "full") -> None:
        self.classes, self.form = classes, form
        self.simple = form == "simple"
        self.cols: list[tuple[str, str]] = []
        for c in classes:
            if form == "simple":
                terms: tuple[str, ...] = ("roofline",)
            elif c.startswith("io/"):
                terms = IO_TERMS
            else:
                terms = BASIC_TERMS if form == "basic" else TERMS
            for t in terms:
                for blk in _blocks_of(c, t, form):
                    if (blk, t) not in self.cols:
                        self.cols.append((blk, t))
        self.index = {c: i for i, c in enumerate(self.cols)}
        self.n = len(self.cols) + 1

    def row(self, kernels: list[Kernel], profile: DeviceProfile, threads: int, base: bool) -> np.ndarray:
        r = np.zeros(self.n)
        for k in kernels:
            c = kernel_class(k)
            if self.simple:
                from edge_compress.costmodel import roofline_ms

                r[self.index[(c, "roofline")]] += roofline_ms(k, profile, threads)
                continue
            for name, v in kernel_terms(k, profile, threads).items():
                for blk in _blocks_of(c, name, self.form):
                    j = self.index.get((blk, name))
                    if j is not None:
                        r[j] += v
        if base:
            r[-1] = DEFAULT_BASE_MS
        return r

    def prior(self) -> np.ndarray:
        """What each coefficient shrinks toward: the roofline (correction terms off)."""
        return np.array([1.0 if t == "roofline" else PRIOR.get(t, 0.0) for _, t in self.cols] + [1.0])


def _rows(
    cm: CostModel, obs: list[dict[str, Any]], design: _Design, base_ms: float = BASE_GUESS_MS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-model rows, and per-kernel rows: a kernel's profiled share of the model's time
    times the measured latency (the profiler's absolute level drifts with machine load, its
    shares much less), or its profiled time when the model latency is unknown."""
    A, y, w = [], [], []
    for o in obs:
        ks = kernels_from_json(o["kernels"])
        lat = o.get("latency_ms")
        if lat:
            A.append(design.row(ks, cm.profile, cm.threads, True))
            y.append(float(lat))
            w.append(1.0)
        kms = o.get("kernel_ms") or {}
        total = sum(v for v in kms.values() if v > 0)
        for k in ks:
            t = kms.get(k.name, 0.0)
            if t <= 0 or total <= 0:
                continue
            if lat:
                t = t / total * max(1e-4, float(lat) - base_ms)
            A.append(design.row([k], cm.profile, cm.threads, False))
            y.append(float(t))
            w.append(KERNEL_ROW_WEIGHT)
    return np.array(A).reshape(-1, design.n), np.array(y), np.array(w)


def _solve(
    A: np.ndarray, y: np.ndarray, w: np.ndarray, design: _Design, ridge: float, base_ms: float | None = None
) -> np.ndarray:
    from scipy.optimize import nnls

    scale = w / y
    As = A * scale[:, None]
    ys = y * scale
    prior = design.prior()
    if base_ms is not None:  # the measured per-call overhead, not the generic guess
        prior[-1] = base_ms / DEFAULT_BASE_MS
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


def _with_power(obs: list[dict[str, Any]], power: float, ref_ms: float) -> list[dict[str, Any]]:
    """Observations with their latencies on the additive scale of ``power`` (see module doc)."""
    if power == 1.0:
        return obs
    return [
        {
            **o,
            "latency_ms": ref_ms * (float(o["latency_ms"]) / ref_ms) ** (1.0 / power),
            "measured_ms": o["latency_ms"],
        }
        if o.get("latency_ms")
        else o
        for o in obs
    ]


def _measured(obs: list[dict[str, Any]]) -> np.ndarray:
    return np.array([float(o.get("measured_ms") or o["latency_ms"]) for o in obs])


def _latency(T: np.ndarray, power: float, ref_ms: float, knee: float | None) -> np.ndarray:
    from edge_compress.costmodel import latency_curve

    return np.array([latency_curve(float(t), power, ref_ms, knee) for t in T])


def fit_costmodel(
    cm: CostModel, *, ridge: float = RIDGE, folds: int = 5, seed: int = 0, update_error: bool = True
) -> dict[str, Any]:
    """Refit ``cm`` (in place) on all its observations; returns fit statistics."""
    obs0 = [o for o in cm.observations if o.get("kernels")]
    obs = obs0
    classes = sorted({kernel_class(Kernel.from_json(k)) for o in obs for k in o["kernels"]})
    if not classes or not any(o.get("latency_ms") or o.get("kernel_ms") for o in obs):
        return {"observations": 0}
    # Model complexity follows the data: the richest form (full terms, basic terms, one scale on the
    # roofline per class) with at least MIN_ROWS_PER_COEFF weighted rows per coefficient (a handful
    # of measurements of a new target must not fit a hundred coefficients).
    measured_base = cm.fit_info.get("call_overhead_ms")  # an empty model's latency, when measured
    measured_base = float(measured_base) if measured_base else None
    base = measured_base or BASE_GUESS_MS
    forced = FORM
    for form in ("full", "basic", "simple"):
        design = _Design(classes, form)
        A, y, w = _rows(cm, obs, design, base)
        support = float(np.sum(np.where(w >= 1.0, 1.0, FORM_KERNEL_ROW_SUPPORT)))
        if forced == form or (forced is None and support >= MIN_ROWS_PER_COEFF * design.n):
            break
    theta = _solve(A, y, w, design, ridge, measured_base)
    # the exponent of measured latency vs the kernels' sum (1 with few whole-model observations)
    model_obs = [o for o in obs0 if o.get("latency_ms")]
    lats = np.array([float(o["latency_ms"]) for o in model_obs])
    power, ref_ms, knee = 1.0, 1.0, None
    if design.form == "full" and len(model_obs) >= MIN_MODEL_ROWS_FOR_POWER and FORM is None:
        ref_ms = float(np.median(lats))
        Am, _, _ = _rows(cm, [{**o, "kernel_ms": {}} for o in model_obs], design)
        best = (float(np.mean(np.abs(_predict(Am, theta) / lats - 1.0))), 1.0, theta)
        for b in POWER_GRID:
            if b == 1.0:
                continue
            tb = _with_power(obs, b, ref_ms)
            base_b = ref_ms * (base / ref_ms) ** (1.0 / b)
            meas_b = None if measured_base is None else base_b
            Ab, yb, wb = _rows(cm, tb, design, base_b)
            th = _solve(Ab, yb, wb, design, ridge, meas_b)
            err = float(np.mean(np.abs(_latency(_predict(Am, th), b, ref_ms, None) / lats - 1.0)))
            if err < best[0]:
                best = (err, b, th)
        _, power, theta = best
        if power != 1.0:
            obs = _with_power(obs, power, ref_ms)
            base = ref_ms * (base / ref_ms) ** (1.0 / power)
            measured_base = None if measured_base is None else base
            knee = float(np.max(_predict(Am, theta)))
    cm.latency_power, cm.latency_ref_ms, cm.latency_linear_above = power, ref_ms, knee
    cm.coeffs = {}
    for (c, t), i in design.index.items():
        cm.coeffs.setdefault(c, {})[t] = float(theta[i])
    cm.base_ms = float(theta[-1] * DEFAULT_BASE_MS)
    # cross-validated relative error on whole-model observations (on the measured scale)
    model_obs = [o for o in obs if o.get("latency_ms")]
    to_ms = lambda T: _latency(T, power, ref_ms, knee)  # noqa: E731
    errs = []
    if folds > 1 and len(model_obs) >= 2 * folds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(model_obs))
        for f in range(folds):
            test = [model_obs[i] for i in order[f::folds]]
            test_ids = {id(o) for o in test}
            train = [o for o in obs if id(o) not in test_ids]
            At, yt, wt = _rows(cm, train, design, base)
            th = _solve(At, yt, wt, design, ridge, measured_base)
            Ae, _, _ = _rows(cm, [{**o, "kernel_ms": {}} for o in test], design)
            errs += list(np.abs(to_ms(_predict(Ae, th)) / _measured(test) - 1.0))
    Am, _, _ = _rows(cm, [{**o, "kernel_ms": {}} for o in model_obs], design)
    fit_err = np.abs(to_ms(_predict(Am, theta)) / _measured(model_obs) - 1.0) if model_obs else np.array([])
    basis = np.array(errs) if errs else fit_err * 1.5
    if update_error and len(basis):
        cm.rel_error = float(max(0.03, np.percentile(basis, 80)))
    # p99 / median, memory base, energy scale (measured latencies)
    model_obs = [o for o in obs0 if o.get("latency_ms")]
    ratios = [o["p99_ms"] / o["latency_ms"] for o in model_obs if o.get("p99_ms") and o["latency_ms"] > 0]
    cm.p99_ratio = float(np.median(ratios)) if ratios else DEFAULT_P99_RATIO
    bases = []
    scales = []
    for o in model_obs:
        ks = kernels_from_json(o["kernels"])
        if o.get("rss_bytes"):
            bases.append(o["rss_bytes"] - weights_bytes(ks) - activation_peak_bytes(ks))
        if o.get("energy_measured") and o.get("energy_j"):
            scales.append(o["energy_j"] / (cm.power_w() * o["latency_ms"] / 1e3))
    cm.memory_base_bytes = float(np.median(bases)) if bases else cm.memory_base_bytes
    cm.energy_scale = float(np.median(scales)) if scales else None
    cm.fit_info = {
        "form": {
            "simple": "scaled roofline per class (few observations)",
            "basic": "basic roofline terms per class",
            "full": "roofline terms per class",
        }[design.form],
        "call_overhead_ms": cm.fit_info.get("call_overhead_ms") or None,
        "latency_power": power,
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
