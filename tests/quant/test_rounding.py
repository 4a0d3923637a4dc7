"""GPTQ weight rounding: the columns it sees are the layer's real inputs, the weights stay on the
plan's grid, the layer and network output errors fall on held-out data, and the plan field, the
simulation and the exporters' form of the weights agree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.plan import CompressionPlan
from edge_compress.quant import fakequant as fq
from edge_compress.quant.rounding import (
    WeightQuantizer,
    _columns,
    check_rounding,
    gptq_weight,
    input_hessians,
)


def _layer_input(model, name, x):
    got = {}
    h = dict(model.named_modules())[name].register_forward_pre_hook(lambda m, i: got.setdefault("x", i[0]))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["x"]


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(6, 8, 3, padding=1),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),  # depthwise
        nn.Conv2d(6, 4, (3, 2), padding=(1, 0), dilation=(2, 1), groups=2),
        nn.Conv1d(6, 5, 5, padding=2, stride=2),
        nn.Linear(6, 3),
    ],
)
def test_columns_are_what_the_weight_multiplies(layer):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 9, 9) if isinstance(layer, nn.Conv2d) else torch.randn(4, 6, 11)
    if isinstance(layer, nn.Linear):
        x = x.transpose(1, 2)  # (batch, positions, features)
    with torch.no_grad():
        bias = layer.bias if isinstance(layer, nn.Linear) else layer.bias.reshape(-1, *[1] * (x.dim() - 2))
        out = layer(x) - bias
        cols = _columns(layer, x)  # (positions, groups, K)
        g = getattr(layer, "groups", 1)
        w = layer.weight.reshape(g, layer.weight.shape[0] // g, cols.shape[-1])
        mine = torch.einsum("mgk,gok->mgo", cols, w).reshape(cols.shape[0], -1)
    if isinstance(layer, nn.Linear):
        ref = out.reshape(-1, out.shape[-1])
    else:
        ref = out.flatten(2).permute(0, 2, 1).reshape(-1, out.shape[1])
    assert torch.allclose(mine, ref, atol=1e-5)


def test_gptq_weights_stay_on_the_grid_and_lower_the_layer_error(lenet):
    """On LeNet-5's real inputs, each layer's GPTQ int4 / int8 weights are codes of the plan's
    scales (re-rounding gives them back), and the layer's output error on held-out inputs is lower
    than round-to-nearest's (GPTQ trades a larger weight error for it)."""
    zm, graph = lenet
    folded = fq.fold_batchnorm(zm.model)
    calib, held = zm.calibration(256), zm.dataset.x_test[:256]
    hs = input_hessians(folded, graph.names, calib)
    mods = dict(folded.named_modules())
    ratios = {}
    for n in graph.names:
        m = mods[n].requires_grad_(False)
        xh = _layer_input(folded, n, torch.from_numpy(held))
        for b in (4, 8):
            s = fq.weight_scales(m.weight, b)
            q = gptq_weight(m.weight, hs[n], s, b)
            assert torch.equal(fq._fake_sym(q, s, fq.qmax_weight(b)), q)  # on the grid, exactly
            codes = q / s.reshape([-1] + [1] * (q.dim() - 1))
            assert float(codes.abs().max()) <= fq.qmax_weight(b) + 1e-3
            rtn = fq._fake_sym(m.weight, s, fq.qmax_weight(b))

            # every channel still spans its grid (min-max quantizers find the same scale from it)
            def span(w, s=s):
                return (w / s.reshape([-1] + [1] * (w.dim() - 1))).reshape(len(s), -1).abs().amax(1)

            assert torch.allclose(span(q), span(rtn), atol=1e-3)

            def out_err(w, m=m, xh=xh):
                c = _columns(m, xh).double()
                g = c.shape[1]
                d = (w - m.weight).detach().double().reshape(g, -1, c.shape[-1])
                return float((torch.einsum("mgk,gok->mgo", c, d) ** 2).mean())

            ratios[(n, b)] = out_err(q) / out_err(rtn)
            if b == 4:
                assert float(((q - m.weight) ** 2).sum()) >= float(((rtn - m.weight) ** 2).sum())
    # c1 reads the image; every later layer's inputs are correlated activations
    assert all(ratios[(n, 4)] < 0.9 for n in graph.names[1:]), ratios
    assert np.mean([ratios[(n, 4)] for n in graph.names]) < 0.7, ratios


