"""Fitting recovers known coefficients; JSON round trip; more data -> better fit; the file store."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from edge_compress.costmodel import CostModel, Kernel
from edge_compress.costmodel_fit import TERMS, kernel_class, kernel_terms
from edge_compress.costmodel_store import costmodel_path, load_costmodel, record_and_refit, save_costmodel

TRUE = {
    "conv/fp32": {"compute": 1.5, "compute_pad": 0.5, "out": 2.0, "pixels": 1.0, "launch": 1.6},
    "conv/fp32nchwc": {"compute": 1.1, "compute_pad": 0.4, "out": 1.5, "pixels": 0.8, "launch": 1.2},
    "conv/int8": {"compute": 2.0, "weights": 1.0, "in": 1.5, "pixels_smallk": 3.0, "launch": 2.4},
    "linear/fp32": {"compute": 1.2, "weights": 2.0, "launch": 1.0},
}
TRUE_BASE_MS = 0.04


def _rand_kernel(rng: random.Random, i: int) -> Kernel:
    kind, prec = rng.choice(list(TRUE)).split("/")
    cin, cout = rng.choice([3, 4, 8, 12, 20, 32, 64]), rng.choice([4, 6, 8, 16, 24, 40, 64])
    sp = 1 if kind == "linear" else rng.choice([16, 64, 256, 1024])
    area = 1 if kind == "linear" else rng.choice([1, 9, 25])
    wp = cin * cout * area
    wbits = 32 if prec == "fp32" else 8
    return Kernel(
        f"l{i}",
        f"l{i}",
        kind,
        prec,
        wp * sp,
        wp,
        wp * wbits / 8 + cout * 4,
        cin * sp,
        cout * sp,
        cin,
        cout,
        1,
        area,
        sp,
        1,
        0 if kind == "linear" else 2,
        cout * sp // rng.choice([1, 4]),
    )


def _true_ms(ks: list[Kernel], profile) -> float:
    t = TRUE_BASE_MS
    for k in ks:
        terms = kernel_terms(k, profile)
        t += sum(TRUE[kernel_class(k)].get(j, 0.0) * terms[j] for j in TERMS)
    return t


def _synthetic(n: int, profile, seed: int = 0, noise: float = 0.0) -> list[tuple[list[Kernel], float]]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out = []
    for m in range(n):
        ks = [_rand_kernel(rng, i) for i in range(rng.randint(1, 6))]
        lat = _true_ms(ks, profile) * float(np.exp(nrng.normal(0, noise))) if noise else _true_ms(ks, profile)
        out.append((ks, lat))
        del m
    return out


def _fitted(profile, data, **fit_kw) -> CostModel:
    cm = CostModel(profile, target="synthetic")
    for ks, lat in data:
        cm.observe(ks, latency_ms=lat, p99_ms=1.5 * lat, label="synthetic")
    cm.fit(**fit_kw)
    return cm


def test_fit_recovers_known_coefficients(host) -> None:
    # noise-free data and a negligible prior: the estimator is consistent (the default, stronger
    # prior trades a little bias for stability on small, noisy, collinear real data)
    cm = _fitted(host, _synthetic(300, host), ridge=0.01)
    assert cm.calibrated
    # the well-determined coefficients come back (a Linear's compute and weight terms are both
    # proportional to its weight count, so only their sum is identifiable: checked via predictions)
    for cls, t in (
        ("conv/fp32", "launch"),
        ("conv/int8", "compute"),
        ("conv/int8", "pixels_smallk"),
        ("conv/int8", "launch"),
    ):
        assert cm.coeffs[cls][t] == pytest.approx(TRUE[cls][t], rel=0.05), (cls, t)
    # every float convolution whose channels do not fill 8-lane blocks is "narrow": there only the
    # sum of the two compute coefficients is identifiable
    fp = cm.coeffs["conv/fp32"]
    assert fp["compute"] + fp["compute_narrow"] == pytest.approx(TRUE["conv/fp32"]["compute"], rel=0.05)
    held_out = _synthetic(50, host, seed=42)
    for ks, lat in held_out:
        assert cm.predict_kernels(ks) == pytest.approx(lat, rel=0.01)
    assert cm.base_ms == pytest.approx(TRUE_BASE_MS, rel=0.05)
    assert cm.p99_ratio == pytest.approx(1.5)
    assert cm.fit_info["cv_within10_pct"] == pytest.approx(100.0)
    assert cm.latency_power == 1.0  # additive data: no latency curve


def test_more_data_improves_the_fit(host) -> None:
    test = _synthetic(100, host, seed=99)
    meas = np.array([lat for _, lat in test])

    def mape(cm: CostModel) -> float:
        pred = np.array([cm.predict_kernels(ks) for ks, _ in test])
        return float(np.mean(np.abs(pred / meas - 1)))

    data = _synthetic(400, host, seed=1, noise=0.05)
    few = _fitted(host, data[:8])
    many = _fitted(host, data)
    uncal = CostModel(host)
    # a few observations fit one scale per class on the roofline (not forty coefficients), many the
    # full term set: each step is better than the one before
    assert (
        few.fit_info["form"].startswith("scaled roofline")
        and many.fit_info["form"] == "roofline terms per class"
    )
    assert mape(many) < mape(few) < mape(uncal)
    assert mape(many) < 0.03
    # refit in place: adding observations to the small model and refitting reaches the large one
    for ks, lat in data[8:]:
        few.observe(ks, latency_ms=lat)
    few.fit()
    assert mape(few) == pytest.approx(mape(many), rel=1e-6)


def test_kernel_rows_alone_fit(host) -> None:
    """Per-kernel timings (as parsed from a profiler trace) are observations too."""
    cm = CostModel(host)
    for ks, _ in _synthetic(200, host, seed=3):
        per = {k.name: _true_ms([k], host) - TRUE_BASE_MS for k in ks}
        cm.observe(ks, kernel_ms=per)
    cm.fit(ridge=0.01)
    assert cm.coeffs["conv/int8"]["compute"] == pytest.approx(2.0, rel=0.05)


def test_json_round_trip_and_store(host, cache) -> None:
    cm = _fitted(host, _synthetic(60, host))
    doc = json.loads(json.dumps(cm.to_json()))
    back = CostModel.from_json(doc, host)
    ks = _synthetic(1, host, seed=5)[0][0]
    assert back.predict_kernels(ks) == pytest.approx(cm.predict_kernels(ks))
    assert back.calibrated and back.rel_error == cm.rel_error and len(back.observations) == 60
    # file store under <cache>/costmodels/<target>.json
    assert not load_costmodel("lab-board", host).calibrated  # nothing stored yet: uncalibrated
    cm.target = "lab-board"
    path = save_costmodel(cm)
    assert path == costmodel_path("lab-board") and path.parent == cache / "costmodels"
    loaded = load_costmodel("lab-board", host)
    assert loaded.calibrated and loaded.predict_kernels(ks) == pytest.approx(cm.predict_kernels(ks))
    # new observations accumulate: refit on all and store again
    for ks2, lat in _synthetic(20, host, seed=8):
        loaded.observe(ks2, latency_ms=lat)
    record_and_refit(loaded)
    assert len(load_costmodel("lab-board", host).observations) == 80


def test_latency_curve_is_fitted_and_round_trips(host) -> None:
    """Measured latency = ref x (additive time / ref)^0.8: the fit finds the exponent (on the
    0.05 grid), predicts held-out models, stores it, and keeps additive data additive."""
    from edge_compress.costmodel_fit import POWER_GRID

    assert 0.8 in POWER_GRID
    ref = float(np.median([lat for _, lat in _synthetic(300, host)]))

    def curved(data):
        return [(ks, ref * (lat / ref) ** 0.8) for ks, lat in data]

    cm = _fitted(host, curved(_synthetic(300, host)), ridge=0.01)
    assert cm.latency_power == pytest.approx(0.8)
    assert cm.latency_linear_above is not None
    for ks, lat in curved(_synthetic(50, host, seed=42)):
        assert cm.predict_kernels(ks) == pytest.approx(lat, rel=0.03)
    back = CostModel.from_json(json.loads(json.dumps(cm.to_json())), host)
    ks = _synthetic(1, host, seed=5)[0][0]
    assert back.latency_power == 0.8 and back.predict_kernels(ks) == pytest.approx(cm.predict_kernels(ks))
    # the curve and its inverse, below and above the knee (linear continuation there)
    for t in (0.3 * cm.latency_linear_above, 3.0 * cm.latency_linear_above):
        assert cm.from_latency(cm.to_latency(t)) == pytest.approx(t)
    k = cm.latency_linear_above
    slope = (cm.to_latency(3 * k) - cm.to_latency(2 * k)) / k
    assert slope == pytest.approx(0.8 * (k / cm.latency_ref_ms) ** -0.2)
    # additive data and few observations: no curve
    assert _fitted(host, _synthetic(300, host), ridge=0.01).latency_power == 1.0
    assert _fitted(host, curved(_synthetic(12, host))).latency_power == 1.0
