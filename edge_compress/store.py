"""ResultStore: every nightly run, artifact, target, measurement and raw latency sample.

A SQLite file by default (``./edge-compress.sqlite``), or any SQLAlchemy URL for a shared lab
database. Opening a store applies the pending forward migrations (``edge_compress/migrations``).

Durability: SQLite runs in WAL mode and each cell is written in one transaction (its
measurement, raw samples, paired re-measurements and verdict), so a run killed at any point -
SIGKILL included - loses no completed cell, and never leaves half a cell behind.

Append-only: measurements, samples and verdicts are only ever inserted. A run row is updated
when it finishes or is accepted as a baseline.

Schema (version 3)::

    schema_version(version, description, applied)
    runs(id, suite, suite_digest, started, finished, revision, status, accepted, exit_code, host,
         settings_json)
    artifacts(id, model, profile, variant, plan_digest, bytes, path, manifest_json, created)
    targets(id, name, profile, transport, machine, runtime_versions, created)
    measurements(id, run_id, cell_key, kind[cell|interleaved], role[baseline|candidate], round,
         artifact_id, target_id, target, model, variant, budget, status[ok|infra_failure], error,
         error_kind, count, median_ms, p90_ms, p99_ms, mean_ms, std_ms, min_ms, max_ms,
         median_ci_lo_ms, median_ci_hi_ms, peak_rss_bytes, energy_j, energy_measured,
         energy_source, avg_watts, accuracy, accuracy_samples, throttled, throttled_samples,
         emulated, threads, runtime, runtime_version, wall_s, extra_json, created)
    samples(measurement_id, idx, latency_ms, throttled)          -- raw samples, bulk inserted
    verdicts(id, run_id, cell_key, measurement_id, verdict, evidence, baseline_run_id,
         baseline_measurement_id, detail_json, created)           -- unique (run_id, cell_key)
    costmodel_observations(id, target, profile, runtime, threads, obs_key, measurement_id, run_id,
         label, source, latency_ms, observation_json, created)     -- unique (target, obs_key)
    costmodel_fits(id, target, profile, runtime, threads, run_id, source, observations, rel_error,
         cv_within10_pct, document_json, created)                 -- the latest per target is current

Cost models (:mod:`edge_compress.costmodel_store`): a target's observations (measured models with
their fused kernels) and every refit of its coefficients; both only ever inserted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from edge_compress.errors import UserError

DEFAULT_PATH = "edge-compress.sqlite"
OK = "ok"
INFRA = "infra_failure"

md = MetaData()

schema_version = Table(
    "schema_version",
    md,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text),
    Column("applied", DateTime, nullable=False),
)
runs = Table(
    "runs",
    md,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("suite", String(200), nullable=False),
    Column("suite_digest", String(64)),
    Column("started", DateTime, nullable=False),
    Column("finished", DateTime),
    Column("revision", String(200)),
    Column("status", String(20), nullable=False),
    Column("accepted", Boolean, nullable=False, default=False),
    Column("exit_code", Integer),
    Column("host", String(200)),
    Column("settings_json", Text),
)
artifacts = Table(
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
targets = Table(
    "targets",
    md,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("profile", String(100)),
    Column("transport", String(20)),
    Column("machine", String(100)),
    Column("runtime_versions", String(500)),
    Column("created", DateTime, nullable=False),
)
STAT_COLUMNS = ("count", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms")
measurements = Table(
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
    Column("status", String(20), nullable=False),
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
    Column("kind", String(20), nullable=False, default="cell"),
    Column("role", String(20)),
    Column("round", Integer),
)
samples = Table(
    "samples",
    md,
    Column("measurement_id", Integer, ForeignKey("measurements.id"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("latency_ms", Float, nullable=False),
    Column("throttled", Boolean, nullable=False, default=False),
    sqlite_with_rowid=False,
)
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
)

costmodel_observations = Table(
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
)
costmodel_fits = Table(
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
)


def now() -> dt.datetime:
    """UTC, naive (stored as such in every backend)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def store_url(url_or_path: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL: URLs are kept, paths become ``sqlite:///<absolute path>``."""
    if url_or_path is None:
        url_or_path = os.environ.get("EDGE_COMPRESS_STORE") or DEFAULT_PATH
    s = str(url_or_path)
    if "://" in s:
        return s
    p = Path(s).expanduser().resolve()
    if p.is_dir():
        raise UserError(f"--store {s}: is a directory; give a file path or a database URL.")
    if not p.parent.is_dir():
        raise UserError(f"--store {s}: directory {p.parent} does not exist.")
    return f"sqlite:///{p}"


@dataclass
class ArtifactRecord:
    """What the store keeps of an artifact."""

    id: str
    model: str
    profile: str | None
    variant: str | None
    plan_digest: str | None
    bytes: int | None
    path: str | None
    manifest: dict[str, Any]


class ResultStore:
    """The result database. ``ResultStore(path_or_url)``; use as a context manager or ``close()``."""

    def __init__(self, url_or_path: str | os.PathLike[str] | None = None, *, migrate: bool = True) -> None:
        self.url = store_url(url_or_path)
        self.engine: Engine = _engine(self.url)
        if migrate:
            self.migrate()

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    @property
    def path(self) -> Path | None:
        """The SQLite file, None for server databases."""
        if self.url.startswith("sqlite:///") and not self.url.endswith(":memory:"):
            return Path(self.url[len("sqlite:///") :])
        return None

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("schema_version"):
                return 0
            return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)

    def migrate(self, target: int | None = None) -> list[int]:
        """Apply pending migrations (up to ``target``); returns the versions applied."""
        from edge_compress.migrations import MIGRATIONS

        applied: list[int] = []
        try:
            with self.engine.begin() as conn:
                schema_version.create(conn, checkfirst=True)
            current = self.schema_version()
            for version, desc, fn in MIGRATIONS:
                if version <= current or (target is not None and version > target):
                    continue
                with self.engine.begin() as conn:
                    fn(conn)
                    conn.execute(
                        insert(schema_version).values(version=version, description=desc, applied=now())
                    )
                applied.append(version)
        except Exception as e:  # noqa: BLE001 - database errors become one line
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(e, SQLAlchemyError):
                raise UserError(
                    f"result store {self.url}: cannot open or migrate ({_first_line(e)})."
                ) from None
            raise
        from edge_compress.migrations import LATEST

        if self.schema_version() > LATEST:
            raise UserError(
                f"result store {self.url} has schema version {self.schema_version()}, newer than this "
                f"edge-compress understands ({LATEST}); upgrade edge-compress."
            )
        return applied

    # -- runs ----------------------------------------------------------------------------------

    def start_run(
        self,
        suite: str,
        *,
        suite_digest: str | None = None,
        revision: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(runs).values(
                    suite=suite,
                    suite_digest=suite_digest,
                    started=now(),
                    revision=revision,
                    status="running",
                    accepted=False,
                    host=socket.gethostname(),
                    settings_json=json.dumps(settings or {}, sort_keys=True, default=str),
                )
            )
            return int(res.inserted_primary_key[0])

    def finish_run(self, run_id: int, *, exit_code: int, accept: bool = False) -> None:
        values: dict[str, Any] = {"status": "finished", "finished": now(), "exit_code": exit_code}
        if accept:
            values["accepted"] = True
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def accept_run(self, run_id: int) -> None:
        """Make a finished run a baseline (the last accepted run is the default baseline)."""
        run = self.get_run(run_id)
        if run is None:
            raise UserError(f"no run {run_id} in {self.url}.")
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(accepted=True))

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        return _run_dict(row) if row else None

    def last_unfinished_run(self, suite: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(runs)
                    .where(runs.c.suite == suite, runs.c.status == "running")
                    .order_by(runs.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return _run_dict(row) if row else None

    def runs(self, suite: str | None = None, since: dt.datetime | None = None) -> list[dict[str, Any]]:
        q = select(runs).order_by(runs.c.id)
        if suite:
            q = q.where(runs.c.suite == suite)
        if since:
            q = q.where(runs.c.started >= since)
        with self.engine.connect() as conn:
            return [_run_dict(r) for r in conn.execute(q).mappings()]

    # -- artifacts and targets -----------------------------------------------------------------

    def put_artifact(self, a: ArtifactRecord) -> None:
        """Insert the artifact unless its id is known (ids are content hashes)."""
        with self.engine.begin() as conn:
            exists = conn.execute(select(artifacts.c.id).where(artifacts.c.id == a.id)).first()
            if exists is None:
                conn.execute(
                    insert(artifacts).values(
                        id=a.id,
                        model=a.model,
                        profile=a.profile,
                        variant=a.variant,
                        plan_digest=a.plan_digest,
                        bytes=a.bytes,
                        path=a.path,
                        manifest_json=json.dumps(a.manifest, sort_keys=True, default=str),
                        created=now(),
                    )
                )

    def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(artifacts).where(artifacts.c.id == artifact_id)).mappings().first()
        if r is None:
            return None
        return ArtifactRecord(
            r["id"],
            r["model"],
            r["profile"],
            r["variant"],
            r["plan_digest"],
            r["bytes"],
            r["path"],
            json.loads(r["manifest_json"] or "{}"),
        )

    @staticmethod
    def _target_id(conn: Connection, info: dict[str, Any]) -> int:
        key = {
            "name": info["name"],
            "profile": info.get("profile"),
            "transport": info.get("transport"),
            "machine": info.get("machine"),
            "runtime_versions": info.get("runtime_versions"),
        }
        cond = and_(
            *[(targets.c[k] == v) if v is not None else targets.c[k].is_(None) for k, v in key.items()]
        )
        found = conn.execute(select(targets.c.id).where(cond)).scalar()
        if found is not None:
            return int(found)
        return int(conn.execute(insert(targets).values(**key, created=now())).inserted_primary_key[0])

    # -- cells ---------------------------------------------------------------------------------

    def record_cell(
        self,
        run_id: int,
        cell: dict[str, Any],
        measurement: dict[str, Any],
        *,
        artifact_id: str | None,
        target: dict[str, Any],
        verdict: dict[str, Any],
        interleaved: list[dict[str, Any]] | None = None,
    ) -> int:
        """Write one finished cell in a single transaction; returns the cell measurement id.

        ``measurement`` is ``Measurement.to_json()``; ``interleaved`` items are
        ``{"role", "round", "artifact_id", "measurement"}`` (the paired re-measurements);
        ``verdict`` is the cell's verdict as JSON.
        """
        with self.engine.begin() as conn:
            tinfo = dict(target)
            tinfo.setdefault("machine", measurement.get("machine"))
            if measurement.get("runtime"):
                tinfo.setdefault(
                    "runtime_versions",
                    f"{measurement.get('runtime')} {measurement.get('runtime_version') or ''}".strip(),
                )
            target_id = self._target_id(conn, tinfo) if measurement.get("ok") else None
            mid = _insert_measurement(conn, run_id, cell, measurement, artifact_id, target_id, "cell")
            for item in interleaved or []:
                _insert_measurement(
                    conn,
                    run_id,
                    cell,
                    item["measurement"],
                    item.get("artifact_id"),
                    target_id,
                    "interleaved",
                    role=item.get("role"),
                    round_=item.get("round"),
                )
            conn.execute(
                insert(verdicts).values(
                    run_id=run_id,
                    cell_key=cell["key"],
                    measurement_id=mid,
                    verdict=verdict.get("verdict", "ok"),
                    evidence=verdict.get("evidence"),
                    baseline_run_id=verdict.get("baseline_run_id"),
                    baseline_measurement_id=verdict.get("baseline_measurement_id"),
                    detail_json=json.dumps(verdict, sort_keys=True, default=str),
                    created=now(),
                )
            )
            return mid

    def completed_cells(self, run_id: int) -> set[str]:
        """Cell keys of ``run_id`` that have their verdict (i.e. are completely written)."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(verdicts.c.cell_key).where(verdicts.c.run_id == run_id)).scalars())

    def verdicts(self, run_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(verdicts.c.detail_json).where(verdicts.c.run_id == run_id).order_by(verdicts.c.id)
            ).scalars()
            return [json.loads(r) for r in rows]

    def measurements(
        self,
        *,
        run_id: int | None = None,
        cell_key: str | None = None,
        kind: str | None = "cell",
        since: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        q = select(
            measurements, runs.c.started.label("run_started"), runs.c.accepted.label("run_accepted")
        ).join(runs, runs.c.id == measurements.c.run_id)
        if run_id is not None:
            q = q.where(measurements.c.run_id == run_id)
        if cell_key is not None:
            q = q.where(measurements.c.cell_key == cell_key)
        if kind is not None:
            q = q.where(measurements.c.kind == kind)
        if since is not None:
            q = q.where(runs.c.started >= since)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(measurements.c.id)).mappings()]

    def samples(self, measurement_id: int, *, with_flags: bool = False) -> Any:
        """The raw latency samples (ms) of a measurement, in order (numpy array)."""
        import numpy as np

        with self.engine.connect() as conn:
            rows = conn.execute(
                select(samples.c.latency_ms, samples.c.throttled)
                .where(samples.c.measurement_id == measurement_id)
                .order_by(samples.c.idx)
            ).all()
        lat = np.array([r[0] for r in rows], dtype=float)
        if with_flags:
            return lat, np.array([bool(r[1]) for r in rows], dtype=bool)
        return lat

    def baseline(
        self, cell_key: str, *, pinned_run_id: int | None = None, exclude_run_id: int | None = None
    ) -> dict[str, Any] | None:
        """The baseline measurement of a cell: in the pinned run, else in the last accepted
        finished run that has an ``ok`` measurement of the cell."""
        q = (
            select(measurements)
            .join(runs, runs.c.id == measurements.c.run_id)
            .where(
                measurements.c.cell_key == cell_key,
                measurements.c.kind == "cell",
                measurements.c.status == OK,
            )
        )
        if pinned_run_id is not None:
            q = q.where(runs.c.id == pinned_run_id)
        else:
            q = q.where(runs.c.accepted.is_(True), runs.c.status == "finished")
        if exclude_run_id is not None:
            q = q.where(runs.c.id != exclude_run_id)
        with self.engine.connect() as conn:
            row = conn.execute(q.order_by(runs.c.id.desc()).limit(1)).mappings().first()
        return dict(row) if row else None

    def history(
        self, cell_key: str, *, limit: int = 10, exclude_run_id: int | None = None
    ) -> list[dict[str, Any]]:
        """``ok`` measurements of a cell in accepted finished runs, newest first."""
        q = (
            select(measurements)
            .join(runs, runs.c.id == measurements.c.run_id)
            .where(
                measurements.c.cell_key == cell_key,
                measurements.c.kind == "cell",
                measurements.c.status == OK,
                runs.c.accepted.is_(True),
                runs.c.status == "finished",
            )
        )
        if exclude_run_id is not None:
            q = q.where(runs.c.id != exclude_run_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(runs.c.id.desc()).limit(limit)).mappings()]

    def counts(self) -> dict[str, int]:
        """Rows per table (for reports and benchmarks)."""
        with self.engine.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                for t in (runs, artifacts, targets, measurements, samples, verdicts)
            }

    # -- cost models (edge_compress.costmodel_store) ---------------------------------------------

    def add_costmodel_observations(
        self,
        target: str,
        observations: list[dict[str, Any]],
        *,
        profile: str | None = None,
        runtime: str | None = None,
        threads: int | None = None,
        run_id: int | None = None,
    ) -> int:
        """Insert the observations the store does not hold yet (by ``obs_key``, else a hash of the
        observation); returns how many were new. ``measurement_id`` in an observation links it."""
        rows = []
        for o in observations:
            key = str(o.get("obs_key") or observation_key(o))
            rows.append(
                {
                    "target": target,
                    "profile": profile,
                    "runtime": runtime,
                    "threads": threads,
                    "obs_key": key,
                    "measurement_id": o.get("measurement_id"),
                    "run_id": o.get("run_id", run_id),
                    "label": str(o.get("label") or "")[:500],
                    "source": str(o.get("source") or "")[:200],
                    "latency_ms": o.get("latency_ms"),
                    "observation_json": json.dumps({**o, "obs_key": key}, sort_keys=True, default=str),
                    "created": now(),
                }
            )
        if not rows:
            return 0
        with self.engine.begin() as conn:
            known = set(
                conn.execute(
                    select(costmodel_observations.c.obs_key).where(
                        costmodel_observations.c.target == target,
                        costmodel_observations.c.obs_key.in_([r["obs_key"] for r in rows]),
                    )
                ).scalars()
            )
            new, seen = [], set(known)
            for r in rows:
                if r["obs_key"] not in seen:
                    seen.add(r["obs_key"])
                    new.append(r)
            if new:
                conn.execute(insert(costmodel_observations), new)
        return len(new)

    def costmodel_observations(self, target: str) -> list[dict[str, Any]]:
        """Every stored observation of ``target``'s cost model, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(costmodel_observations.c.observation_json)
                .where(costmodel_observations.c.target == target)
                .order_by(costmodel_observations.c.id)
            ).scalars()
            return [json.loads(r) for r in rows]

    def costmodel_measurement_ids(self, target: str) -> set[int]:
        """Measurements already observed by ``target``'s cost model."""
        with self.engine.connect() as conn:
            return {
                int(m)
                for m in conn.execute(
                    select(costmodel_observations.c.measurement_id).where(
                        costmodel_observations.c.target == target,
                        costmodel_observations.c.measurement_id.is_not(None),
                    )
                ).scalars()
            }

    def put_costmodel(
        self, target: str, document: dict[str, Any], *, run_id: int | None = None, source: str | None = None
    ) -> int:
        """Record a (re)fit of ``target``'s cost model: its observations (those not stored yet) and
        the document without them as the target's current model. Returns the fit row id."""
        obs = list(document.get("observations") or [])
        doc = {k: v for k, v in document.items() if k != "observations"}
        info = doc.get("fit_info") or {}
        self.add_costmodel_observations(
            target,
            obs,
            profile=doc.get("profile"),
            runtime=doc.get("runtime"),
            threads=doc.get("threads"),
            run_id=run_id,
        )
        with self.engine.begin() as conn:
            n = conn.execute(
                select(func.count())
                .select_from(costmodel_observations)
                .where(costmodel_observations.c.target == target)
            ).scalar()
            return int(
                conn.execute(
                    insert(costmodel_fits).values(
                        target=target,
                        profile=doc.get("profile"),
                        runtime=doc.get("runtime"),
                        threads=doc.get("threads"),
                        run_id=run_id,
                        source=(source or "")[:200] or None,
                        observations=int(n or 0),
                        rel_error=doc.get("rel_error"),
                        cv_within10_pct=info.get("cv_within10_pct"),
                        document_json=json.dumps(doc, sort_keys=True, default=str),
                        created=now(),
                    )
                ).inserted_primary_key[0]
            )

    def get_costmodel(self, target: str, *, with_observations: bool = True) -> dict[str, Any] | None:
        """The current cost-model document of ``target`` (its latest fit), with every stored
        observation unless ``with_observations`` is False; None when none was stored."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(costmodel_fits.c.document_json)
                .where(costmodel_fits.c.target == target)
                .order_by(costmodel_fits.c.id.desc())
                .limit(1)
            ).scalar()
        if row is None:
            return None
        doc = json.loads(row)
        doc["observations"] = self.costmodel_observations(target) if with_observations else []
        return doc

    def costmodel_fits(self, target: str | None = None) -> list[dict[str, Any]]:
        """The fit history (without documents), oldest first; all targets when ``target`` is None."""
        cols = [c for c in costmodel_fits.c if c.name != "document_json"]
        q = select(*cols).order_by(costmodel_fits.c.id)
        if target is not None:
            q = q.where(costmodel_fits.c.target == target)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


def observation_key(o: dict[str, Any]) -> str:
    """A content key of a cost-model observation (what makes it the same one when stored twice)."""
    import hashlib

    body = {k: v for k, v in o.items() if k not in ("obs_key", "run_id")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------


def _engine(url: str) -> Engine:
    from sqlalchemy.exc import ArgumentError

    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except ArgumentError as e:
        raise UserError(f"--store {url}: not a database URL ({_first_line(e)}).") from None
    except ImportError as e:
        raise UserError(f"--store {url}: the database driver is not installed ({e}).") from None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(
        "PRAGMA journal_mode=WAL"
    )  # readers never block the writer; a killed writer loses nothing committed
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process kills (WAL), fast
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _run_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["settings"] = json.loads(d.pop("settings_json") or "{}")
    d["accepted"] = bool(d["accepted"])
    return d


def _insert_measurement(
    conn: Connection,
    run_id: int,
    cell: dict[str, Any],
    m: dict[str, Any],
    artifact_id: str | None,
    target_id: int | None,
    kind: str,
    *,
    role: str | None = None,
    round_: int | None = None,
) -> int:
    stats = m.get("stats") or {}
    energy = m.get("energy") or {}
    ci = stats.get("median_ci95_ms") or (None, None)
    extra = dict(m.get("extra") or {})
    throttled_count = int(m.get("throttled_samples") or 0)
    values: dict[str, Any] = {
        "run_id": run_id,
        "cell_key": cell["key"],
        "artifact_id": artifact_id,
        "target_id": target_id,
        "target": m.get("target") or cell.get("target"),
        "model": cell.get("model"),
        "variant": cell.get("variant"),
        "budget": cell.get("budget"),
        "status": OK if m.get("ok") else INFRA,
        "error": m.get("error"),
        "error_kind": m.get("error_kind"),
        **{c: stats.get(c) for c in STAT_COLUMNS},
        "median_ci_lo_ms": ci[0],
        "median_ci_hi_ms": ci[1],
        "peak_rss_bytes": m.get("peak_rss_bytes"),
        "energy_j": energy.get("joules_per_inference"),
        "energy_measured": energy.get("measured") if energy else None,
        "energy_source": energy.get("source"),
        "avg_watts": energy.get("avg_watts"),
        "accuracy": m.get("accuracy"),
        "accuracy_samples": extra.get("accuracy_samples"),
        "throttled": bool(m.get("throttled")),
        "throttled_samples": throttled_count,
        "emulated": bool(m.get("emulated")),
        "threads": m.get("threads"),
        "runtime": m.get("runtime"),
        "runtime_version": m.get("runtime_version"),
        "wall_s": m.get("wall_s"),
        "extra_json": json.dumps(
            {k: m.get(k) for k in ("load_ms", "first_inference_ms", "remeasured", "machine", "pushed_bytes")}
            | {"extra": extra},
            sort_keys=True,
            default=str,
        ),
        "created": now(),
        "kind": kind,
        "role": role,
        "round": round_,
    }
    mid = int(conn.execute(insert(measurements).values(**values)).inserted_primary_key[0])
    lat = m.get("latency_ms") or []
    flags = list(m.get("throttled_mask") or extra.get("throttled_mask") or [])
    flags += [False] * (len(lat) - len(flags))
    if lat:
        conn.execute(
            insert(samples),
            [
                {"measurement_id": mid, "idx": i, "latency_ms": float(v), "throttled": bool(f)}
                for i, (v, f) in enumerate(zip(lat, flags, strict=True))
            ],
        )
    return mid
