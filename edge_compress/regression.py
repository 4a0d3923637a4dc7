"""Statistical comparison of a candidate measurement with its baseline; cell verdicts.

A metric regresses only when the change is BOTH statistically significant AND larger than the
practical threshold of that metric (suite ``thresholds``, percent; accuracy in points).

- Latency (median, p99), historical evidence: the raw samples of the candidate against those of
  the baseline run. Significance: one-sided Mann-Whitney U (median) and a bootstrap confidence
  interval of the ratio of the statistic (both must agree). Noise-aware: with a history of
  accepted runs, the threshold is widened to ``noise_k`` x the robust run-to-run spread of the
  cell's medians, because samples of one run are not independent of the run's conditions.
- Interleaved evidence: when a metric *looks* regressed (its point estimate above
  ``trigger`` x threshold, significant or not: on a noisy device the historical test has little
  power), the baseline artifact A and the candidate B are re-measured on the same device in the
  same session, after one discarded warm-up run, A B / B A / A B ... for several rounds (where
  the runner can, one agent process loads both models and times the blocks back to back, so no
  process start or import falls between A and B; peak memory needs a process per block). Each
  round gives a paired log-ratio; the effect is their mean, the CI a t-interval, significance a
  one-sided paired t-test. The verdict then rests on this paired evidence
  (``evidence: "interleaved"``). When the effect exceeds the threshold without being significant
  yet, more rounds are added once (up to ``max_rounds``); both looks use alpha / 2. The p99 of
  short blocks is their slowest sample, so for p99 the effect is the pooled p99 of all rounds and
  its interval and p-values come from a bootstrap over rounds.
- Peak memory and energy: one value per run; historical significance from a prediction interval
  over the accepted history (needs >= 3 runs), or the paired rounds when re-measured.
- Accuracy: two-proportion z-test when the sample count is known (else exact); bytes: exact.
- Throttled samples (flagged by the runner) are excluded before any statistic and counted.

Budget violations against the device profile are reported separately (:func:`check_budgets`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LATENCY = ("latency_median", "latency_p99")
SCALARS = ("peak_memory", "energy")
METRICS = (*LATENCY, *SCALARS, "accuracy", "bytes")
CELL_VERDICTS = ("ok", "regression", "improvement", "budget_violation", "infra_failure", "no_baseline")
BOOTSTRAP = 2000
MIN_HISTORY = 3
NOISE_FLOOR = 0.005  # relative spread below which history is treated as 0.5 % noisy (avoids z = inf)


@dataclass
class MetricVerdict:
    metric: str
    verdict: str  # ok | regression | improvement | inconclusive | no_baseline | not_measured | not_comparable
    evidence: str | None = None  # historical | interleaved | exact
    baseline: float | None = None
    candidate: float | None = None
    effect_pct: float | None = None  # relative change, percent (accuracy: percentage points)
    ci_pct: tuple[float, float] | None = None
    ci_level: float | None = None
    p_value: float | None = None
    threshold_pct: float = 0.0
    effective_threshold_pct: float = 0.0
    noise_pct: float | None = None
    n_baseline: int | None = None
    n_candidate: int | None = None
    suspect: bool = False  # looks regressed: worth a paired re-measure
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci_pct"] = list(self.ci_pct) if self.ci_pct else None
        return d


@dataclass
class BudgetViolation:
    budget: str  # Budget field name, e.g. latency_p99_ms
    limit: float
    value: float
    estimated: bool = False  # the value is an estimate (energy from a power model)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CellVerdict:
    key: str
    verdict: str
    evidence: str | None = None  # how the latency verdict was reached: historical | interleaved
    metrics: list[MetricVerdict] = field(default_factory=list)
    budget_violations: list[BudgetViolation] = field(default_factory=list)
    baseline_run_id: int | None = None
    baseline_measurement_id: int | None = None
    baseline_artifact_id: str | None = None
    candidate_artifact_id: str | None = None
    throttled_excluded: dict[str, int] = field(default_factory=dict)
    interleaved_rounds: int = 0
    error: str | None = None
    error_kind: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = [m.to_json() for m in self.metrics]
        d["budget_violations"] = [b.to_json() for b in self.budget_violations]
        return d

    def metric(self, name: str) -> MetricVerdict | None:
        return next((m for m in self.metrics if m.metric == name), None)


# ---------------------------------------------------------------------------------------------
# helpers


def clean(samples: Any, throttled: Any = None) -> tuple[np.ndarray, int]:
    """Samples as float array without throttled (and non-finite) ones, plus the excluded count."""
    x = np.asarray(samples, dtype=float).ravel()
    keep = np.isfinite(x)
    if throttled is not None:
        mask = np.asarray(throttled, dtype=bool).ravel()
        if mask.shape == x.shape:
            keep &= ~mask
    return x[keep], int((~keep).sum())


def _stat(metric: str):
    if metric == "latency_p99":
        return lambda a, axis=None: np.percentile(a, 99, axis=axis)
    return lambda a, axis=None: np.median(a, axis=axis)


def robust_spread_pct(values: Any) -> float | None:
    """Run-to-run spread of positive values, percent: 1.4826 x MAD of log values (None if < 3)."""
    v = np.asarray([x for x in values if x is not None and x > 0], dtype=float)
    if len(v) < MIN_HISTORY:
        return None
    lv = np.log(v)
    mad = float(np.median(np.abs(lv - np.median(lv)))) * 1.4826
    return 100.0 * (math.exp(mad) - 1.0)


def bootstrap_ratio_ci(
    base: np.ndarray, cand: np.ndarray, metric: str, level: float, n_boot: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap CI of stat(cand) / stat(base) (independent resampling of both)."""
    rng = np.random.default_rng(seed)
    stat = _stat(metric)
    ratios = np.empty(n_boot)
    chunk = max(1, int(2_000_000 // max(len(base), len(cand), 1)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        b = stat(base[rng.integers(0, len(base), (k, len(base)))], axis=1)
        c = stat(cand[rng.integers(0, len(cand), (k, len(cand)))], axis=1)
        ratios[start : start + k] = c / b
    tail = (1 - level) / 2
    lo, hi = np.quantile(ratios, [tail, 1 - tail])
    return float(lo), float(hi), ratios


def _decide(
    mv: MetricVerdict,
    p_up: float | None,
    p_down: float | None,
    alpha: float,
    trigger: float,
    center_effect: float | None = None,
) -> MetricVerdict:
    """Verdict from the effect, its one-sided p-values and the thresholds.

    ``center_effect``: the candidate against the centre (median) of the cell's accepted history,
    percent. A single baseline run can be unusually fast or slow on a noisy device, so with a
    history a historical verdict must hold against both, and either can make a metric suspect.
    """
    eff = mv.effect_pct
    if eff is None:
        return mv
    thr = mv.effective_threshold_pct
    sig_up = p_up is not None and p_up < alpha
    sig_down = p_down is not None and p_down < alpha
    up_center = center_effect is None or center_effect > thr
    down_center = center_effect is None or center_effect < -thr
    # looks changed: the point estimate alone decides (a noisy device may hide a real slowdown
    # from the historical test), against the baseline run or the history; on a device whose
    # run-to-run noise had to widen the threshold, the historical evidence cannot rule a
    # regression out at all. The paired re-measure then supplies the evidence.
    # An apparent improvement is suspect too: a baseline run measured in a slow spell makes an
    # unchanged candidate look faster, and an improvement verdict is only worth reporting once the
    # paired re-measure confirms it.
    mv.suspect = (
        abs(eff) > trigger * mv.threshold_pct
        or (center_effect is not None and abs(center_effect) > trigger * mv.threshold_pct)
        or thr > mv.threshold_pct
    )
    if center_effect is not None:
        mv.note = _join(mv.note, f"{center_effect:+.1f}% against the history median")
    if sig_up and eff > thr and up_center:
        mv.verdict = "regression"
    elif sig_down and eff < -thr and down_center:
        mv.verdict = "improvement"
    elif (p_up is None) and eff > thr and up_center:
        mv.verdict = "inconclusive"
        mv.note = _join(mv.note, "above the threshold but significance is untestable")
    else:
        mv.verdict = "ok"
        if eff > thr and not sig_up:
            mv.note = _join(mv.note, "above the threshold but not significant")
        elif eff > thr and not up_center:
            mv.note = _join(mv.note, "above the threshold against the baseline run only, not the history")
    mv.p_value = p_up if (eff >= 0 or p_down is None) else p_down
    return mv


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def history_center_effect(value: float | None, history: Any) -> float | None:
    """``value`` against the median of ``history`` (>= 3 positive values), percent; else None."""
    h = [x for x in (history or []) if x is not None and x > 0]
    if value is None or len(h) < MIN_HISTORY:
        return None
    return 100.0 * (value / float(np.median(h)) - 1.0)


# ---------------------------------------------------------------------------------------------
# latency: historical evidence


def compare_latency(
    metric: str,
    baseline: Any,
    candidate: Any,
    *,
    threshold_pct: float,
    alpha: float = 0.01,
    noise_pct: float | None = None,
    noise_k: float = 3.0,
    trigger: float = 0.5,
    baseline_throttled: Any = None,
    candidate_throttled: Any = None,
    history: list[float] | None = None,
    seed: int = 0,
) -> MetricVerdict:
    """Compare raw latency samples (ms) of two runs on ``metric`` (latency_median | latency_p99).

    ``history``: the metric's values in the cell's accepted runs (newest first); with >= 3 of
    them, the run-to-run spread widens the threshold (unless ``noise_pct`` is given) and the
    candidate is also compared with their median.
    """
    from scipy.stats import mannwhitneyu

    base, nb_ex = clean(baseline, baseline_throttled)
    cand, nc_ex = clean(candidate, candidate_throttled)
    if noise_pct is None and history:
        noise_pct = robust_spread_pct(history)
    thr_eff = max(threshold_pct, noise_k * noise_pct) if noise_pct is not None else threshold_pct
    mv = MetricVerdict(
        metric,
        "ok",
        "historical",
        threshold_pct=threshold_pct,
        effective_threshold_pct=thr_eff,
        noise_pct=noise_pct,
        n_baseline=len(base),
        n_candidate=len(cand),
    )
    if nb_ex or nc_ex:
        mv.note = f"excluded throttled samples: baseline {nb_ex}, candidate {nc_ex}"
    if len(base) < 5 or len(cand) < 5:
        mv.verdict = "not_measured" if len(cand) < 5 else "no_baseline"
        mv.note = "too few samples to compare"
        return mv
    stat = _stat(metric)
    b, c = float(stat(base)), float(stat(cand))
    mv.baseline, mv.candidate = b, c
    ratio = c / b
    mv.effect_pct = 100.0 * (ratio - 1.0)
    level = 1 - 2 * alpha
    lo, hi, ratios = bootstrap_ratio_ci(base, cand, metric, level, seed=seed)
    mv.ci_pct, mv.ci_level = (100 * (lo - 1), 100 * (hi - 1)), level
    # one-sided bootstrap p-values (share of resampled ratios on the other side of 1)
    pb_up = float((np.sum(ratios <= 1.0) + 1) / (len(ratios) + 1))
    pb_down = float((np.sum(ratios >= 1.0) + 1) / (len(ratios) + 1))
    if metric == "latency_median":
        p_up = max(float(mannwhitneyu(cand, base, alternative="greater").pvalue), pb_up)
        p_down = max(float(mannwhitneyu(cand, base, alternative="less").pvalue), pb_down)
    else:  # the tail: Mann-Whitney tests location, so the bootstrap decides alone
        p_up, p_down = pb_up, pb_down
    return _decide(mv, p_up, p_down, alpha, trigger, history_center_effect(c, history))


# ---------------------------------------------------------------------------------------------
# paired (interleaved) evidence


def paired_effect(
    metric: str,
    pairs: list[tuple[float, float]],
    *,
    threshold_pct: float,
    alpha: float = 0.01,
    trigger: float = 0.5,
    note: str = "",
) -> MetricVerdict:
    """Decide on paired per-round values ``(baseline_value, candidate_value)`` (higher is worse)."""
    from scipy import stats as st

    pairs = [(a, b) for a, b in pairs if a is not None and b is not None and a > 0 and b > 0]
    mv = MetricVerdict(
        metric,
        "ok",
        "interleaved",
        threshold_pct=threshold_pct,
        effective_threshold_pct=threshold_pct,
        n_baseline=len(pairs),
        n_candidate=len(pairs),
        note=note,
    )
    if len(pairs) < 2:
        mv.verdict = "inconclusive"
        mv.note = (note + "; " if note else "") + "fewer than 2 paired rounds"
        return mv
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    d = np.log(b / a)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    mv.baseline, mv.candidate = float(np.exp(np.log(a).mean())), float(np.exp(np.log(b).mean()))
    mv.effect_pct = 100.0 * (math.exp(mean) - 1.0)
    level = 1 - 2 * alpha
    if sd == 0.0:
        p_up = 0.0 if mean > 0 else 1.0
        p_down = 0.0 if mean < 0 else 1.0
        half = 0.0
    else:
        se = sd / math.sqrt(n)
        tstat = mean / se
        p_up = float(st.t.sf(tstat, n - 1))
        p_down = float(st.t.cdf(tstat, n - 1))
        half = float(st.t.ppf(1 - alpha, n - 1)) * se
    mv.ci_pct, mv.ci_level = (100 * (math.exp(mean - half) - 1), 100 * (math.exp(mean + half) - 1)), level
    return _decide(mv, p_up, p_down, alpha, trigger)


def interleaved_latency(
    metric: str,
    rounds: list[tuple[Any, Any]],
    *,
    threshold_pct: float,
    alpha: float = 0.01,
    trigger: float = 0.5,
) -> MetricVerdict:
    """Paired decision from interleaved rounds of raw samples ``[(baseline_samples, candidate_samples)]``."""
    from scipy.stats import mannwhitneyu

    stat = _stat(metric)
    pairs = []
    pooled_a, pooled_b = [], []
    for a, b in rounds:
        a, _ = clean(a)
        b, _ = clean(b)
        if len(a) >= 5 and len(b) >= 5:
            pairs.append((float(stat(a)), float(stat(b))))
            pooled_a.append(a)
            pooled_b.append(b)
    note = ""
    if pooled_a:
        pa, pb = np.concatenate(pooled_a), np.concatenate(pooled_b)
        p_mwu = float(mannwhitneyu(pb, pa, alternative="greater").pvalue)
        note = f"pooled Mann-Whitney p={p_mwu:.3g} over {len(pa)}+{len(pb)} samples"
    if metric == "latency_p99" and len(pairs) >= 2:
        return _paired_tail(metric, pooled_a, pooled_b, threshold_pct, alpha, trigger, note)
    return paired_effect(metric, pairs, threshold_pct=threshold_pct, alpha=alpha, trigger=trigger, note=note)


TAIL_BOOTSTRAP = 2000


def _paired_tail(
    metric: str,
    rounds_a: list[np.ndarray],
    rounds_b: list[np.ndarray],
    threshold_pct: float,
    alpha: float,
    trigger: float,
    note: str,
) -> MetricVerdict:
    """p99 from interleaved rounds: the p99 of all baseline samples against that of all candidate
    samples, with a bootstrap over rounds (the unit that shares conditions) for the interval and
    the one-sided p-values. A per-round p99 is not usable here: a short block holds a few dozen
    samples, so its "p99" is its slowest sample, and the paired log-ratios of maxima are heavy
    tailed enough on a busy device for a t-test to call one unlucky block a regression."""
    n = len(rounds_a)
    sa = [np.sort(a) for a in rounds_a]
    sb = [np.sort(b) for b in rounds_b]
    pa, pb = np.concatenate(sa), np.concatenate(sb)
    base, cand = float(np.percentile(pa, 99)), float(np.percentile(pb, 99))
    mv = MetricVerdict(
        metric,
        "ok",
        "interleaved",
        threshold_pct=threshold_pct,
        effective_threshold_pct=threshold_pct,
        n_baseline=n,
        n_candidate=n,
        note=_join(note, f"pooled p99 over {n} rounds, round bootstrap"),
    )
    if base <= 0 or cand <= 0:
        mv.verdict = "inconclusive"
        return mv
    mv.baseline, mv.candidate = base, cand
    mv.effect_pct = 100.0 * (cand / base - 1.0)
    rng = np.random.default_rng(12345)
    logs = np.empty(TAIL_BOOTSTRAP)
    for i in range(TAIL_BOOTSTRAP):
        idx = rng.integers(0, n, n)
        a = np.concatenate([sa[j] for j in idx])
        b = np.concatenate([sb[j] for j in idx])
        logs[i] = math.log(float(np.percentile(b, 99)) / float(np.percentile(a, 99)))
    # percentile-bootstrap p-values of "no change" for the log ratio of p99s
    p_up = float((np.sum(logs <= 0.0) + 1) / (TAIL_BOOTSTRAP + 1))
    p_down = float((np.sum(logs >= 0.0) + 1) / (TAIL_BOOTSTRAP + 1))
    lo, hi = np.percentile(logs, [100 * alpha, 100 * (1 - alpha)])
    mv.ci_pct, mv.ci_level = (100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)), 1 - 2 * alpha
    return _decide(mv, p_up, p_down, alpha, trigger)


# ---------------------------------------------------------------------------------------------
# one value per run: peak memory, energy (historical), accuracy, bytes


def compare_scalar(
    metric: str,
    baseline: float | None,
    candidate: float | None,
    *,
    history: list[float] | None = None,
    threshold_pct: float,
    alpha: float = 0.01,
    noise_k: float = 3.0,
    trigger: float = 0.5,
) -> MetricVerdict:
    """Higher-is-worse value (peak memory, energy per inference) against the baseline run.

    Significance needs a history of >= 3 accepted runs: a one-sided t prediction interval of the
    log value; without it, an effect above the threshold is ``inconclusive`` (and suspect, so a
    paired re-measure decides when one is possible).
    """
    from scipy import stats as st

    mv = MetricVerdict(
        metric, "ok", "historical", threshold_pct=threshold_pct, effective_threshold_pct=threshold_pct
    )
    if candidate is None:
        mv.verdict, mv.note = "not_measured", "no candidate value"
        return mv
    if baseline is None or baseline <= 0:
        mv.verdict, mv.note = "no_baseline", "no baseline value"
        mv.candidate = candidate
        return mv
    mv.baseline, mv.candidate = float(baseline), float(candidate)
    mv.effect_pct = 100.0 * (candidate / baseline - 1.0)
    hist = [h for h in (history or []) if h is not None and h > 0]
    mv.n_baseline, mv.n_candidate = max(1, len(hist)), 1
    p_up = p_down = None
    if len(hist) >= MIN_HISTORY:
        mv.noise_pct = robust_spread_pct(hist)
        mv.effective_threshold_pct = max(threshold_pct, noise_k * (mv.noise_pct or 0.0))
        lh = np.log(np.asarray(hist))
        sd = max(float(lh.std(ddof=1)), NOISE_FLOOR)
        n = len(lh)
        tstat = (math.log(candidate) - float(lh.mean())) / (sd * math.sqrt(1 + 1 / n))
        p_up, p_down = float(st.t.sf(tstat, n - 1)), float(st.t.cdf(tstat, n - 1))
    return _decide(mv, p_up, p_down, alpha, trigger, history_center_effect(candidate, hist))


def compare_accuracy(
    baseline: float | None,
    candidate: float | None,
    *,
    n_baseline: int | None = None,
    n_candidate: int | None = None,
    threshold_pts: float = 1.0,
    alpha: float = 0.01,
) -> MetricVerdict:
    """Accuracy drop in percentage points (lower is worse); two-proportion z-test when n known."""
    from scipy import stats as st

    mv = MetricVerdict(
        "accuracy", "ok", "exact", threshold_pct=threshold_pts, effective_threshold_pct=threshold_pts
    )
    if candidate is None:
        mv.verdict, mv.note = "not_measured", "accuracy not measured"
        return mv
    if baseline is None:
        mv.verdict, mv.candidate = "no_baseline", candidate
        return mv
    mv.baseline, mv.candidate = baseline, candidate
    mv.effect_pct = 100.0 * (candidate - baseline)  # points; negative = worse
    drop = -mv.effect_pct
    if n_baseline and n_candidate:
        mv.evidence, mv.n_baseline, mv.n_candidate = "historical", n_baseline, n_candidate
        pooled = (baseline * n_baseline + candidate * n_candidate) / (n_baseline + n_candidate)
        se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_baseline + 1 / n_candidate))
        z = (baseline - candidate) / se
        p_worse, p_better = float(st.norm.sf(z)), float(st.norm.cdf(z))
    else:  # the same fixed test set: the difference is exact
        p_worse = 0.0 if drop > 0 else 1.0
        p_better = 0.0 if drop < 0 else 1.0
    if drop > threshold_pts and p_worse < alpha:
        mv.verdict = "regression"
    elif -drop > threshold_pts and p_better < alpha:
        mv.verdict = "improvement"
    mv.p_value = p_worse if drop >= 0 else p_better
    return mv


