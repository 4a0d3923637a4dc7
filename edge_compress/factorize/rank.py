"""Rank selection for low-rank factorization, and singular-value spectra as compressibility scores.

- ``ranks_by_energy(model, graph, tau)``: per layer, the smallest rank keeping ``sum s_i^2 >= tau``
  of the energy; layers where that rank would not reduce the parameters (and MACs) are skipped.
- ``ranks_by_budget(model, graph, params_ratio=... | flops_ratio=...)``: a global greedy that removes
  rank-one components in order of the least relative energy lost per parameter (or MAC) saved,
  until the whole model meets the budget.
- ``spectrum`` / ``compressibility``: singular values per layer; the fraction of the full rank
  needed for 90% / 99% of the energy and the effective rank (exp of the entropy of the normalized
  singular values, Roy & Vetterli 2007).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from edge_compress.errors import BudgetError, UserError
from edge_compress.factorize.svd import (
    check_factorizable,
    default_how,
    factorized_macs,
    full_rank,
    singular_values,
)
from edge_compress.graph import LayerInfo, ModelGraph
from edge_compress.plan import factorized_params


def eligible_how(li: LayerInfo, how: str | None) -> str | None:
    """The factorization to use for ``li`` or None when the layer cannot be factorized."""
    h = how if how and how != "auto" else default_how(li)
    if li.kind == "linear":
        h = "svd"
    elif h == "svd":
        h = default_how(li)
    try:
        check_factorizable(li, h)
    except UserError:
        return None
    return h


def spectrum(model: nn.Module, graph: ModelGraph, how: str = "auto") -> dict[str, np.ndarray]:
    """Layer -> singular values (descending) of the matrix its factorization would decompose."""
    out = {}
    for li in graph.layers:
        h = eligible_how(li, how)
        if h is not None:
            out[li.name] = singular_values(model.get_submodule(li.name), h)
    return out


def energy_rank(s: np.ndarray, tau: float) -> int:
    """Smallest k with sum(s[:k]^2) >= tau * sum(s^2)."""
    if not 0 < tau <= 1:
        raise UserError(f"energy threshold {tau:g} must be in (0, 1].")
    e = np.cumsum(np.asarray(s, dtype=np.float64) ** 2)
    if e[-1] <= 0:
        return 1
    return int(min(len(e), np.searchsorted(e / e[-1], tau - 1e-12) + 1))


def effective_rank(s: np.ndarray) -> float:
    p = np.asarray(s, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0


def compressibility(s: np.ndarray) -> dict[str, float]:
    n = len(s)
    return {
        "full_rank": n,
        "rank90": energy_rank(s, 0.9),
        "rank99": energy_rank(s, 0.99),
        "rank90_frac": energy_rank(s, 0.9) / n,
        "rank99_frac": energy_rank(s, 0.99) / n,
        "effective_rank": effective_rank(s),
        "effective_rank_frac": effective_rank(s) / n,
    }


def layer_cost(li: LayerInfo, rank: int | None, how: str, metric: str) -> float:
    if metric == "params":
        return float(li.weight_params if rank is None else factorized_params(li, rank, how))
    return float(li.macs if rank is None else factorized_macs(li, rank, how))


def breakeven_rank(li: LayerInfo, how: str, metric: str = "params") -> int:
    """Largest rank whose factorization is strictly cheaper than the layer (0 when none is)."""
    base = layer_cost(li, None, how, metric)
    best = 0
    for r in range(1, full_rank(li, how) + 1):
        if layer_cost(li, r, how, metric) < base:
            best = r
        else:
            break
    return best


def ranks_by_energy(
    model: nn.Module, graph: ModelGraph, tau: float, how: str = "auto", layers: list[str] | None = None
) -> dict[str, tuple[int, str]]:
    """Layer -> (rank, how) keeping ``tau`` of the energy, only where it shrinks params and MACs."""
    out = {}
    for li in graph.layers:
        if layers is not None and li.name not in layers:
            continue
        h = eligible_how(li, how)
        if h is None:
            continue
        r = energy_rank(singular_values(model.get_submodule(li.name), h), tau)
        if layer_cost(li, r, h, "params") < li.weight_params and layer_cost(li, r, h, "macs") < li.macs:
            out[li.name] = (r, h)
    return out


@dataclass
class _State:
    li: LayerInfo
    how: str
    energy: np.ndarray  # relative energy of each singular value (sums to 1)
    rank: int | None  # None = not factorized
    breakeven: int


def ranks_by_budget(
    model: nn.Module,
    graph: ModelGraph,
    *,
    params_ratio: float | None = None,
    flops_ratio: float | None = None,
    how: str = "auto",
    layers: list[str] | None = None,
) -> dict[str, tuple[int, str]]:
    """Global greedy: the least relative energy lost per parameter (or MAC) saved goes first.

    A layer first jumps from unfactorized to its break-even rank (the largest rank that saves
    anything), then loses one rank at a time. Ratios are of the whole model's weight params / MACs.
    """
    if (params_ratio is None) == (flops_ratio is None):
        raise UserError("give exactly one of params_ratio or flops_ratio for rank selection.")
    metric = "params" if params_ratio is not None else "macs"
    target = float(params_ratio if params_ratio is not None else flops_ratio)  # type: ignore[arg-type]
    if not 0 < target <= 1:
        raise UserError(f"rank budget {target:g} must be a ratio in (0, 1].")
    total = float(graph.total_weight_params if metric == "params" else graph.total_macs)
    states = []
    for li in graph.layers:
        h = eligible_how(li, how)
        if h is None or (layers is not None and li.name not in layers):
            continue
        s = singular_values(model.get_submodule(li.name), h).astype(np.float64)
        be = breakeven_rank(li, h, metric)
        if be >= 1:
            states.append(_State(li, h, s**2 / max((s**2).sum(), 1e-30), None, be))
    cur = total

    def candidate(st: _State) -> tuple[float, float, int] | None:
        """(lost energy, saved cost, new rank) of the next step for this layer."""
        if st.rank is None:
            new = st.breakeven
            return (
                float(st.energy[new:].sum()),
                layer_cost(st.li, None, st.how, metric) - layer_cost(st.li, new, st.how, metric),
                new,
            )
        if st.rank <= 1:
            return None
        new = st.rank - 1
        return (
            float(st.energy[new]),
            layer_cost(st.li, st.rank, st.how, metric) - layer_cost(st.li, new, st.how, metric),
            new,
        )

    while cur > target * total:
        best, best_p, best_c = None, np.inf, None
        for st in states:
            c = candidate(st)
            if c is None or c[1] <= 0:
                continue
            p = c[0] / c[1]
            if p < best_p:
                best, best_p, best_c = st, p, c
        if best is None:
            kind = "parameters" if metric == "params" else "MACs"
            raise BudgetError(
                f"rank budget {target:g} is below what factorization reaches (every factorizable layer at rank 1 "
                f"leaves {cur / total:.4f} of the {kind}); ask for at least {cur / total:.4f}."
            )
        cur -= best_c[1]
        best.rank = best_c[2]
    return {st.li.name: (st.rank, st.how) for st in states if st.rank is not None}
