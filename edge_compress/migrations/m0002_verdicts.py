"""Version 2: stored verdicts (one per cell and run), measurement kind / role / round (the paired
A/B re-measurements live beside the cell measurements), and a per-sample throttled flag."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table, Text, text


def apply(conn: Any) -> None:
    for stmt in (
        "ALTER TABLE measurements ADD COLUMN kind VARCHAR(20) NOT NULL DEFAULT 'cell'",
        "ALTER TABLE measurements ADD COLUMN role VARCHAR(20)",
        "ALTER TABLE measurements ADD COLUMN round INTEGER",
        "ALTER TABLE samples ADD COLUMN throttled BOOLEAN NOT NULL DEFAULT FALSE",
    ):
        conn.execute(text(stmt))
    md = MetaData()
    md.reflect(conn, only=["runs", "measurements"])
    verdicts = Table(
        "verdicts",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
        Column("cell_key", String(800), nullable=False),
        Column("measurement_id", Integer, ForeignKey("measurements.id")),
        Column("verdict", String(30), nullable=False),
        Column("evidence", String(30)),
        Column("baseline_run_id", Integer),
        Column("baseline_measurement_id", Integer),
        Column("detail_json", Text),
        Column("created", DateTime, nullable=False),
        Index("uq_verdict_cell", "run_id", "cell_key", unique=True),
    )
    verdicts.create(conn)
