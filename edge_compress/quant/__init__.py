"""Quantization: fake-quant numerics, the additive noise model, sensitivities and ILP bit allocation.

- :mod:`.fakequant` — the exact numerics the exporters reproduce (BN folding, per-channel weights,
  calibrated activation quantizers, simulation);
- :mod:`.noise` — :class:`NoiseModel` (output noise / SQNR / accuracy drop of any plan without
  building it) and :class:`AccuracyCurve`;
- :mod:`.sensitivity` — HAWQ-V2 Hutchinson Hessian traces and sensitivities;
- :mod:`.allocate` — :class:`Constraint` and the HiGHS ILP (:func:`allocate_bits`);
- :mod:`.planner` — :func:`plan_model`, :class:`Planner`, :func:`pareto_sweep`, :func:`predict`.

Names are imported lazily so ``import edge_compress.quant`` stays cheap (no torch, no scipy).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "plan_model": "planner",
    "Planner": "planner",
    "pareto_sweep": "planner",
    "predict": "planner",
    "ParetoPoint": "planner",
    "METHODS": "planner",
    "NoiseModel": "noise",
    "AccuracyCurve": "accuracy",
    "Constraint": "allocate",
    "Allocation": "allocate",
    "allocate_bits": "allocate",
    "allocate_top_k": "allocate",
    "hessian_traces": "sensitivity",
    "hessian_sensitivity": "sensitivity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
