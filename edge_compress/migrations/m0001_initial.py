"""Version 1: runs, artifacts, targets, measurements (stats columns) and raw samples.

The tables are defined here as they were at version 1 (a frozen snapshot), not imported from
``store.py``, so that later schema changes never alter what this migration creates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)


def tables(md: MetaData) -> None:
    Table(
        "runs",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("suite", String(200), nullable=False, index=True),
        Column("suite_digest", String(64)),
        Column("started", DateTime, nullable=False),
        Column("finished", DateTime),
        Column("revision", String(200)),
        Column("status", String(20), nullable=False),  # running | finished
        Column("accepted", Boolean, nullable=False, default=False),
        Column("exit_code", Integer),
        Column("host", String(200)),
        Column("settings_json", Text),
    )
    Table(
        "artifacts",
        md,
        Column("id", String(128), primary_key=True),
        Column("model", String(500)),
        Column("profile", String(100)),
        Column("variant", String(100)),
        Column("plan_digest", String(64)),
        Column("bytes", BigInteger),
        Column("path", Text),
        Column("manifest_json", Text),
        Column("created", DateTime, nullable=False),
    )
    Table(
        "targets",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False, index=True),
        Column("profile", String(100)),
        Column("transport", String(20)),
        Column("machine", String(100)),
        Column("runtime_versions", String(500)),
        Column("created", DateTime, nullable=False),
        UniqueConstraint("name", "profile", "transport", "machine", "runtime_versions", name="uq_target"),
    )
    Table(
        "measurements",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
        Column("cell_key", String(800), nullable=False),
        Column("artifact_id", String(128), ForeignKey("artifacts.id")),
        Column("target_id", Integer, ForeignKey("targets.id")),
        Column("target", String(200), nullable=False),
        Column("model", String(500)),
        Column("variant", String(100)),
        Column("budget", String(300)),
        Column("status", String(20), nullable=False),  # ok | infra_failure
        Column("error", Text),
        Column("error_kind", String(40)),
        Column("count", Integer),
        Column("median_ms", Float),
        Column("p90_ms", Float),
        Column("p99_ms", Float),
        Column("mean_ms", Float),
        Column("std_ms", Float),
        Column("min_ms", Float),
        Column("max_ms", Float),
        Column("median_ci_lo_ms", Float),
        Column("median_ci_hi_ms", Float),
        Column("peak_rss_bytes", BigInteger),
        Column("energy_j", Float),
        Column("energy_measured", Boolean),
        Column("energy_source", String(200)),
        Column("avg_watts", Float),
        Column("accuracy", Float),
        Column("accuracy_samples", Integer),
        Column("throttled", Boolean),
        Column("throttled_samples", Integer),
        Column("emulated", Boolean),
        Column("threads", Integer),
        Column("runtime", String(50)),
        Column("runtime_version", String(100)),
        Column("wall_s", Float),
        Column("extra_json", Text),
        Column("created", DateTime, nullable=False),
        Index("ix_measurements_cell", "cell_key", "run_id"),
        Index("ix_measurements_run", "run_id"),
    )
    Table(
        "samples",
        md,
        Column("measurement_id", Integer, ForeignKey("measurements.id"), primary_key=True),
        Column("idx", Integer, primary_key=True),
        Column("latency_ms", Float, nullable=False),
        sqlite_with_rowid=False,
    )


def apply(conn: Any) -> None:
    md = MetaData()
    tables(md)
    md.create_all(conn)
