"""Low-rank factorization: truncated SVD of Linear / Conv layers, rank selection, spectra.

- ``factorize_model``: replace layers by two real layers (Linear SVD, Conv2d spatial SVD, channel SVD).
- ``ranks_by_energy`` / ``ranks_by_budget``: per-layer ranks by an energy threshold or a global
  params / FLOPs budget; ``spectrum`` / ``compressibility``: singular values as compressibility.
- ``width_study.width_study``: compressibility against the width multiplier on the zoo models.

Submodules import torch; this package itself stays lean (names resolve on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "factorize_model": "svd",
    "factorize_layer": "svd",
    "factorized_macs": "svd",
    "singular_values": "svd",
    "spectrum": "rank",
    "compressibility": "rank",
    "energy_rank": "rank",
    "effective_rank": "rank",
    "ranks_by_energy": "rank",
    "ranks_by_budget": "rank",
    "FactorizeConfig": "config",
    "parse_factorize": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
