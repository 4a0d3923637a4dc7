"""Runner contract: how an artifact gets measured on a target.

Every runner turns a :class:`RunRequest` into a :class:`Measurement`. Failures are data
(``Measurement.error`` plus ``error_kind``), never exceptions escaping ``Runner.run``, so a
nightly suite keeps going when one device drops, and a failed cell is never recorded as
complete. Transport steps (connect, push, execute, collect, clean up) are small functions in
each runner, called under try/finally.

This module is stdlib-only so that ``import runners`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

ErrorKind = Literal[
    "connection",  # host unreachable, auth failure, dropped mid-run
    "host_key",  # unknown or mismatching host key: never retried
    "timeout",  # the run exceeded its deadline
    "agent",  # the agent ran but failed (model did not load, runtime missing, ...)
    "usage",  # the request itself is wrong (missing file, bad option)
    "infrastructure",  # anything else outside the model's control
]


@dataclass(frozen=True)
class RunRequest:
    """What to measure and how.

    ``model_path`` is a local file (``.onnx`` or ``.tflite``); the runner pushes it.
    The timed loop runs until both ``min_count`` iterations and ``min_duration_s`` seconds
    are reached (TVM-style), after ``warmup`` untimed iterations, capped by ``max_count``.
    """

    model_path: str
    runtime: str = "auto"  # auto | onnxruntime | litert | tflite_runtime | benchmark_model
    threads: int = 1
    core_mask: str | None = None  # hex CPU mask (taskset style) for big.LITTLE placement, e.g. "f0"
    warmup: int = 10
    min_count: int = 50
    min_duration_s: float = 1.0
    max_count: int = 100_000
    inputs_npz: str | None = None  # local .npz with the input arrays (else random of the right dtype/shape)
    accuracy_npz: str | None = None  # local .npz with arrays x, y for an on-device accuracy run
    seed: int = 0
    timeout_s: float = 600.0
    detect_throttle: bool = True
    cooldown_s: float = 5.0  # pause before re-measuring after throttling was detected
    energy: bool = True  # read the target's power sensors when present
    profile: str | None = None  # device profile name: the power model for energy estimates
    label: str = ""  # free text carried into the measurement (cell id, variant name)
    # Paired A/B mode: ``model_path`` is A (the baseline), ``paired_model_path`` B (the candidate);
    # one agent process loads both and times blocks of ``min_duration_s`` / ``min_count``
    # alternately, A B / B A ..., for ``paired_rounds`` rounds numbered from ``paired_first_round``
    # (after one discarded A block with ``paired_warmup``). The blocks come back in
    # ``Measurement.extra["paired_blocks"]``.
    paired_model_path: str | None = None
    paired_rounds: int = 0
    paired_first_round: int = 0
    paired_warmup: bool = False
    # Host-speed reference: every N timed calls (0: off) the agent also times a fixed numpy matmul
    # workload, between calls (never inside a sample); ``extra["host_reference"]`` then carries its
    # median and the model's median over it, a figure that cancels the host's own speed drift
    # (shared or frequency-scaled CPUs) when runs are compared across time.
    reference_every: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of the timed loop, milliseconds."""

    count: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    median_ci95_ms: tuple[float, float]  # bootstrap 95% CI of the median


@dataclass(frozen=True)
class EnergyReading:
    """Energy of the timed loop, per inference."""

    joules_per_inference: float
    avg_watts: float
    source: str  # e.g. "rapl:package-0", "hwmon:ina226", "estimate:profile power model"
    measured: bool  # False for estimates: always labelled as such in reports


@dataclass
class Measurement:
    """The result of one run. ``error`` set means the run did not complete."""

    target: str
    model_path: str
    ok: bool
    error: str | None = None
    error_kind: ErrorKind | None = None
    latency_ms: list[float] = field(default_factory=list)  # every timed sample, in order
    stats: LatencyStats | None = None
    load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_bytes: int | None = None
    energy: EnergyReading | None = None
    accuracy: float | None = None
    throttled: bool = False  # the throttle detector fired at least once
    throttled_samples: int = 0  # samples excluded because they were taken while throttled
    remeasured: bool = False  # a cool-down and re-measure happened
    emulated: bool = False  # the target runs under emulation: timings are not performance figures
    runtime: str | None = None
    runtime_version: str | None = None
    threads: int | None = None
    cpu_affinity: list[int] | None = None
    machine: str | None = None  # platform.machine() on the target
    cpu_freq_mhz: list[float] = field(default_factory=list)
    temperature_c: list[float] = field(default_factory=list)
    wall_s: float | None = None  # host-side wall time of the whole run (push included)
    pushed_bytes: int | None = None  # 0 when the artifact was already on the target (cache hit)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failure(
        cls, target: str, model_path: str, error: str, kind: ErrorKind = "infrastructure"
    ) -> Measurement:
        return cls(target=target, model_path=model_path, ok=False, error=error, error_kind=kind)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        d = dict(data)
        if d.get("stats") is not None:
            s = dict(d["stats"])
            s["median_ci95_ms"] = tuple(s["median_ci95_ms"])
            d["stats"] = LatencyStats(**s)
        if d.get("energy") is not None:
            d["energy"] = EnergyReading(**d["energy"])
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("extra", {}).update(extra)
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@runtime_checkable
class Runner(Protocol):
    """Measures artifacts on one target. ``run`` never raises for target-side failures."""

    name: str

    def run(self, request: RunRequest) -> Measurement: ...


def model_suffix(path: str | Path) -> str:
    return Path(path).suffix.lower()
