"""Structured channel pruning that physically shrinks the model.

- ``apply_pruning`` / ``prune_model``: remove channels (producers, consumers, depthwise
  passthrough, batch norms, residual-tied groups) given a keep list per channel group.
- ``group_lasso_prune``: group-lasso training with a FLOPs budget (Lagrange multiplier by dual
  ascent, proximal steps), physical removal, short fine-tune; the per-epoch trajectory is kept.
- ``l1_prune``: one-shot L1-norm filter pruning baseline (Li et al. 2017) at the same budget.
- ``analyze_redundancy`` / ``montecarlo_failure``: functional redundancy (p**k failure model)
  against Monte-Carlo random pruning.
- ``lasso_path``: input-feature pruning with (group) LASSO along a penalty path.

Submodules import torch; this package itself stays lean (names resolve on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PruneResult": "apply",
    "apply_pruning": "apply",
    "prune_model": "apply",
    "mask_channels": "apply",
    "keep_from_plan": "apply",
    "plan_with_keep": "apply",
    "kept_by_layer": "apply",
    "PruneConfig": "config",
    "parse_prune": "config",
    "predicted_flops_ratio": "apply",
    "FlopsModel": "cost",
    "prunable_groups": "cost",
    "GroupLassoConfig": "group_lasso",
    "group_lasso_prune": "group_lasso",
    "l1_prune": "l1",
    "l1_keep": "l1",
    "analyze_redundancy": "redundancy",
    "montecarlo_failure": "redundancy",
    "cluster_channels": "redundancy",
    "lasso_path": "lasso",
    "sklearn_l1_path": "lasso",
}

__all__ = sorted([*_EXPORTS, "flops_budget_from_profile"])


def flops_budget_from_profile(profile: str) -> float:
    """The ``budgets.flops_ratio`` of a device profile (name or YAML path)."""
    from edge_compress.errors import UserError
    from edge_compress.profiles import load_profile

    p = load_profile(profile)
    ratio = p.budgets.flops_ratio
    if ratio is None:
        raise UserError(f"profile {profile!r} sets no budgets.flops_ratio; give a FLOPs budget explicitly.")
    return float(ratio)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
