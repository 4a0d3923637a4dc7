"""Thermal-throttling / regime-change detector for latency series (Interacting Multiple Model).

This file is pushed as a plain file next to the device-side agent: it imports only the Python
standard library and numpy, nothing from the ``runners`` package.

Method. The first ``warmup`` samples (ms) give a robust baseline level (median) and noise scale
(the larger of 1.4826 x median absolute deviation and the Qn estimator, floored at
``min_rel_noise`` x baseline), so the detector behaves the same at 0.1 ms and at 100 ms; later
samples taken while steady keep refining both, up to ``calib_max``. Each sample is standardised,
``z = (x - baseline) / scale`` (dimensionless), and fed to a bank of two Kalman filters over the
state ``[level, slope]`` observed with unit noise:

* model 0, steady: the level stays at the baseline, up to a small mean-reverting wander
  (``level' = steady_pull * level + noise``, which absorbs the short-term correlation of real
  latency noise) and no slope;
* model 1, throttled: a level-plus-slope random walk with larger process noise, which follows
  steps (frequency drops) and ramps (heating) within a few samples.

The IMM cycle per sample: mix the model states with the Markov transition matrix, predict and
update each filter, weigh the models by the likelihood of the innovation, renormalise.
Heavy-tailed scheduler noise is normal on targets, so single outliers must not fire: the
likelihood is Student-t (polynomial tails), each sample's likelihood ratio is clamped to
``[lr_floor, lr_max]``, filter updates use a Huber-clipped innovation, and with
``direction="up"`` a sample below the baseline is never evidence of throttling. The throttled
model *dominates* when its probability exceeds ``threshold`` for ``confirm`` consecutive
samples while its level is at least ``min_shift`` noise standard deviations above the baseline
(smaller shifts are not called throttling); the episode ends when the probability stays below
``exit_threshold`` for ``confirm`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826  # sigma of a normal distribution per unit of median absolute deviation


@dataclass
class ThrottleResult:
    """Detector output for a whole series (indices are sample positions in the input)."""

    probs: list[float]  # P(throttled model) after each sample (0.0 during warm-up)
    flags: list[bool]  # sample taken while throttled (inside an episode)
    onset_index: int | None  # first sample of the first detected episode
    episodes: list[tuple[int, int]]  # [start, end) index ranges


@dataclass
class _Filter:
    """One Kalman filter over ``[level, slope]`` in baseline-noise units."""

    level_coef: float  # F[0,0]: 1 for a random walk, < 1 pulls the level back to the baseline
    slope: bool  # whether the model has a slope (F[0,1] = F[1,1] = 1)
    q_level: float  # process noise variance of the level, per sample
    q_slope: float  # process noise variance of the slope, per sample
    x: list[float] = field(default_factory=lambda: [0.0, 0.0])
    p: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])  # P11, P12, P22

    def stationary_var(self) -> float:
        """Variance of the level in the long run (a model without slope and ``level_coef < 1``)."""
        c = self.level_coef
        return self.q_level / (1 - c * c) if c * c < 1 else self.q_level

    def predict(self, x: list[float], p: list[float]) -> tuple[list[float], list[float]]:
        """Predicted state and covariance from the mixed ones: F x, F P F' + Q."""
        a, s = x
        p11, p12, p22 = p
        if self.slope:
            xp = [a + s, s]
            pp = [p11 + 2 * p12 + p22 + self.q_level, p12 + p22, p22 + self.q_slope]
        else:
            c = self.level_coef
            xp = [c * a, 0.0]
            pp = [c * c * p11 + self.q_level, 0.0, 0.0]
        return xp, pp


