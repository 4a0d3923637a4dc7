"""plan_model / Planner: the plan's contents, JSON round trip, input errors, Pareto sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.errors import BudgetError, UserError
from edge_compress.graph import extract_graph
from edge_compress.plan import CompressionPlan
from edge_compress.quant.planner import METHODS, pareto_sweep, plan_model, predict


def test_plan_carries_bits_sensitivities_predictions_and_reasons(lenet_planner, lenet):
    _, graph = lenet
    plan = lenet_planner.plan({}, alpha=0.5)
    assert plan.method == "hessian" and plan.profile == "host"
    assert plan.groups == graph.precision_groups
    for li in graph.layers:
        d = plan.layers[li.name]
        assert d.weight_bits in (4, 8) and d.act_bits == 8 and d.kind == li.kind
        assert set(d.sensitivity) == {"8", "4"}
        assert d.predicted["bytes"] > 0 and d.predicted["noise_power"] > 0
        assert d.why.startswith(f"int{d.weight_bits}") and "\n" not in d.why
    p = plan.predicted
    for k in (
        "model_bytes",
        "bops",
        "output_noise_power",
        "output_noise_power_step",
        "sqnr_db",
        "acc_drop_pp",
    ):
        assert np.isfinite(p[k]), k
    assert p["min_bytes"] <= p["model_bytes"] <= p["int8_bytes"]
    assert predict(plan, lenet_planner.noise_model)["sqnr_db"] == pytest.approx(p["sqnr_db"])
    # a smaller budget never predicts less noise
    small = lenet_planner.plan({}, alpha=0.0)
    assert small.predicted["output_noise_power"] >= p["output_noise_power"]


def test_plan_json_round_trips(lenet_planner, tmp_path):
    plan = lenet_planner.plan({}, alpha=0.5)
    path = plan.save(tmp_path / "plan.json")
    again = CompressionPlan.load(path)
    assert again.digest() == plan.digest()
    assert again.to_json() == json.loads(plan.dumps())
    assert again.predicted == pytest.approx(plan.predicted)


def test_plan_model_entry_point(lenet, host):
    zm, graph = lenet
    calib = zm.calibration(64)
    opts = dict(hutchinson_samples=2, hessian_samples=32, noise_samples=32, noise_draws=2)
    p8 = plan_model(zm.model, graph, host, calib, method="uniform8", model_name="lenet5", **opts)
    assert set(p8.bits().values()) == {8} and "acc_drop_pp" not in p8.predicted
    p = plan_model(zm.model, graph, host, calib, budget={"model_bytes": 45_000}, method="noise", **opts)
    assert p.model_bytes(graph) <= 45_000 and p.budget == {"model_bytes": 45_000.0}
    with pytest.raises(BudgetError, match="uniform int4"):
        plan_model(zm.model, graph, host, calib, budget={"model_bytes": 20_000}, method="uniform4", **opts)
    with pytest.raises(UserError, match="unknown quantization method"):
        plan_model(zm.model, graph, host, calib, method="magic")
    with pytest.raises(UserError, match="alpha"):
        plan_model(zm.model, graph, host, calib, alpha=1.5, method="noise", **opts)
    assert METHODS == ("hessian", "noise", "uniform8", "uniform4")


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.gate = Gate()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.stem(x)))


class WithDeconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.up(self.conv(x)), 1))


def test_untraceable_model_names_the_layer(host):
    model = Untraceable().eval()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    graph = extract_graph(model, torch.from_numpy(x[:2]))
    with pytest.raises(UserError, match="layer 'gate'"):
        plan_model(model, graph, host, x)


def test_op_without_quantization_rule_names_the_layer(host):
    model = WithDeconv().eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    graph = extract_graph(model, torch.from_numpy(x[:2]))
    with pytest.raises(UserError, match=r"layer 'up' \(ConvTranspose2d\)"):
        plan_model(model, graph, host, x)


def test_pareto_sweep_reports_predicted_and_measured_accuracy(lenet_planner, lenet):
    zm, graph = lenet
    ds = zm.dataset
    pts = pareto_sweep(
        zm.model,
        graph,
        lenet_planner.profile,
        lenet_planner.calib_x,
        ds.x_val,
        ds.y_val,
        alphas=(0.0, 0.5, 1.0),
        planner=lenet_planner,
        test_x=ds.x_test,
        test_y=ds.y_test,
    )
    assert [p.alpha for p in pts] == [0.0, 0.5, 1.0]
    sizes = [p.model_bytes for p in pts]
    assert sizes == sorted(sizes)
    for p in pts:
        assert p.model_bytes <= p.budget_bytes
        assert 0.0 <= p.measured["acc"] <= 1.0 and np.isfinite(p.predicted["acc_drop_pp"])
    assert pts[-1].measured["acc"] >= pts[0].measured["acc"] - 0.01


def test_refinement_keeps_the_allocation_closest_to_fp32(lenet_planner):
    """Among the ILP's best allocations, the chosen one has the lowest simulated KL divergence from
    the float model on the evaluation data, whatever its rank by sensitivity; with refinement off,
    the ILP optimum is kept."""
    from edge_compress.quant.allocate import allocate_top_k

    pl = lenet_planner
    plan = pl.plan({}, alpha=0.25)
    cons = [pl.constraint("model_bytes", plan.budget["model_bytes"])]
    allocs = allocate_top_k(pl.options, pl.sens, cons, pl.graph.precision_groups, k=pl.refine_top_k)
    assert len(allocs) > 2
    kls = [pl.measure(pl.noise_model.plan_for(a.bits, pl.act_bits), pl.eval_x)["kl_to_fp32"] for a in allocs]
    assert all(np.isfinite(kls)) and min(kls) > 0 and len(set(kls)) == len(kls)
    best = allocs[int(np.argmin(kls))]
    assert plan.bits() == best.bits
    assert any("KL divergence from fp32" in n for n in plan.notes)
    # handed the allocations worst-first, it still picks the closest one (not the first)
    worst_first = [allocs[i] for i in np.argsort(kls)[::-1]]
    notes: list[str] = []
    assert pl._refine(worst_first, notes) is best and f"#{len(allocs)} of the" in notes[0]
    pl.refine_top_k = 1
    try:
        assert pl.plan({}, alpha=0.25).bits() == allocs[0].bits
    finally:
        pl.refine_top_k = 5
