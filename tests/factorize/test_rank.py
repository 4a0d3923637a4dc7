"""Rank selection by energy and by budget; spectra as compressibility scores; the width study."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_compress.errors import BudgetError
from edge_compress.factorize.rank import (
    compressibility,
    effective_rank,
    energy_rank,
    ranks_by_budget,
    ranks_by_energy,
    spectrum,
)
from edge_compress.factorize.svd import factorize_model
from edge_compress.graph import extract_graph
from edge_compress.plan import factorized_params


def test_energy_rank_is_monotone_in_tau():
    s = np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    ranks = [energy_rank(s, t) for t in np.linspace(0.05, 1.0, 40)]
    assert ranks == sorted(ranks) and ranks[-1] == 5 and ranks[0] == 1
    assert energy_rank(s, 25 / 35.26) == 1


def test_compressibility_of_known_spectra():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))
    s = np.linalg.svd(low, compute_uv=False)
    c = compressibility(s)
    assert c["rank99"] <= 3 and c["full_rank"] == 30
    assert effective_rank(np.ones(7)) == pytest.approx(7)


def test_ranks_by_energy_on_lenet(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    spec = spectrum(lenet.model, g)
    assert set(spec) == {li.name for li in g.layers}
    assert all(np.all(np.diff(s) <= 1e-6) for s in spec.values())
    prev: dict[str, int] = {}
    for tau in (0.5, 0.8, 0.9, 0.99):
        r = ranks_by_energy(lenet.model, g, tau)
        for name, (rank, how) in r.items():
            li = g.layer(name)
            assert factorized_params(li, rank, how) < li.weight_params  # only layers that shrink
            assert rank >= prev.get(name, 0)
            prev[name] = rank
    assert "f5" in ranks_by_energy(lenet.model, g, 0.5)


def test_ranks_by_budget_meets_params_and_flops(lenet):
    g = extract_graph(lenet.model, lenet.example_input())
    for target in (0.7, 0.4):
        ranks = ranks_by_budget(lenet.model, g, params_ratio=target)
        g2 = extract_graph(factorize_model(lenet.model, g, ranks), lenet.example_input())
        assert g2.total_weight_params <= target * g.total_weight_params
    ranks = ranks_by_budget(lenet.model, g, flops_ratio=0.8)
    g3 = extract_graph(factorize_model(lenet.model, g, ranks), lenet.example_input())
    assert g3.total_macs <= 0.8 * g.total_macs
    with pytest.raises(BudgetError, match="below what factorization reaches"):
        ranks_by_budget(lenet.model, g, params_ratio=0.001)


def test_width_study_small(tmp_path, monkeypatch):
    from edge_compress.factorize.width_study import width_study

    monkeypatch.setenv("EDGE_COMPRESS_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    out = width_study(["lenet5"], [0.5, 1.0], epochs=1)
    assert set(out["lenet5"]) == {"0.5", "1"}
    for row in out["lenet5"].values():
        assert 0 < row["mean_rank90_frac"] <= 1 and row["layers"]["c3"]["full_rank"] > 0
    assert out["lenet5"]["0.5"]["params"] < out["lenet5"]["1"]["params"]