def test_gptq_plans_have_less_output_noise_on_held_out_data(lenet):
    zm, graph = lenet
    folded = fq.fold_batchnorm(zm.model)
    calib, x = zm.calibration(256), torch.from_numpy(zm.dataset.x_test)
    with torch.no_grad():
        y0 = folded(x)
        noise = {}
        for r in ("nearest", "gptq"):
            plan = CompressionPlan.uniform(graph, "lenet5", "host", 4, 8)
            plan.weight_rounding = r
            spec = fq.compute_quant_spec(folded, plan, calib)
            assert all((lq.weight_values is not None) == (r == "gptq") for lq in spec.values())
            noise[r] = float(((fq.simulate(folded, spec)(x) - y0) ** 2).mean())
    assert noise["gptq"] < 0.5 * noise["nearest"], noise


def test_materialized_gptq_weights_simulate_the_same(lenet):
    """The exporters' form (weights and corrected biases written into the float model, re-rounded
    on the same scales) is the same simulation as the spec's."""
    zm, graph = lenet
    folded = fq.fold_batchnorm(zm.model)
    calib, x = zm.calibration(128), torch.from_numpy(zm.dataset.x_val)
    plan = CompressionPlan.uniform(graph, "lenet5", "host", 4, 8)
    spec = fq.compute_quant_spec(folded, plan, calib)
    moved, plain = fq.materialize(folded, spec)
    assert all(lq.weight_values is None and lq.bias_delta is None for lq in plain.values())
    with torch.no_grad():
        a, b = fq.simulate(folded, spec)(x), fq.simulate(moved, plain)(x)
    assert torch.allclose(a, b, atol=1e-5)
    for n in graph.names:  # the written weights are the GPTQ ones, not a re-rounding of the float ones
        assert np.array_equal(dict(moved.named_modules())[n].weight.detach().numpy(), spec[n].weight_values)


def test_plan_field_digest_and_old_files(lenet, tmp_path):
    zm, graph = lenet
    plan = CompressionPlan.uniform(graph, "lenet5", "host", 4, 8)
    assert plan.weight_rounding == "gptq"
    nearest = replace(plan, weight_rounding="nearest")
    assert plan.digest() != nearest.digest()
    plan.save(tmp_path / "p.json")
    assert CompressionPlan.load(tmp_path / "p.json").weight_rounding == "gptq"
    d = plan.to_json()
    d.pop("weight_rounding")  # a plan written before the field existed was rounded to nearest
    old = CompressionPlan.from_json(d)
    assert old.weight_rounding == "nearest" and old.digest() == nearest.digest()
    with pytest.raises(UserError, match="weight_rounding must be gptq or nearest"):
        CompressionPlan.from_json({**plan.to_json(), "weight_rounding": "stochastic"})
    with pytest.raises(UserError, match="unknown weight rounding"):
        check_rounding("adaround")


def test_dead_inputs_and_missing_data():
    """An input that is always zero (a dead ReLU channel) leaves GPTQ well defined; GPTQ without
    calibration data is a clear error."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with torch.no_grad():
        m[0].weight[2] = 0
        m[0].bias[2] = -1.0  # unit 2 is never active
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    wq = WeightQuantizer(m, "gptq", x, ["0", "2"])
    assert float(wq.hessians["2"][0, 2, 2]) == 0.0
    q = wq.weight("2", 4)
    assert torch.isfinite(q).all()
    with pytest.raises(UserError, match="calibration data"):
        WeightQuantizer(m, "gptq", None, ["2"])
