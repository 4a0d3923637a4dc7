"""Version 3: per-target cost models (additive; no existing table changes).

``costmodel_observations``: one row per measured model a target's cost model learns from (its
fused kernels and timings as JSON), unique per (target, obs_key), linked to the measurement it
came from when there is one, so a refit after a nightly run adds only what is new.
``costmodel_fits``: every refit of a target's coefficients (the cost-model document without its
observations), newest last; the latest row is the target's current model.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text


def tables(md: MetaData) -> list[Table]:
    return [
        Table(
            "costmodel_observations",
            md,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("target", String(200), nullable=False),
            Column("profile", String(100)),
            Column("runtime", String(50)),
            Column("threads", Integer),
            Column("obs_key", String(64), nullable=False),
            Column("measurement_id", Integer, ForeignKey("measurements.id")),
            Column("run_id", Integer, ForeignKey("runs.id")),
            Column("label", String(500)),
            Column("source", String(200)),
            Column("latency_ms", Float),
            Column("observation_json", Text, nullable=False),
            Column("created", DateTime, nullable=False),
            Index("uq_costmodel_obs", "target", "obs_key", unique=True),
            Index("ix_costmodel_obs_measurement", "measurement_id"),
        ),
        Table(
            "costmodel_fits",
            md,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("target", String(200), nullable=False),
            Column("profile", String(100)),
            Column("runtime", String(50)),
            Column("threads", Integer),
            Column("run_id", Integer, ForeignKey("runs.id")),
            Column("source", String(200)),
            Column("observations", Integer),
            Column("rel_error", Float),
            Column("cv_within10_pct", Float),
            Column("document_json", Text, nullable=False),
            Column("created", DateTime, nullable=False),
            Index("ix_costmodel_fits_target", "target", "id"),
        ),
    ]


def apply(conn: Any) -> None:
    md = MetaData()
    md.reflect(conn, only=["runs", "measurements"])
    for t in tables(md):
        t.create(conn)
