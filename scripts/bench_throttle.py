"""Benchmark of the throttling detector (runners/throttle.py) on synthetic latency series.

Runs the IMM detector, a plain one-sided CUSUM and a fixed-threshold detector (+X% over a running
median) side by side on the same series:

* change runs: a step up (+20% .. +100%), a linear ramp (+30% .. +100% over 15 .. 40 samples), or
  a step that returns to normal (after 30 .. 60 samples), at a known change point after the warm-up;
* stationary runs: no change at all; as many again with AR(1) jitter (coefficient 0.5), reported as
  ``*_false_alarm_rate_ar1``, and with a noisier device (CV 5% .. 10%), ``*_false_alarm_rate_noisy``.

Noise is realistic for on-device latency: gaussian jitter (CV 1% .. 5%), a lognormal right tail on
8% of the samples and rare 5x spikes (0.5%), at base levels from 0.1 ms to 100 ms.

Detection delay = index of the first online alarm (the sample at which the detector reports
``throttled``) at or after the change point minus the change point, in samples; an alarm before it
is an early alarm; a run without an alarm at or after the change point is a miss. CUSUM uses
k = 0.5, h = 5 on samples standardised by the warm-up median / MAD; the threshold detector alarms
after 3 consecutive samples above the running median of the last 50 by more than 15%.
Writes ``benchmarks/throttle.json``.

    python scripts/bench_throttle.py [--runs 300] [--n 300] [--out benchmarks/throttle.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runners"))
from throttle import IMMDetector  # noqa: E402  (a plain file, as on the target)

WARMUP = 20
CONFIRM = 3


@dataclass(frozen=True)
class Series:
    x: np.ndarray  # latency, ms
    change: int | None  # first changed sample, None for stationary runs
    kind: str


def noise(rng: np.random.Generator, n: int, base: float, cv: float, ar: float = 0.0) -> np.ndarray:
    """Stationary latency (ms): gaussian (optionally AR(1)) jitter + lognormal tail + rare 5x spikes."""
    e = rng.standard_normal(n)
    jitter = np.empty(n)
    jitter[0] = e[0]
    for i in range(1, n):
        jitter[i] = ar * jitter[i - 1] + np.sqrt(1 - ar * ar) * e[i]
    x = base * (1 + cv * jitter)
    tail = rng.random(n) < 0.08
    x[tail] += base * cv * 2 * rng.lognormal(0.0, 0.7, tail.sum())
    spikes = rng.random(n) < 0.005
    x[spikes] *= 5
    return np.maximum(x, base * 0.05)


def make_series(
    kind: str, n: int, seed: int, ar: float = 0.0, cv_range: tuple[float, float] = (0.01, 0.05)
) -> Series:
    rng = np.random.default_rng(seed)
    base = 10 ** rng.uniform(-1, 2)  # 0.1 ms .. 100 ms
    cv = rng.uniform(*cv_range)
    level = np.ones(n)
    change: int | None = None
    if kind != "stationary":
        change = int(rng.integers(WARMUP + 20, n - 80))
        if kind == "step":
            level[change:] += rng.uniform(0.2, 1.0)
        elif kind == "ramp":
            length, height = int(rng.integers(15, 41)), rng.uniform(0.3, 1.0)
            k = np.arange(n - change)
            level[change:] += height * np.minimum(k + 1, length) / length
        elif kind == "step_return":
            length = int(rng.integers(30, 60))
            level[change : change + length] += rng.uniform(0.2, 1.0)
        else:
            raise ValueError(f"Unknown series kind {kind!r}.")
    return Series(noise(rng, n, base, cv, ar) * level, change, kind)


# ------------------------------------------------------------------------------------------
# detectors: each returns the online alarm indices (first sample where the alarm is raised)


def imm_alarms(x: np.ndarray) -> list[int]:
    det = IMMDetector(warmup=WARMUP, confirm=CONFIRM)
    alarms, was = [], False
    for i, v in enumerate(x):
        det.update(float(v))
        if det.throttled and not was:
            alarms.append(i)
        was = det.throttled
    return alarms


def robust_baseline(x: np.ndarray) -> tuple[float, float]:
    med = float(np.median(x[:WARMUP]))
    mad = float(np.median(np.abs(x[:WARMUP] - med)))
    return med, max(1.4826 * mad, 0.005 * med)


def cusum_alarms(x: np.ndarray, k: float = 0.5, h: float = 5.0) -> list[int]:
    """Plain one-sided CUSUM on standardised samples (baseline and scale from the warm-up)."""
    med, scale = robust_baseline(x)
    s, alarms = 0.0, []
    for i in range(WARMUP, len(x)):
        s = max(0.0, s + (x[i] - med) / scale - k)
        if s > h:
            alarms.append(i)
            s = 0.0
    return alarms


def threshold_alarms(x: np.ndarray, rel: float = 0.15, window: int = 50) -> list[int]:
    """Alarm when CONFIRM consecutive samples exceed the running median by more than ``rel``."""
    above, alarms = 0, []
    for i in range(WARMUP, len(x)):
        ref = float(np.median(x[max(0, i - window) : i]))
        above = above + 1 if x[i] > ref * (1 + rel) else 0
        if above == CONFIRM:
            alarms.append(i)
    return alarms


DETECTORS: dict[str, Callable[[np.ndarray], list[int]]] = {
    "imm": imm_alarms,
    "cusum": cusum_alarms,
    "threshold": threshold_alarms,
}


def score(
    name: str, changed: list[Series], stationary: list[Series], extra: dict[str, list[Series]]
) -> dict[str, float]:
    detect = DETECTORS[name]
    delays: list[int] = []
    misses = early = 0
    by_kind: dict[str, list[int]] = {}
    for s in changed:
        assert s.change is not None
        alarms = detect(s.x)
        early += any(a < s.change for a in alarms)
        after = [a for a in alarms if a >= s.change]
        if after:
            delays.append(after[0] - s.change)
            by_kind.setdefault(s.kind, []).append(after[0] - s.change)
        else:
            misses += 1
    false_alarms = sum(bool(detect(s.x)) for s in stationary)
    d = np.asarray(delays, dtype=float)
    out = {
        f"{name}_detect_delay_samples": float(np.median(d)) if d.size else float("nan"),
        f"{name}_detect_delay_p90": float(np.percentile(d, 90)) if d.size else float("nan"),
        f"{name}_false_alarm_rate": false_alarms / len(stationary),
        f"{name}_miss_rate": misses / len(changed),
        f"{name}_early_alarm_rate": early / len(changed),
    }
    for label, runs in extra.items():
        out[f"{name}_false_alarm_rate_{label}"] = sum(bool(detect(s.x)) for s in runs) / len(runs)
    for kind, values in sorted(by_kind.items()):
        out[f"{name}_detect_delay_median_{kind}"] = float(np.median(values))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300, help="change runs and stationary runs (each)")
    ap.add_argument("--n", type=int, default=300, help="samples per series")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks/throttle.json"))
    args = ap.parse_args(argv)
    kinds = ["step", "ramp", "step_return"]
    changed = [make_series(kinds[i % 3], args.n, args.seed + i) for i in range(args.runs)]
    stationary = [make_series("stationary", args.n, args.seed + 10**6 + i) for i in range(args.runs)]
    extra = {
        "ar1": [
            make_series("stationary", args.n, args.seed + 2 * 10**6 + i, ar=0.5) for i in range(args.runs)
        ],
        "noisy": [
            make_series("stationary", args.n, args.seed + 3 * 10**6 + i, cv_range=(0.05, 0.10))
            for i in range(args.runs)
        ],
    }
    t0 = time.perf_counter()
    result: dict[str, object] = {
        "change_runs": len(changed),
        "stationary_runs": len(stationary),
        "samples_per_series": args.n,
        "warmup": WARMUP,
        "confirm": CONFIRM,
        "imm_parameters": {
            k: p.default for k, p in inspect.signature(IMMDetector).parameters.items() if k != "self"
        },
    }
    for name in DETECTORS:
        result |= score(name, changed, stationary, extra)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    for name in DETECTORS:
        print(
            f"{name:>9}: delay median {result[f'{name}_detect_delay_samples']:.1f} "
            f"p90 {result[f'{name}_detect_delay_p90']:.1f}  false alarms "
            f"{result[f'{name}_false_alarm_rate']:.3f} (AR1 {result[f'{name}_false_alarm_rate_ar1']:.3f}, "
            f"noisy {result[f'{name}_false_alarm_rate_noisy']:.3f})  misses {result[f'{name}_miss_rate']:.3f}  "
            f"early {result[f'{name}_early_alarm_rate']:.3f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
