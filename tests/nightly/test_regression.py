"""Regression statistics on constructed sample sets (no device needed)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_compress import regression as rg


def lat(n: int, shift: float = 1.0, noise: float = 0.03, seed: int = 0, base: float = 2.0) -> np.ndarray:
    """Latency-like samples: lognormal around ``base * shift`` with a light right tail."""
    rng = np.random.default_rng(seed)
    x = base * shift * rng.lognormal(0.0, noise, n)
    tail = rng.random(n) < 0.02
    x[tail] *= 1.3
    return x


@pytest.mark.parametrize("seed", range(5))
def test_identical_distributions_are_ok(seed: int) -> None:
    for metric in rg.LATENCY:
        v = rg.compare_latency(metric, lat(400, seed=seed), lat(400, seed=100 + seed), threshold_pct=5.0)
        assert v.verdict == "ok", (metric, v)
        if metric == "latency_median":  # the tail is noisy: p99 may look suspect, the median not
            assert not v.suspect


def test_ten_percent_shift_is_a_regression_with_effect_and_ci() -> None:
    v = rg.compare_latency("latency_median", lat(400), lat(400, shift=1.10, seed=1), threshold_pct=5.0)
    assert v.verdict == "regression" and v.suspect and v.evidence == "historical"
    assert 7 < v.effect_pct < 13
    assert v.ci_pct[0] > 5 and v.ci_pct[1] > v.effect_pct > v.ci_pct[0]
    assert v.p_value < 0.01


def test_shift_below_the_practical_threshold_is_ok_even_if_significant() -> None:
    v = rg.compare_latency("latency_median", lat(3000), lat(3000, shift=1.02, seed=1), threshold_pct=5.0)
    assert v.verdict == "ok" and v.p_value < 0.01  # significant, but only +2 %


def test_ten_percent_with_high_noise_and_few_samples_is_not_significant() -> None:
    v = rg.compare_latency(
        "latency_median", lat(8, noise=0.4), lat(8, shift=1.10, noise=0.4, seed=1), threshold_pct=5.0
    )
    assert v.verdict == "ok" and v.p_value >= 0.01


def test_improvement() -> None:
    v = rg.compare_latency("latency_median", lat(400), lat(400, shift=0.8, seed=1), threshold_pct=5.0)
    assert v.verdict == "improvement" and v.effect_pct < -15
    # an apparent improvement is re-measured against the baseline artifact before it is reported
    # (a baseline run caught in a slow spell makes an unchanged candidate look faster)
    assert v.suspect
    small = rg.compare_latency("latency_median", lat(400), lat(400, shift=0.99, seed=1), threshold_pct=5.0)
    assert not small.suspect


def test_throttled_samples_are_excluded_and_counted() -> None:
    base = lat(400)
    cand = lat(400, seed=1)
    throttled = np.zeros(400, dtype=bool)
    throttled[150:] = True  # the device throttled: the last 250 samples are 60 % slower
    cand[throttled] *= 1.6
    flagged = rg.compare_latency(
        "latency_median", base, cand, threshold_pct=5.0, candidate_throttled=throttled
    )
    assert flagged.verdict == "ok" and flagged.n_candidate == 150
    assert "candidate 250" in flagged.note
    unflagged = rg.compare_latency("latency_median", base, cand, threshold_pct=5.0)
    assert unflagged.verdict == "regression"


def test_noise_aware_threshold_from_history() -> None:
    """A +8 % run on a device whose medians wander by several percent from run to run is no regression."""
    history = [2.0, 2.12, 1.9, 2.08, 1.95, 2.15, 1.88]
    spread = rg.robust_spread_pct(history)
    assert 3 < spread < 8
    base, cand = lat(400), lat(400, shift=1.08, seed=1)
    noisy = rg.compare_latency("latency_median", base, cand, threshold_pct=5.0, noise_pct=spread, noise_k=3.0)
    assert noisy.verdict == "ok" and noisy.effective_threshold_pct > 8
    assert noisy.suspect  # looks regressed: a paired re-measure decides
    quiet = rg.compare_latency("latency_median", base, cand, threshold_pct=5.0, noise_pct=0.2)
    assert quiet.verdict == "regression" and quiet.effective_threshold_pct == 5.0


def test_paired_rounds_decide() -> None:
    rounds = [(lat(200, seed=r), lat(200, shift=1.12, seed=50 + r)) for r in range(5)]
    v = rg.interleaved_latency("latency_median", rounds, threshold_pct=5.0)
    assert v.verdict == "regression" and v.evidence == "interleaved" and 8 < v.effect_pct < 16
    assert v.ci_pct[0] > 0 and "Mann-Whitney" in v.note
    same = [(lat(200, seed=r), lat(200, seed=50 + r)) for r in range(5)]
    v = rg.interleaved_latency("latency_median", same, threshold_pct=5.0)
    assert v.verdict == "ok" and abs(v.effect_pct) < 2
    # a consistent but tiny effect is significant and still ok (below the practical threshold)
    v = rg.paired_effect(
        "latency_median", [(1.0, 1.02), (1.0, 1.021), (1.0, 1.019), (1.0, 1.02)], threshold_pct=5.0
    )
    assert v.verdict == "ok" and v.p_value < 0.01
    # a large but inconsistent effect is not significant
    v = rg.paired_effect("latency_median", [(1.0, 1.5), (1.0, 0.8), (1.0, 1.3)], threshold_pct=5.0)
    assert v.verdict == "ok"


def test_scalar_metrics_need_history_for_significance() -> None:
    v = rg.compare_scalar("peak_memory", 100e6, 130e6, threshold_pct=10.0)
    assert v.verdict == "inconclusive" and v.suspect
    v = rg.compare_scalar(
        "peak_memory", 100e6, 130e6, history=[100e6, 101e6, 99e6, 100e6], threshold_pct=10.0
    )
    assert v.verdict == "regression" and v.p_value < 0.01
    v = rg.compare_scalar(
        "peak_memory", 100e6, 103e6, history=[100e6, 101e6, 99e6, 100e6], threshold_pct=10.0
    )
    assert v.verdict == "ok"


def test_accuracy_and_bytes() -> None:
    assert rg.compare_accuracy(0.95, 0.90, n_baseline=2000, n_candidate=2000).verdict == "regression"
    assert rg.compare_accuracy(0.95, 0.945, n_baseline=2000, n_candidate=2000).verdict == "ok"
    assert rg.compare_accuracy(0.95, 0.93, n_baseline=50, n_candidate=50).verdict == "ok"  # too few to tell
    assert rg.compare_accuracy(0.95, 0.93).verdict == "regression"  # the same test set: exact
    assert rg.compare_bytes(1000, 1100, threshold_pct=1.0).verdict == "regression"
    assert rg.compare_bytes(1000, 1005, threshold_pct=1.0).verdict == "ok"


def test_budget_violations_are_separate_from_regressions() -> None:
    violations = rg.check_budgets(
        {"latency_p99_ms": 1.0, "peak_memory_mb": 1000, "model_bytes": 50_000, "energy_per_inference_mj": 5},
        p99_ms=1.5,
        peak_rss_bytes=80_000_000,
        model_bytes=60_000,
        energy_j=0.001,
        energy_measured=False,
    )
    assert [b.budget for b in violations] == ["latency_p99_ms", "model_bytes"]
    ok = rg.MetricVerdict("latency_median", "ok")
    reg = rg.MetricVerdict("latency_median", "regression")
    assert rg.cell_verdict_name([ok], violations, has_baseline=True) == "budget_violation"
    assert rg.cell_verdict_name([reg], violations, has_baseline=True) == "regression"
    assert rg.cell_verdict_name([], [], has_baseline=False) == "no_baseline"
    assert rg.cell_verdict_name([], violations, has_baseline=False) == "budget_violation"


def test_an_unusually_slow_baseline_run_does_not_hide_a_slowdown() -> None:
    """History says the cell runs at ~2.0 ms; the baseline run happened to be slow (2.6 ms).
    A candidate at 2.3 ms looks faster than that run, but is +15 % against the history."""
    history = [2.6, 2.0, 2.02, 1.98, 2.01, 1.99]
    base, cand = lat(400, base=2.6), lat(400, base=2.3, seed=1)
    v = rg.compare_latency("latency_median", base, cand, threshold_pct=5.0, history=history)
    assert v.effect_pct < -5
    assert v.verdict == "ok"  # not an improvement: the history disagrees
    assert v.suspect  # and worth a paired re-measure against the baseline artifact
    assert "against the history median" in v.note


def test_noisy_history_always_asks_for_paired_evidence() -> None:
    history = [2.0, 2.3, 1.8, 2.2, 1.9, 2.4, 1.7]  # about 10 % run-to-run spread
    v = rg.compare_latency(
        "latency_median", lat(300), lat(300, shift=0.97, seed=1), threshold_pct=5.0, history=history
    )
    assert v.effective_threshold_pct > 5.0 and v.suspect and v.verdict == "ok"


def _busy_block(rng: np.random.Generator, n: int = 50, tail: float = 1.0) -> np.ndarray:
    """A short timed block on a shared machine: a tight body and rare, large stalls."""
    x = rng.lognormal(0.0, 0.03, n)
    stalls = rng.random(n) < 0.03
    x[stalls] *= 1.0 + tail * rng.uniform(0.5, 2.0, stalls.sum())
    return x


def test_interleaved_p99_pools_rounds_and_ignores_unlucky_blocks() -> None:
    """p99 from interleaved short blocks: unchanged models on a device with random stalls never
    make a p99 regression (30 nights of 40 rounds), while a real tail slowdown (stalls twice as
    long) is found; the verdict comes from the pooled p99 with a bootstrap over rounds."""
    false_alarms = 0
    for night in range(30):
        rng = np.random.default_rng(night)
        rounds = [(_busy_block(rng), _busy_block(rng)) for _ in range(40)]
        v = rg.interleaved_latency("latency_p99", rounds, threshold_pct=10.0)
        false_alarms += v.verdict == "regression"
        assert "round bootstrap" in v.note
    assert false_alarms == 0
    rng = np.random.default_rng(99)
    slower = [(_busy_block(rng), _busy_block(rng, tail=2.5)) for _ in range(40)]
    v = rg.interleaved_latency("latency_p99", slower, threshold_pct=10.0)
    assert v.verdict == "regression" and v.effect_pct > 10 and v.ci_pct[0] > 0
    # the median of the same rounds is unchanged: only the tail moved
    assert rg.interleaved_latency("latency_median", slower, threshold_pct=3.0).verdict == "ok"
