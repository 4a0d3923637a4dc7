"""Empirical bias correction: each layer's output mean restored on the calibration data, lower
output noise at 4 bits, one simulation whether the deltas sit in the spec or in the biases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_compress.errors import UserError
from edge_compress.plan import CompressionPlan
from edge_compress.quant import fakequant as fq


def _means(model, names, x):
    return {n: m.numpy() for n, m in fq.output_means(model, names, torch.from_numpy(x)).items()}


def _int4(graph, correct: bool) -> CompressionPlan:
    plan = CompressionPlan.uniform(graph, "lenet5", "host", 4, 8)
    plan.bias_correction = correct
    return plan


def test_corrected_layers_keep_the_float_output_means(lenet):
    zm, graph = lenet
    folded = fq.fold_batchnorm(zm.model)
    calib = zm.calibration(128)
    names = fq.correctable(folded, graph.names)
    assert names == graph.names  # BN folding and the Linear layers give every LeNet-5 layer a bias
    ref = _means(folded, names, calib)
    shift = {}
    for correct in (False, True):
        spec = fq.compute_quant_spec(folded, _int4(graph, correct), calib)
        assert all((lq.bias_delta is not None) == correct for lq in spec.values())
        got = _means(fq.simulate(folded, spec), names, calib)
        shift[correct] = max(
            float(np.abs(got[n] - ref[n]).max() / (np.abs(ref[n]).max() + 1e-12)) for n in names
        )
    assert shift[True] < 2e-4  # every layer's per-channel mean is the float one, after the layers before it
    assert shift[False] > 1e-2, shift  # and 4-bit weights do move it


def test_bias_correction_lowers_int4_output_noise_on_held_out_data(lenet):
    zm, graph = lenet
    folded = fq.fold_batchnorm(zm.model)
    calib, x = zm.calibration(256), torch.from_numpy(zm.dataset.x_test)
    with torch.no_grad():
        y0 = folded(x)
        noise = {
            c: float(
                (
                    (fq.simulate(folded, fq.compute_quant_spec(folded, _int4(graph, c), calib))(x) - y0) ** 2
                ).mean()
            )
            for c in (False, True)
        }
    assert noise[True] < 0.9 * noise[False], noise


def test_deltas_in_the_biases_are_the_same_simulation(lenet):
    zm, graph = lenet
    folded = fq.fold_batchnorm(zm.model)
    calib = zm.calibration(128)
    spec = fq.compute_quant_spec(folded, _int4(graph, True), calib)
    b0 = {
        n: m.bias.detach().clone() for n, m in folded.named_modules() if getattr(m, "bias", None) is not None
    }
    moved, plain = fq.materialize(folded, spec)
    assert all(lq.bias_delta is None for lq in plain.values())
    assert all(torch.equal(m.bias, b0[n]) for n, m in folded.named_modules() if n in b0)  # input untouched
    x = torch.from_numpy(zm.dataset.x_val)
    with torch.no_grad():
        a, b = fq.simulate(folded, spec)(x), fq.simulate(moved, plain)(x)
    assert torch.allclose(a, b, atol=1e-5)
    # without deltas nothing is copied
    same, _ = fq.materialize(folded, plain)
    assert same is folded


def test_plan_records_bias_correction(lenet):
    _, graph = lenet
    on, off = _int4(graph, True), _int4(graph, False)
    assert on.digest() != off.digest()  # a cached artifact of one is never reused for the other
    back = CompressionPlan.from_json(off.to_json())
    assert back.bias_correction is False and back.digest() == off.digest()
    legacy = on.to_json()
    del legacy["bias_correction"]
    assert CompressionPlan.from_json(legacy).bias_correction is True
    with pytest.raises(UserError, match="bias_correction must be true or false"):
        CompressionPlan.from_json({**on.to_json(), "bias_correction": "yes"})


def test_noise_model_terms_are_measured_corrected(lenet):
    """The noise model's terms are measured with the plan's correction: built on exactly the
    calibration batch the simulation corrects on, a two-term plan is predicted as simulated; a
    model built without correction predicts the uncorrected plan instead."""
    from edge_compress.plan import LayerDecision
    from edge_compress.quant.noise import NoiseModel

    zm, graph = lenet
    calib = zm.calibration(64)
    names = graph.names
    for correct in (True, False):
        nm = NoiseModel.build(
            zm.model, graph, calib, max_samples=64, pairs=64, bias_correction=correct, draws=2
        )
        assert nm.bias_correction is correct
        layers = {
            n: LayerDecision(n, ln.kind, 4 if n in (names[0], names[1]) else None, None)
            for n, ln in nm.layers.items()
        }
        plan = CompressionPlan("lenet5", "host", layers, bias_correction=correct)
        meas = nm.measure(plan, calib)["output_noise_power"]
        assert nm.predict(plan)["output_noise_power"] == pytest.approx(meas, rel=1e-4)
        assert NoiseModel.from_json(nm.to_json()).bias_correction is correct
        assert nm.plan_for({n: 4 for n in names}).bias_correction is correct
