"""Forward-only schema migrations of the result store, applied in order when a store is opened.

Each migration is ``(version, description, apply(conn))``. ``apply`` runs inside the transaction
that records its version in ``schema_version``; migrations never drop data. Add a new module
``m000N_<what>.py`` and append it to :data:`MIGRATIONS` (never edit an applied one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_compress.migrations import m0001_initial, m0002_verdicts, m0003_costmodels

Migration = tuple[int, str, Callable[[Any], None]]

MIGRATIONS: list[Migration] = [
    (1, "runs, artifacts, targets, measurements, samples", m0001_initial.apply),
    (2, "verdicts; measurement kind/role/round; per-sample throttled flag", m0002_verdicts.apply),
    (3, "per-target cost models: observations and fits", m0003_costmodels.apply),
]

LATEST = MIGRATIONS[-1][0]
