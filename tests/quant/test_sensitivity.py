"""Hutchinson Hessian traces against the exact Hessian; HAWQ-V2 sensitivities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.quant.sensitivity import hessian_sensitivity, hessian_traces


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _exact_trace(model: Tiny, layer: str, x: np.ndarray, y: np.ndarray) -> float:
    mod = getattr(model, layer)
    w0 = mod.weight.detach().clone()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def loss(w: torch.Tensor) -> torch.Tensor:
        params = {f"{layer}.weight": w}
        out = torch.func.functional_call(model, params, (xt,))
        return nn.functional.cross_entropy(out, yt)

    h = torch.autograd.functional.hessian(loss, w0)
    return float(h.reshape(w0.numel(), w0.numel()).trace())


def test_hutchinson_matches_the_exact_hessian_trace():
    torch.manual_seed(0)
    model = Tiny()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    est = hessian_traces(model, ["a", "b"], x, y, n_samples=3000, seed=1)
    for layer in ("a", "b"):
        exact = _exact_trace(model, layer, x, y)
        assert exact > 0
        assert est[layer].trace == pytest.approx(exact, rel=0.08, abs=3 * est[layer].stderr)
        assert est[layer].stderr < 0.1 * exact


def test_hessian_sensitivity_grows_as_bits_shrink(lenet_planner):
    sens = lenet_planner.sens
    for n in lenet_planner.options:
        assert sens[(n, 4)] > sens[(n, 8)] >= 0.0
    traces = lenet_planner.traces
    assert set(traces) == set(lenet_planner.options)
    # omega = Tr(H)/n * ||Q(W) - W||^2 with the plan's quantizer (GPTQ weights), checked for one layer
    folded = dict(lenet_planner.folded.named_modules())
    wq = lenet_planner.noise_model.quantizer
    assert wq.rounding == "gptq"
    t = traces["f5"]
    factor = max(t.trace, t.stderr) / t.n_params
    err = float(((wq.weight("f5", 4) - folded["f5"].weight.detach()).double() ** 2).sum())
    assert sens[("f5", 4)] == pytest.approx(factor * err, rel=1e-9)


def test_hessian_sensitivity_needs_no_labels():
    model = Tiny()
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    tr = hessian_traces(model, ["a"], x, n_samples=4)
    sens = hessian_sensitivity(model, {"a": (8, 4)}, tr)
    assert sens[("a", 4)] > sens[("a", 8)]