def qn_scale(arr: np.ndarray) -> float:
    """Rousseeuw-Croux Qn standard deviation: a scaled low quartile of pairwise distances.

    Robust like the MAD (50% breakdown) but far less noisy on few samples (82% vs 37% gaussian
    efficiency), so 20 warm-up samples rarely underestimate the noise by half.
    """
    n = arr.size
    if n < 2:
        return 0.0
    dist = np.abs(arr[:, None] - arr[None, :])[np.triu_indices(n, 1)]
    h = n // 2 + 1
    k = h * (h - 1) // 2
    small_n = n / (n + 1.4) if n % 2 == 0 else n / (n + 3.8)
    return 2.2219 * float(np.partition(dist, k - 1)[k - 1]) * small_n


def robust_level_scale(samples: Sequence[float]) -> tuple[float, float]:
    """Median and noise standard deviation of ``samples`` (same units, e.g. ms).

    The standard deviation is the larger of 1.4826 x MAD and Qn: both ignore outliers, and the
    larger one is the conservative choice (an underestimated noise level causes false alarms).
    """
    arr = np.asarray(samples, dtype=float)
    median = float(np.median(arr))
    mad_sigma = MAD_TO_SIGMA * float(np.median(np.abs(arr - median)))
    return median, max(mad_sigma, qn_scale(arr))


def _student_t_loglik(e: float, var: float, nu: float) -> float:
    """Log density of a Student-t innovation (constant terms shared by all models dropped)."""
    return -0.5 * math.log(var) - 0.5 * (nu + 1) * math.log1p(e * e / (nu * var))


