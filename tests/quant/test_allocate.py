"""The ILP bit allocation: budgets, tied groups, per-kind allowed bits, optimality, impossible budgets."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from edge_compress.errors import BudgetError
from edge_compress.quant.allocate import Constraint, allocate_bits


def _brute(options, cost, constraints, groups):
    units = [list(g) for g in groups] + [[n] for n in options if not any(n in g for g in groups)]
    best = None
    for combo in itertools.product(*[sorted(set.intersection(*(set(options[n]) for n in u))) for u in units]):
        bits = {n: b for u, b in zip(units, combo, strict=True) for n in u}
        if all(c.usage(bits) <= c.limit for c in constraints):
            obj = sum(cost[(n, b)] for n, b in bits.items())
            if best is None or obj < best[0] - 1e-12:
                best = (obj, bits)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ilp_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(7)]
    options = {n: (8, 6, 4) if i % 3 else (8, 4) for i, n in enumerate(names)}
    params = rng.integers(50, 5000, len(names))
    cost = {
        (n, b): float(rng.uniform(0.1, 10) * 2.0 ** (-b) * params[i])
        for i, n in enumerate(names)
        for b in options[n]
    }
    size = {(n, b): float(params[i] * b / 8) for i, n in enumerate(names) for b in options[n]}
    macs = {
        (n, b): float(params[i] * rng.integers(1, 50) * b) for i, n in enumerate(names) for b in options[n]
    }
    lo, hi = sum(params) * 4 / 8, sum(params)
    cons = [Constraint("model_bytes", size, lo + rng.uniform(0.2, 0.8) * (hi - lo), " bytes")]
    if seed % 2:
        cons.append(
            Constraint("bops", macs, 0.7 * sum(max(v for (m, _), v in macs.items() if m == n) for n in names))
        )
    groups = [["l1", "l2"]] if seed % 3 == 0 else []
    best = _brute(options, cost, cons, groups)
    if best is None:
        with pytest.raises(BudgetError):
            allocate_bits(options, cost, cons, groups)
        return
    alloc = allocate_bits(options, cost, cons, groups)
    assert alloc.objective == pytest.approx(best[0], rel=1e-7)
    for c in cons:
        assert c.usage(alloc.bits) <= c.limit


def test_planner_respects_the_byte_budget(lenet_planner, lenet):
    _, graph = lenet
    lo, hi = lenet_planner.bounds_bytes()
    for budget in (lo, 0.5 * (lo + hi), 45_000.0, hi):
        plan = lenet_planner.plan({"model_bytes": budget})
        assert plan.model_bytes(graph) <= budget
        assert plan.predicted["model_bytes"] == plan.model_bytes(graph)
    a = lenet_planner.plan({}, alpha=0.5)
    assert a.budget["model_bytes"] == pytest.approx(lo + 0.5 * (hi - lo), abs=1)
    assert a.model_bytes(graph) <= a.budget["model_bytes"]
    assert {d.weight_bits for d in a.layers.values()} == {4, 8}


def test_bops_budget_and_extra_constraints(lenet_planner, lenet):
    _, graph = lenet
    full = lenet_planner.plan({})
    plan = lenet_planner.plan({"bops": 0.8 * full.bops(graph)})
    assert plan.bops(graph) <= 0.8 * full.bops(graph)
    # a cost model's constraint: pretend each int8 layer costs 1 ms, int4 0.4 ms; 3.5 ms budget
    lat = Constraint(
        "latency_p99_ms", {(n, b): (1.0 if b == 8 else 0.4) for n in graph.names for b in (8, 4)}, 3.5
    )
    plan = lenet_planner.plan({}, extra_constraints=[lat])
    assert lat.usage(plan.bits()) <= 3.5
    assert sum(b == 4 for b in plan.bits().values()) >= 3


def test_precision_groups_are_tied_on_resnet(host):
    from edge_compress.graph import extract_graph
    from edge_compress.quant.allocate import allocation_units
    from edge_compress.quant.planner import Planner
    from edge_compress.zoo import load_zoo

    zm = load_zoo("resnet")
    graph = extract_graph(zm.model, zm.example_input(2))
    assert graph.precision_groups
    pl = Planner(zm.model, graph, host, zm.calibration(16), method="noise", noise_samples=16, noise_draws=2)
    lo, hi = pl.bounds_bytes()
    for alpha in (0.2, 0.4, 0.6, 0.8):
        plan = pl.plan({}, alpha=alpha)
        for g in graph.precision_groups:
            assert len({plan.layers[n].weight_bits for n in g}) == 1, g
        assert plan.model_bytes(graph) <= lo + alpha * (hi - lo)
    # costs that would split every group if it were not tied
    names = graph.names
    cost = {(n, b): (0.0 if (b == 4) == (i % 2 == 0) else 1.0) for i, n in enumerate(names) for b in (8, 4)}
    alloc = allocate_bits({n: (8, 4) for n in names}, cost, (), graph.precision_groups)
    for g in graph.precision_groups:
        assert len({alloc.bits[n] for n in g}) == 1
    assert len(allocation_units({n: (8, 4) for n in names}, graph.precision_groups)) == len(names) - sum(
        len(g) - 1 for g in graph.precision_groups
    )


@pytest.fixture(scope="module")
def mobilenet_phone():
    from edge_compress.graph import extract_graph
    from edge_compress.profiles import load_profile
    from edge_compress.quant.planner import Planner
    from edge_compress.zoo import load_zoo

    zm = load_zoo("mobilenetv2")
    graph = extract_graph(zm.model, zm.example_input(2))
    phone = load_profile("phone")
    pl = Planner(zm.model, graph, phone, zm.calibration(16), method="noise", noise_samples=16, noise_draws=2)
    return pl, graph


def test_phone_profile_keeps_depthwise_int8_on_mobilenetv2(mobilenet_phone):
    pl, graph = mobilenet_phone
    plan = pl.plan({}, alpha=0.0)
    dw = [li.name for li in graph.layers if li.kind == "depthwise_conv"]
    assert dw
    for li in graph.layers:
        bits = plan.layers[li.name].weight_bits
        assert bits == 8 if li.kind == "depthwise_conv" else bits == 4, li.name
    assert "only int8" in plan.layers[dw[0]].why
    assert plan.layers[dw[0]].sensitivity.keys() == {"8"}


def test_impossible_budget_names_the_budget_and_the_smallest_plan(mobilenet_phone):
    pl, graph = mobilenet_phone
    smallest = pl.plan({}, alpha=0.0).model_bytes(graph)
    with pytest.raises(BudgetError) as ei:
        pl.plan({"model_bytes": 10_000})
    msg = str(ei.value)
    assert "model_bytes=10,000" in msg
    assert f"{smallest:,.0f} bytes" in msg
    assert "phone" in msg and "depthwise_conv layers are int8-only" in msg
    assert len(re.findall(r"\.\s", msg)) == 0  # one sentence


def test_budgets_that_cannot_hold_together_raise(lenet_planner, lenet):
    _, graph = lenet
    lo, hi = lenet_planner.bounds_bytes()
    full = lenet_planner.plan({})
    with pytest.raises(BudgetError, match="cannot be met together"):
        # bytes force f5 to int4; a BOPs limit just under all-int8 forces c1 or c3 to int4 as well; a
        # latency-like constraint forbids more than one int4 layer
        one_low = Constraint("int4_layers", {(n, 4): 1.0 for n in graph.names}, 1.0)
        lenet_planner.plan(
            {"model_bytes": 0.5 * (lo + hi), "bops": 0.9 * full.bops(graph)}, extra_constraints=[one_low]
        )


def test_top_k_allocations_are_distinct_and_ordered():
    from edge_compress.quant.allocate import allocate_top_k

    rng = np.random.default_rng(3)
    names = [f"l{i}" for i in range(6)]
    options = {n: (8, 4) for n in names}
    params = rng.integers(100, 1000, len(names))
    cost = {
        (n, b): float(rng.uniform(0.5, 2) * params[i] * 2.0 ** (-b))
        for i, n in enumerate(names)
        for b in (8, 4)
    }
    size = {(n, b): float(params[i] * b / 8) for i, n in enumerate(names) for b in (8, 4)}
    cons = [Constraint("model_bytes", size, 0.75 * sum(params))]
    allocs = allocate_top_k(options, cost, cons, k=5)
    assert len(allocs) == 5
    assert len({tuple(sorted(a.bits.items())) for a in allocs}) == 5
    objs = [a.objective for a in allocs]
    assert objs == sorted(objs)
    assert allocs[0].objective == pytest.approx(_brute(options, cost, cons, [])[0])
    # fewer feasible allocations than asked: all of them, then stop
    tight = [Constraint("model_bytes", size, float(sum(params) * 4 / 8))]
    assert len(allocate_top_k(options, cost, tight, k=5)) == 1
