"""The compiler's latency / energy budgets go through the cost model into the bit allocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_compress.costmodel import CostModel, budget_constraints, kernels_of, planner_options
from edge_compress.costmodel_export import float_compute_layers
from edge_compress.costmodel_store import save_costmodel
from edge_compress.errors import BudgetError
from edge_compress.plan import CompressionPlan

# a calibrated host in which 4-bit kernels run three times faster than 8-bit ones
SCALES = {"conv/int8": 3.0, "conv/int4": 1.0, "linear/int8": 3.0, "linear/int4": 1.0, "io/int8": 1.0}


@pytest.fixture
def lenet(host, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from edge_compress.compiler import CompileContext
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model

    monkeypatch.chdir(tmp_path)  # no result store here: the file store's models are used
    monkeypatch.delenv("EDGE_COMPRESS_STORE", raising=False)
    spec = resolve_model("lenet5")
    graph = extract_graph(spec.model, spec.example_input(2))
    return CompileContext(spec, host, spec.model, graph, spec.calibration(64))


def _stored_model(host) -> CostModel:
    cm = CostModel(host, target="bench-host")
    cm.coeffs = {c: {"roofline": s} for c, s in SCALES.items()}
    save_costmodel(cm)
    return cm


def test_planner_options_are_the_planners(host, lenet) -> None:
    from edge_compress.quant.planner import Planner

    pl = Planner(
        lenet.model, lenet.graph, host, lenet.calib_x[:16], method="noise", noise_draws=1, noise_samples=8
    )
    options, act_bits = planner_options(lenet.graph, host)
    assert options == pl.options and act_bits == pl.act_bits


def test_compile_meets_the_latency_budget_with_the_stored_model(host, lenet) -> None:
    from edge_compress.compiler import _make_plan

    cm = _stored_model(host)
    g = lenet.graph
    fc = float_compute_layers(g)  # the exported file runs these in float whatever their bits
    assert fc == {"c1"}

    def p99_of(plan: CompressionPlan) -> float:
        return cm.predict_from_kernels(kernels_of(g, plan, fc)).latency_p99_ms

    p99 = {b: p99_of(CompressionPlan.uniform(g, "lenet5", "host", b, 8)) for b in (4, 8)}
    assert p99[4] < p99[8]
    limit = 0.5 * (p99[4] + p99[8])
    plan = _make_plan(lenet, {"latency_p99_ms": limit}, "noise", None)
    assert p99_of(plan) <= limit * (1 + 1e-6)
    assert {d.weight_bits for d in plan.layers.values()} == {4, 8}  # mixed: all-int8 is over the budget
    assert any("calibrated cost model of 'bench-host'" in n for n in lenet.notes)
    assert not any("not enforced" in n for n in plan.notes)
    # below the all-int4 prediction: the planner names the budget and the smallest reachable value
    with pytest.raises(BudgetError, match="latency_p99_ms"):
        _make_plan(lenet, {"latency_p99_ms": 0.5 * p99[4]}, "noise", None)


def test_uncalibrated_budgets_use_the_optimistic_bound(host, lenet) -> None:
    cm = CostModel(host)
    g = lenet.graph
    (c,), notes = budget_constraints(cm, g, {"energy_per_inference_mj": 1.0, "model_bytes": 1e6})
    assert c.name == "energy_per_inference_mj" and "uncalibrated" in notes[0]
    plan8 = CompressionPlan.uniform(g, "lenet5", "host", 8, 8)
    bits = {n: 8 for n in planner_options(g, host)[0]}
    usage = c.usage(bits) + (1.0 - c.limit)
    assert usage == pytest.approx(cm.predict(g, plan8).energy_mj / (1 + 2 * cm.rel_error))
    assert budget_constraints(cm, g, {"model_bytes": 1e6}) == ([], [])


def test_budgets_follow_a_non_linear_latency_curve(host, lenet) -> None:
    """With measured latency a power of the kernels' sum, a budget is met exactly where the
    prediction reaches it (the limit is mapped onto the additive scale of the coefficients)."""
    cm = CostModel(host, target="curved")
    cm.coeffs = {c: {"roofline": s} for c, s in SCALES.items()}
    g = lenet.graph
    fc = float_compute_layers(g)
    plans = {b: CompressionPlan.uniform(g, "lenet5", "host", b, 8) for b in (4, 8)}
    t = {b: cm.predict_from_kernels(kernels_of(g, p, fc)).latency_ms for b, p in plans.items()}
    cm.latency_power, cm.latency_ref_ms, cm.latency_linear_above = 0.8, t[4], 0.5 * (t[4] + t[8])
    lat = {b: cm.predict_from_kernels(kernels_of(g, p, fc)).latency_ms for b, p in plans.items()}
    assert lat[4] == pytest.approx(t[4]) and lat[8] < t[8]  # compressed above the reference point
    options = planner_options(g, host)[0]
    for b in (4, 8):
        (c,), _ = budget_constraints(cm, g, {"latency_median_ms": lat[b]}, float_compute=fc)
        bits = {n: b for n in options}
        assert c.usage(bits) == pytest.approx(c.limit, rel=1e-9)
        (c,), _ = budget_constraints(cm, g, {"latency_median_ms": 0.99 * lat[b]}, float_compute=fc)
        assert c.usage(bits) > c.limit