class IMMDetector:
    """Online IMM detector: feed latencies one at a time with :meth:`update`.

    Parameters (dimensionless unless stated):

    * ``threshold`` / ``exit_threshold``: P(throttled) to enter / leave an episode, each held for
      ``confirm`` consecutive samples;
    * ``warmup``: samples (ms) that set the baseline before any detection;
    * ``p_switch`` / ``p_return``: Markov transition probabilities per sample, steady -> throttled
      and throttled -> steady (``p_return`` defaults to ``p_switch``);
    * ``q_steady``, ``q_level``, ``q_slope``: process noise variances per sample, in squared
      baseline-noise units; ``steady_pull``: fraction of its deviation from the baseline model 0
      keeps per step (0: it always predicts the baseline);
    * ``nu``: Student-t degrees of freedom of the likelihood; ``huber``: clip of filter
      innovations, in predicted standard deviations; ``lr_floor`` / ``lr_max``: clamp of the
      per-sample likelihood ratio P(x | throttled) / P(x | steady). The floor is mild so that a
      regime where only some samples are slow (big.LITTLE migration, CPU contention) still
      accumulates evidence instead of being reset by each fast sample;
    * ``min_rel_noise``: floor of the noise scale as a fraction of the baseline; ``min_shift``:
      smallest throttled level, in noise standard deviations;
    * ``direction``: "up" (throttling only slows things down) or "both";
    * ``calib_max``: samples, taken while steady, that keep refining baseline and scale after the
      warm-up, refit every ``refit_every`` samples.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.9,
        exit_threshold: float = 0.5,
        confirm: int = 3,
        warmup: int = 20,
        p_switch: float = 0.01,
        p_return: float | None = None,
        q_steady: float = 0.3,
        q_level: float = 0.5,
        q_slope: float = 0.01,
        steady_pull: float = 0.7,
        nu: float = 4.0,
        huber: float = 3.0,
        lr_max: float = 30.0,
        lr_floor: float = 1 / 3,
        min_rel_noise: float = 0.005,
        min_shift: float = 3.0,
        direction: str = "up",
        calib_max: int = 200,
        refit_every: int = 10,
    ) -> None:
        back = p_switch if p_return is None else p_return
        self.threshold = threshold
        self.exit_threshold = exit_threshold
        self.confirm = confirm
        self.warmup = warmup
        self.transition = ((1 - p_switch, p_switch), (back, 1 - back))  # row: from, column: to
        self.nu = nu
        self.huber = huber
        self.lr_max = lr_max
        self.lr_floor = lr_floor
        self.min_rel_noise = min_rel_noise
        self.min_shift = min_shift
        self.direction = direction
        self.calib_max = max(calib_max, warmup)
        self.refit_every = max(refit_every, 1)
        self._validate()
        self._filters = (
            _Filter(steady_pull, False, q_steady, 0.0),
            _Filter(1.0, True, q_level, q_slope),
        )
        self._mu = [1 - p_switch, p_switch]
        self._calib: list[float] = []
        self.baseline_ms: float | None = None
        self.scale_ms: float | None = None
        self.index = 0  # samples seen
        self._above = 0
        self._below = 0
        self._throttled = False
        self._p = 0.0
        self.episodes: list[tuple[int, int | None]] = []  # end None while open

    def _validate(self) -> None:
        """Raise ValueError (one sentence) for parameters the detector cannot work with."""
        if not 0 < self.exit_threshold <= self.threshold < 1:
            raise ValueError("Thresholds must satisfy 0 < exit_threshold <= threshold < 1.")
        if self.confirm < 1 or self.warmup < 5:
            raise ValueError(f"confirm must be >= 1 and warmup >= 5 (got {self.confirm} and {self.warmup}).")
        for p in (self.transition[0][1], self.transition[1][0]):
            if not 0 < p < 0.5:
                raise ValueError(f"Switch probabilities must be in (0, 0.5), got {p}.")
        if not 0 < self.lr_floor <= 1 <= self.lr_max:
            raise ValueError("Likelihood-ratio clamps must satisfy 0 < lr_floor <= 1 <= lr_max.")
        if self.direction not in ("up", "both"):
            raise ValueError(f"direction must be 'up' or 'both', not {self.direction!r}.")

    @property
    def throttled(self) -> bool:
        """True while the throttled model dominates (inside an episode)."""
        return self._throttled

    @property
    def probability(self) -> float:
        """P(throttled) after the last sample; 0.0 during the warm-up."""
        return self._p

    def _calibrate(self) -> None:
        """Baseline (median, ms) and noise scale (ms) from the calibration samples.

        Called at the end of the warm-up, then every ``refit_every`` accepted steady samples until
        ``calib_max`` are in: 20 samples give a scale within +-50% only, which alone would make
        false alarms frequent. Filter states are re-expressed in the new units.
        """
        median, sigma = robust_level_scale(self._calib)
        scale = max(sigma, self.min_rel_noise * abs(median), 1e-12)
        if self.baseline_ms is not None and self.scale_ms is not None:
            r = self.scale_ms / scale
            shift = (self.baseline_ms - median) / scale
            for f in self._filters:
                f.x = [f.x[0] * r + shift, f.x[1] * r]
                f.p = [v * r * r for v in f.p]
        self.baseline_ms, self.scale_ms = median, scale

    def _mix(self) -> list[tuple[list[float], list[float], float]]:
        """IMM mixing: per target model, the mixed state, covariance and predicted probability.

        A switch into the steady model resets the level to the baseline (its stationary
        distribution) instead of carrying the throttled level over: leaving a throttled regime
        means latency returns to normal, and a steady model that inherited the throttled level
        would explain throttled samples and end episodes early.
        """
        (t00, t01), (t10, t11) = self.transition
        mu0, mu1 = self._mu
        f0, f1 = self._filters
        reset = ([0.0, 0.0], [f0.stationary_var(), 0.0, 0.0])
        out = []
        for j, (a, b) in enumerate(((t00 * mu0, t10 * mu1), (t01 * mu0, t11 * mu1))):
            (xa, pa), (xb, pb) = (f0.x, f0.p), ((f1.x, f1.p) if j == 1 else reset)
            c = a + b
            w0, w1 = a / c, b / c
            x0 = [w0 * xa[0] + w1 * xb[0], w0 * xa[1] + w1 * xb[1]]
            d00, d01 = xa[0] - x0[0], xa[1] - x0[1]
            d10, d11 = xb[0] - x0[0], xb[1] - x0[1]
            p0 = [
                w0 * (pa[0] + d00 * d00) + w1 * (pb[0] + d10 * d10),
                w0 * (pa[1] + d00 * d01) + w1 * (pb[1] + d10 * d11),
                w0 * (pa[2] + d01 * d01) + w1 * (pb[2] + d11 * d11),
            ]
            out.append((x0, p0, c))
        return out

    def _filter_step(self, j: int, x0: list[float], p0: list[float], z: float) -> tuple[float, float]:
        """Predict and update model j with observation z; return (innovation, its variance)."""
        f = self._filters[j]
        xp, pp = f.predict(x0, p0)
        e = z - xp[0]
        s = pp[0] + 1.0
        k0, k1 = pp[0] / s, pp[1] / s
        lim = self.huber * math.sqrt(s)
        ec = min(max(e, -lim), lim)
        f.x = [xp[0] + k0 * ec, xp[1] + k1 * ec]
        f.p = [(1 - k0) * pp[0], (1 - k0) * pp[1], pp[2] - k1 * pp[1]]
        return e, s

    def _imm_step(self, z: float) -> float:
        mixed = self._mix()
        (e0, s0), (e1, s1) = (self._filter_step(j, m[0], m[1], z) for j, m in enumerate(mixed))
        log_lr = _student_t_loglik(e1, s1, self.nu) - _student_t_loglik(e0, s0, self.nu)
        if self.direction == "up" and e0 < 0:
            log_lr = min(log_lr, 0.0)  # below the baseline: never evidence of throttling
        lr = math.exp(min(max(log_lr, math.log(self.lr_floor)), math.log(self.lr_max)))
        c0, c1 = mixed[0][2], mixed[1][2] * lr
        self._mu = [c0 / (c0 + c1), c1 / (c0 + c1)]
        return self._mu[1]

    def _advance_episode(self, p: float) -> None:
        i = self.index
        if not self._throttled:
            level = self._filters[1].x[0]
            shifted = (level if self.direction == "up" else abs(level)) >= self.min_shift
            self._above = self._above + 1 if p > self.threshold and shifted else 0
            if self._above >= self.confirm:
                self._throttled, self._below = True, 0
                self.episodes.append((i - self.confirm + 1, None))
        else:
            self._below = self._below + 1 if p < self.exit_threshold else 0
            if self._below >= self.confirm:
                self._throttled, self._above = False, 0
                start, _ = self.episodes[-1]
                self.episodes[-1] = (start, i - self.confirm + 1)

    def update(self, x_ms: float) -> float:
        """Add one latency sample (ms); return P(throttled) after it (0.0 during warm-up)."""
        x = float(x_ms)
        if not math.isfinite(x):
            raise ValueError(f"Latency sample {self.index} is {x_ms!r}; samples must be finite numbers.")
        if self.baseline_ms is None:
            self._calib.append(x)
            if len(self._calib) == self.warmup:
                self._calibrate()
            self.index += 1
            return 0.0
        assert self.scale_ms is not None
        p = self._p = self._imm_step((x - self.baseline_ms) / self.scale_ms)
        self._advance_episode(p)
        self.index += 1
        if not self._throttled and p < 0.5 and len(self._calib) < self.calib_max:
            self._calib.append(x)
            if len(self._calib) % self.refit_every == 0 or len(self._calib) == self.calib_max:
                self._calibrate()
        return p


def detect_throttling(samples_ms: Sequence[float], **params: Any) -> ThrottleResult:
    """Run an :class:`IMMDetector` over a latency series (ms); ``params`` are its keyword arguments.

    Flags are retrospective: a sample is flagged when it lies inside an episode, i.e. from the
    first of the ``confirm`` samples that opened it up to the first of those that closed it.
    """
    det = IMMDetector(**params)
    probs = [det.update(x) for x in samples_ms]
    n = len(probs)
    episodes = [(start, n if end is None else end) for start, end in det.episodes]
    flags = [False] * n
    for start, end in episodes:
        flags[start:end] = [True] * (end - start)
    onset = episodes[0][0] if episodes else None
    return ThrottleResult(probs=probs, flags=flags, onset_index=onset, episodes=episodes)
