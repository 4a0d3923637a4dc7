"""Selection: the most accurate feasible candidate, rejections with their broken budget and margin,
impossible budgets, the measurement loop (real local runner on lenet5; injected measurements)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge_compress.costmodel import CostModel, Kernel
from edge_compress.errors import BudgetError, UserError
from edge_compress.selection import (
    Candidate,
    generate_candidates,
    pareto_plot,
    parse_select_budget,
    runner_measure,
    select,
    violations,
)
from runners.base import LatencyStats, Measurement


@pytest.fixture(scope="module")
def lenet_candidates(host):
    """lenet5 as float, uniform int8 and uniform int4 (planner, pruning, factorization off: fast)."""
    notes: list[str] = []
    cands = generate_candidates(
        "lenet5", host, alphas=(), prune_ratios=(), ranks=(), notes=notes, use_project_exporter=False
    )
    assert [c.technique for c in cands] == ["fp32", "w8a8", "w4a8"]
    return cands


def test_local_runner_picks_most_accurate_feasible(lenet_candidates, host, tmp_path: Path) -> None:
    """Real measurements (local runner). A bytes budget only int4 meets makes the answer certain."""
    cands = lenet_candidates
    by = {c.technique: c for c in cands}
    int8_bytes = sum(k.weight_bytes for k in by["w8a8"].kernels)
    int4_bytes = sum(k.weight_bytes for k in by["w4a8"].kernels)
    budgets = {"model_bytes": (int8_bytes + int4_bytes) / 2, "latency_median_ms": 1000.0}
    from runners.local import LocalRunner

    notes: list[str] = []
    measure = runner_measure(
        LocalRunner(),
        tmp_path,
        host.name,
        min_count=20,
        min_duration_s=0.1,
        warmup=3,
        notes=notes,
        use_project_exporter=False,
    )
    res = select(cands, budgets, CostModel(host, target="local"), measure)
    assert res.chosen is by["w4a8"] and res.basis == "measured"
    assert res.measurements == 1  # the two more accurate ones can never meet the bytes budget
    assert by["w4a8"].measured is not None and by["w4a8"].measured.basis == "measured"
    assert by["w4a8"].measured.latency_ms > 0 and by["w4a8"].measurement["target"] == "local"
    rej = {r["id"]: r for r in res.rejections()}
    for tech in ("fp32", "w8a8"):
        c = by[tech]
        v = rej[c.id]["violations"]["model_bytes"]
        value = sum(k.weight_bytes for k in c.kernels)
        assert v["value"] == pytest.approx(value) and v["limit"] == budgets["model_bytes"]
        assert v["over_pct"] == pytest.approx(100 * (value / budgets["model_bytes"] - 1))
        assert "model_bytes by +" in rej[c.id]["reason"] and rej[c.id]["basis"] == "predicted"
    doc = res.to_json()
    assert doc["chosen"]["id"] == by["w4a8"].id and doc["numbers"] == "measured on the target"
    # the measurement was fed back into the cost model
    assert len(res.trace) == 1 and res.trace[0]["ok"]
    png = pareto_plot(res, tmp_path / "pareto.png")
    assert Path(png).stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# injected measurements (clearly synthetic): the loop's order, stopping rule and margins


def _k(name: str, macs: int) -> Kernel:
    return Kernel(name, name, "conv", "fp32", macs, 100, 400.0, 1000, 1000, 8, 8, 1, 9, 100, 1, 2, 1000)


def _fake(latency: float) -> Measurement:
    st = LatencyStats(
        200,
        latency,
        latency,
        latency * 1.05,
        latency * 1.2,
        0.01,
        latency * 0.9,
        latency * 2,
        (latency, latency),
    )
    return Measurement("fake", "fake.onnx", True, stats=st, extra={"injected": True})


@pytest.fixture
def synthetic(host):
    """Five candidates with known 'true' latencies, fed to select as injected measurements; the
    roofline (one thread at 4.8e10 MAC/s) sees 80% of each one's true time in its MACs."""
    truth = {"a": 3.0, "b": 2.2, "c": 1.4, "d": 1.0, "e": 0.6}  # ms
    acc = {"a": 99.0, "b": 98.5, "c": 98.0, "d": 97.0, "e": 95.0}
    cands = [Candidate(n, "m", n, acc[n], [_k(n, int(truth[n] * 4.8e7 * 0.8))]) for n in truth]
    cm = CostModel(host, target="fake")
    return cands, truth, cm


def test_injected_loop_stops_when_nothing_better_can_be_feasible(synthetic) -> None:
    cands, truth, cm = synthetic
    asked: list[str] = []

    def measure(c: Candidate) -> Measurement:
        asked.append(c.id)
        return _fake(truth[c.id])

    res = select(cands, {"latency_median_ms": 1.5}, cm, measure)
    assert res.chosen is not None and res.chosen.id == "c"  # the most accurate one at or under 1.5 ms
    assert "d" not in asked and "e" not in asked  # less accurate than a measured feasible one: never run
    assert asked[-1] == "c" and res.measurements == len(asked) < len(cands)
    rej = {r["id"]: r for r in res.rejections()}
    for n in asked[:-1]:  # measured and too slow: the margin is the measured one
        v = rej[n]["violations"]["latency_median_ms"]
        assert rej[n]["basis"] == "measured" and v["over_pct"] == pytest.approx(100 * (truth[n] / 1.5 - 1))
    assert rej["d"]["reason"].startswith("meets the budgets, less accurate")


def test_failed_measurement_is_recorded_and_skipped(synthetic) -> None:
    cands, truth, cm = synthetic

    def measure(c: Candidate) -> Measurement:
        if c.id == "c":
            return Measurement.failure("fake", "c.onnx", "device unreachable", "connection")
        return _fake(truth[c.id])

    res = select(cands, {"latency_median_ms": 1.5}, cm, measure)
    assert res.chosen is not None and res.chosen.id == "d"
    assert any(t["id"] == "c" and not t["ok"] for t in res.trace)


def test_impossible_budget_names_binding_budget_and_closest(synthetic) -> None:
    cands, truth, cm = synthetic
    with pytest.raises(BudgetError) as ei:
        select(cands, {"latency_median_ms": 0.1, "model_bytes": 1e9}, cm, lambda c: _fake(truth[c.id]))
    msg = str(ei.value)
    assert isinstance(ei.value, UserError)
    assert "latency_median_ms <= 0.1 ms" in msg and "the closest, e," in msg and "measured" in msg
    # on predictions (no target) the same
    with pytest.raises(BudgetError, match=r"latency_median_ms .*closest, e,.*predicted"):
        select(cands, {"latency_median_ms": 1e-6}, cm)


def test_budget_parsing_and_violations(host) -> None:
    b = parse_select_budget("latency_median=2ms,latency_p99=15ms,energy=5mJ,bytes=60KB")
    assert b == {
        "latency_median_ms": 2.0,
        "latency_p99_ms": 15.0,
        "energy_per_inference_mj": 5.0,
        "model_bytes": 60000,
    }
    from edge_compress.selection import Costs

    c = Costs("measured", 3.0, 16.5, 4.0, "estimate", 5e6, 50_000)
    v = violations(c, b)
    assert set(v) == {"latency_median_ms", "latency_p99_ms"}
    assert v["latency_p99_ms"]["over_pct"] == pytest.approx(10.0)
    assert math.isclose(v["latency_median_ms"]["over_pct"], 50.0)
