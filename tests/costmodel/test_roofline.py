"""Roofline numbers from the profile, kernels of a plan, energy / memory formulas, the uncalibrated flag."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_compress.costmodel import CostModel, Kernel, kernels_of, peak_macs_per_s, roofline_ms
from edge_compress.graph import extract_graph
from edge_compress.plan import CompressionPlan


def _kernel(**kw: object) -> Kernel:
    base = dict(
        name="k",
        layer="k",
        kind="conv",
        precision="fp32",
        macs=0,
        weight_params=0,
        weight_bytes=0.0,
        in_elems=0,
        out_elems=0,
        cin=1,
        cout=1,
        groups=1,
        kernel_area=9,
        out_spatial=1,
        stride=1,
        dims=2,
    )
    base.update(kw)
    return Kernel(**base)  # type: ignore[arg-type]


def test_roofline_hand_computed(host) -> None:
    # host: fp32 peak 9.6e10 MAC/s on 2 cores -> 4.8e10 on one thread; int8 1.92e11 -> 9.6e10; 20 GB/s.
    assert peak_macs_per_s(host, "fp32", 1) == pytest.approx(4.8e10)
    assert peak_macs_per_s(host, "int8", 2) == pytest.approx(1.92e11)
    compute_bound = _kernel(macs=4_800_000, weight_bytes=100_000.0, in_elems=10_000, out_elems=15_000)
    # compute 4.8e6 / 4.8e10 s = 0.1 ms; memory (1e5 + 25e3 * 4) B / 20e9 B/s = 0.01 ms; + 0.005 launch
    assert roofline_ms(compute_bound, host, 1) == pytest.approx(0.105)
    memory_bound = _kernel(precision="int8", macs=96_000, weight_bytes=1_000_000.0, in_elems=0, out_elems=0)
    # compute 96e3 / 9.6e10 = 1e-6 s; memory 1e6 / 20e9 = 5e-5 s = 0.05 ms
    assert roofline_ms(memory_bound, host, 1) == pytest.approx(0.055)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        return self.fc(torch.flatten(x, 1))


def test_kernels_of_plan() -> None:
    g = extract_graph(_Net(), torch.zeros(1, 3, 8, 8))
    ks = {k.name: k for k in kernels_of(g, None)}
    assert ks["conv"].macs == 64 * 16 * 3 * 9 and ks["conv"].precision == "fp32"
    assert ks["conv"].weight_bytes == 16 * 27 * 4 + 16 * 4  # float weights + bias
    assert ks["dw"].kind == "depthwise_conv" and ks["dw"].macs == 64 * 16 * 9
    assert ks["fc"].macs == 32 * 64 * 10 and ks["fc"].in_elems == 2048
    plan = CompressionPlan.uniform(g, "net", "host", 8, 8)
    plan.layers["fc"].weight_bits = 4
    q = {k.name: k for k in kernels_of(g, plan)}
    assert q["conv"].precision == "int8" and q["fc"].precision == "int4"
    assert q["conv"].weight_bytes == 16 * 27 + 16 * 4 + 16 * 4  # int8 weights + bias + per-channel scales
    # pruning the 1x1 conv to 8 output channels also shrinks the Linear that reads them
    plan.layers["pw"].keep_channels = list(range(8))
    p = {k.name: k for k in kernels_of(g, plan)}
    assert p["pw"].cout == 8 and p["fc"].cin == 8 * 64 and p["fc"].macs == 8 * 64 * 10
    # a rank-4 factorized Linear becomes two kernels
    plan.layers["fc"].rank = 4
    f = [k for k in kernels_of(g, plan) if k.layer == "fc"]
    assert [k.name for k in f] == ["fc#0", "fc#1"] and f[0].cout == 4 and f[1].cin == 4


def test_uncalibrated_prediction(host) -> None:
    g = extract_graph(_Net(), torch.zeros(1, 3, 8, 8))
    cm = CostModel(host, target="nowhere")
    p = cm.predict(g)
    ks = kernels_of(g)
    assert p.calibrated is False and cm.to_json()["calibrated"] is False
    assert p.latency_ms == pytest.approx(cm.base_ms + sum(roofline_ms(k, host, 1) for k in ks))
    # energy = (idle + (active - idle) x 1/2 cores) x latency
    assert p.energy_mj == pytest.approx((10 + 25 * 0.5) * p.latency_ms)
    assert p.energy_basis.startswith("estimate")
    # memory = runtime base + weight bytes + largest input+output activation pair
    biggest = max((k.in_elems + k.out_elems) * 4 for k in ks)
    assert p.peak_memory_bytes == pytest.approx(40e6 + sum(k.weight_bytes for k in ks) + biggest)
    assert p.memory_basis.startswith("estimate")


def test_latency_constraint_matches_predictions(host) -> None:
    """The ILP constraint's usage of an allocation + its fixed part = the model's predicted latency."""
    from edge_compress.costmodel import energy_constraint, latency_constraint

    g = extract_graph(_Net(), torch.zeros(1, 3, 8, 8))
    cm = CostModel(host)
    options = {li.name: (4, 8) for li in g.layers}
    c = latency_constraint(cm, g, 1.0, options)
    assert c.name == "latency_ms" and set(c.coeffs) == {(n, b) for n in options for b in (4, 8)}
    fixed = 1.0 - c.limit
    for bits in (4, 8):
        plan = CompressionPlan.uniform(g, "net", "host", bits, 8)
        assert c.usage({n: bits for n in options}) + fixed == pytest.approx(cm.predict(g, plan).latency_ms)
    e = energy_constraint(cm, g, 5.0, options)
    plan8 = CompressionPlan.uniform(g, "net", "host", 8, 8)
    assert e.usage({n: 8 for n in options}) + (5.0 - e.limit) == pytest.approx(cm.predict(g, plan8).energy_mj)


def test_latency_constraint_in_the_planner(host) -> None:
    """The cost model's latency budget plugs into the bit-allocation ILP as an extra constraint."""
    from edge_compress.costmodel import latency_constraint
    from edge_compress.quant.planner import Planner
    from edge_compress.zoo import load_zoo

    zm = load_zoo("lenet5")
    g = extract_graph(zm.model, zm.example_input())
    cm = CostModel(host)
    pl = Planner(zm.model, g, host, zm.calibration(32), method="noise", noise_draws=1, noise_samples=16)
    lo = cm.predict(g, CompressionPlan.uniform(g, "lenet5", "host", 8, 8)).latency_ms
    hi = cm.predict(g, CompressionPlan.uniform(g, "lenet5", "host", 4, 8)).latency_ms
    limit = (lo + hi) / 2  # between all-int8 and all-int4 under the roofline
    tight = lo if lo < hi else hi
    c = latency_constraint(cm, g, max(limit, tight), pl.options)
    plan = pl.plan(None, alpha=1.0, extra_constraints=[c])
    assert cm.predict(g, plan).latency_ms <= max(limit, tight) * (1 + 1e-9)
