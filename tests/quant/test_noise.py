"""The additive noise model on real trained weights and data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from edge_compress.plan import CompressionPlan
from edge_compress.quant import fakequant as fq
from edge_compress.quant.noise import NoiseModel


def _round_err(w: torch.Tensor, step: torch.Tensor) -> float:
    return float(((torch.round(w / step) * step - w) ** 2).mean())


def test_rounding_noise_is_step2_over_12_and_halving_the_step_quarters_it(lenet):
    zm, _ = lenet
    w = zm.model.f5.weight.detach().double()  # 48,000 real trained weights
    step = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)  # 8-bit per-channel, no clipping
    e1, e2 = _round_err(w, step), _round_err(w, step / 2)
    model = float((step**2 / 12).mean())
    assert e1 == pytest.approx(model, rel=0.10)
    assert e1 / e2 == pytest.approx(4.0, rel=0.10)


def test_weight_error_reports_measured_and_modelled_energy(lenet):
    zm, _ = lenet
    w = zm.model.f5.weight.detach()
    meas8, model8 = fq.weight_error(w, 8, True, "minmax")
    assert meas8.sum() == pytest.approx(model8.sum(), rel=0.10)
    q, _ = fq.quantize_weight(w, 4, True, "mse")
    meas4, _ = fq.weight_error(w, 4, True, "mse")
    assert meas4.sum() == pytest.approx(float(((q - w) ** 2).sum()), rel=1e-6)


def test_mse_clipping_beats_minmax_at_4_bits(lenet):
    zm, graph = lenet
    mods = dict(zm.model.named_modules())
    for li in graph.layers:
        w = mods[li.name].weight.detach()
        mse = float(((fq.quantize_weight(w, 4, True, "mse")[0] - w) ** 2).sum())
        mm = float(((fq.quantize_weight(w, 4, True, "minmax")[0] - w) ** 2).sum())
        assert mse <= mm + 1e-12, li.name
    w = zm.model.f5.weight.detach()
    assert float(((fq.quantize_weight(w, 4, True, "mse")[0] - w) ** 2).sum()) < 0.9 * float(
        ((fq.quantize_weight(w, 4, True, "minmax")[0] - w) ** 2).sum()
    )


def test_int8_fake_quant_of_lenet5_stays_within_1pp(lenet):
    zm, graph = lenet
    plan = CompressionPlan.uniform(graph, "lenet5", "host", 8, 8)
    sim, _ = fq.quantize_plan(zm.model, plan, zm.calibration(128))
    assert zm.evaluate(zm.model) - zm.evaluate(sim) <= 0.01


def test_noise_model_ranks_plans_like_the_simulation(lenet_planner, lenet):
    zm, _ = lenet
    nm = lenet_planner.noise_model
    rng = np.random.default_rng(5)
    plans = [nm.plan_for({n: b for n in nm.layers}) for b in (8, 4)]
    seen = {p.digest() for p in plans}
    while len(plans) < 8:
        p = nm.plan_for(nm.random_bits(rng))
        if p.digest() not in seen:
            seen.add(p.digest())
            plans.append(p)
    x = zm.dataset.x_test
    pred = [nm.predict(p)["output_noise_power"] for p in plans]
    meas = [nm.measure(p, x)["output_noise_power"] for p in plans]
    assert spearmanr(pred, meas)[0] >= 0.8
    # the prediction is within a small factor of the measurement at 8 bits (fine steps)
    assert 0.3 < meas[0] / pred[0] < 3.0


def test_noise_model_simulation_is_fakequant_numerics(lenet_planner, lenet):
    zm, graph = lenet
    nm = lenet_planner.noise_model
    bits = {n: (4 if i % 2 else 8) for i, n in enumerate(graph.names)}
    plan = nm.plan_for(bits)
    sim_a = nm.simulate(plan)
    sim_b, _ = fq.quantize_plan(zm.model, plan, lenet_planner.calib_x)
    x = torch.from_numpy(zm.dataset.x_test[:64])
    with torch.no_grad():
        assert torch.equal(sim_a(x), sim_b(x))


def test_adjoint_and_injected_gains_agree(lenet, lenet_planner):
    zm, graph = lenet
    calib = zm.calibration(64)
    adj = NoiseModel.build(zm.model, graph, calib, gain_method="adjoint", draws=8, max_samples=64)
    inj = NoiseModel.build(zm.model, graph, calib, gain_method="inject", draws=6, max_samples=64)
    for n in graph.names:
        for b in (8, 4):
            ratio = adj.layers[n].w_out[b] / inj.layers[n].w_out[b]
            assert 0.4 < ratio < 2.5, (n, b, ratio)
        assert 0.5 < adj.layers[n].a_out[8] / inj.layers[n].a_out[8] < 2.0, n


def test_noise_model_json_round_trip_predicts_the_same(lenet_planner):
    nm = lenet_planner.noise_model
    again = NoiseModel.from_json(json.loads(json.dumps(nm.to_json())))
    plan = nm.plan_for({n: 4 for n in nm.layers})
    a, b = nm.predict(plan), again.predict(plan)
    for k in ("output_noise_power", "sqnr_db", "acc_drop_pp"):
        assert a[k] == pytest.approx(b[k], rel=1e-9)


def test_accuracy_curve_is_monotone_and_zero_at_high_sqnr(lenet_planner):
    curve = lenet_planner.noise_model.curve
    assert curve is not None and len(curve.fit_points) >= 6
    s = np.linspace(0, 60, 61)
    d = np.asarray(curve.drop_pp(s))
    assert np.all(np.diff(d) <= 1e-9)
    assert abs(float(curve.drop_pp(80.0))) < 0.05


def test_prediction_variants_are_reported(lenet_planner):
    nm = lenet_planner.noise_model
    assert nm.mode == "realized"
    pr = nm.predict(nm.plan_for({n: 4 for n in nm.layers}))
    for k in ("output_noise_power_realized", "output_noise_power_energy", "output_noise_power_step"):
        assert pr[k] > 0
    assert pr["output_noise_power"] == pr["output_noise_power_realized"]
    ln = nm.layers["f5"]
    assert ln.weight_noise(4) == ln.w_out_real[4]
    assert ln.weight_noise(4, variant="energy") == ln.w_out[4]
    assert ln.weight_noise(None) == 0.0
