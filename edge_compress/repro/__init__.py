"""Reproductions of the seed design's quantitative claims as runnable experiments.

One module per claim (``c1_noise`` ... ``c8_imm``), each with ``run(ctx) -> ClaimResult``; every
experiment uses the models and data shipped with the zoo (nothing is downloaded) and the library's
public functions. ``scripts/reproduce.py`` runs them, draws the figures and writes
``docs/reproduction.md`` and ``benchmarks/reproduction.json`` (see :mod:`edge_compress.repro.report`).

Importing this package is cheap: the experiment modules import torch when they are run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_compress.repro.common import ClaimResult, Context

CLAIMS: dict[int, str] = {
    1: "c1_noise",
    2: "c2_tradeoff",
    3: "c3_inception",
    4: "c4_redundancy",
    5: "c5_group_lasso",
    6: "c6_lowrank",
    7: "c7_lasso",
    8: "c8_imm",
}


def run_claim(number: int, ctx: Context) -> ClaimResult:
    """Run one claim's experiment (``number`` in :data:`CLAIMS`)."""
    from edge_compress.errors import UserError

    if number not in CLAIMS:
        raise UserError(f"unknown claim {number}; claims are {', '.join(map(str, CLAIMS))}.")
    mod = importlib.import_module(f"{__name__}.{CLAIMS[number]}")
    return mod.run(ctx)


__all__ = ["CLAIMS", "run_claim"]