def compare_bytes(baseline: int | None, candidate: int | None, *, threshold_pct: float) -> MetricVerdict:
    """Artifact size: deterministic, so the change is exact."""
    mv = MetricVerdict(
        "bytes", "ok", "exact", threshold_pct=threshold_pct, effective_threshold_pct=threshold_pct
    )
    if candidate is None:
        mv.verdict = "not_measured"
        return mv
    if not baseline:
        mv.verdict, mv.candidate = "no_baseline", float(candidate)
        return mv
    mv.baseline, mv.candidate = float(baseline), float(candidate)
    mv.effect_pct = 100.0 * (candidate / baseline - 1.0)
    if mv.effect_pct > threshold_pct:
        mv.verdict = "regression"
    elif mv.effect_pct < -threshold_pct:
        mv.verdict = "improvement"
    mv.p_value = 0.0 if candidate != baseline else 1.0
    return mv


# ---------------------------------------------------------------------------------------------
# budgets


def check_budgets(
    budget: dict[str, float],
    *,
    p99_ms: float | None,
    peak_rss_bytes: int | None,
    model_bytes: int | None,
    energy_j: float | None,
    energy_measured: bool = False,
    median_ms: float | None = None,
    idle_w: float | None = None,
) -> list[BudgetViolation]:
    """Measured values over the device profile's budgets (merged with the cell's own budget)."""
    out: list[BudgetViolation] = []
    lim = budget.get("latency_p99_ms")
    if lim is not None and p99_ms is not None and p99_ms > lim:
        out.append(BudgetViolation("latency_p99_ms", lim, p99_ms))
    lim = budget.get("peak_memory_mb")
    if lim is not None and peak_rss_bytes is not None and peak_rss_bytes / 1e6 > lim:
        out.append(BudgetViolation("peak_memory_mb", lim, peak_rss_bytes / 1e6))
    lim = budget.get("model_bytes")
    if lim is not None and model_bytes is not None and model_bytes > lim:
        out.append(BudgetViolation("model_bytes", lim, float(model_bytes)))
    lim = budget.get("energy_per_inference_mj")
    if lim is not None and energy_j is not None and energy_j * 1e3 > lim:
        out.append(
            BudgetViolation("energy_per_inference_mj", lim, energy_j * 1e3, estimated=not energy_measured)
        )
    lim, hz = budget.get("avg_power_w"), budget.get("duty_cycle_hz")
    if lim is not None and hz and energy_j is not None:
        busy = min(1.0, hz * (median_ms or 0.0) / 1e3)
        avg = energy_j * hz + (idle_w or 0.0) * (1.0 - busy)
        if avg > lim:
            out.append(BudgetViolation("avg_power_w", lim, avg, estimated=not energy_measured))
    return out


def cell_verdict_name(
    metrics: list[MetricVerdict], violations: list[BudgetViolation], has_baseline: bool
) -> str:
    """ok / regression / improvement / budget_violation / no_baseline from the parts."""
    if any(m.verdict == "regression" for m in metrics):
        return "regression"
    if violations:
        return "budget_violation"
    if not has_baseline:
        return "no_baseline"
    if any(m.verdict == "improvement" for m in metrics):
        return "improvement"
    return "ok"
