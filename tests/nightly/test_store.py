"""ResultStore on a real SQLite file: schema, forward migration, per-cell transactions, baselines."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from edge_compress.errors import UserError
from edge_compress.migrations import LATEST
from edge_compress.store import ArtifactRecord, ResultStore, md


def measurement(samples: list[float], ok: bool = True, **kw: Any) -> dict[str, Any]:
    s = sorted(samples)
    m = {
        "target": "local",
        "model_path": "m.onnx",
        "ok": ok,
        "latency_ms": samples,
        "stats": {
            "count": len(s),
            "mean_ms": sum(s) / len(s),
            "median_ms": s[len(s) // 2],
            "p90_ms": s[int(0.9 * len(s))],
            "p99_ms": s[-1],
            "std_ms": 0.1,
            "min_ms": s[0],
            "max_ms": s[-1],
            "median_ci95_ms": [s[0], s[-1]],
        }
        if ok
        else None,
        "peak_rss_bytes": 50_000_000,
        "energy": {
            "joules_per_inference": 0.01,
            "avg_watts": 10.0,
            "source": "estimate:x",
            "measured": False,
        },
        "machine": "x86_64",
        "runtime": "onnxruntime",
        "runtime_version": "1.0",
        "throttled_samples": 0,
        "extra": {},
    }
    m.update(kw)
    return m


CELL = {"key": "m|asis|profile|local", "model": "m", "variant": "asis", "budget": None, "target": "local"}
TARGET = {"name": "local", "profile": "host", "transport": "local"}


def record(
    store: ResultStore, run_id: int, samples: list[float], cell: dict[str, Any] = CELL, **kw: Any
) -> int:
    return store.record_cell(
        run_id,
        cell,
        measurement(samples, **kw),
        artifact_id=None,
        target=TARGET,
        verdict={"key": cell["key"], "verdict": "ok"},
    )


def test_fresh_store_has_the_latest_schema(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    with ResultStore(db) as store:
        assert store.schema_version() == LATEST
        insp = inspect(store.engine)
        for table in md.sorted_tables:
            cols = {c["name"] for c in insp.get_columns(table.name)}
            assert cols == {c.name for c in table.columns}, table.name
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_forward_migration_from_v1_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    store = ResultStore(db, migrate=False)
    assert store.migrate(target=1) == [1]
    with store.engine.begin() as conn:  # a version-1 run with one measurement and its samples
        conn.execute(
            text(
                "INSERT INTO runs (suite, started, status, accepted) VALUES ('s', '2025-01-01 00:00:00', 'finished', 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO measurements (run_id, cell_key, target, status, median_ms, created) "
                "VALUES (1, 'k', 'local', 'ok', 1.5, '2025-01-01 00:00:00')"
            )
        )
        conn.execute(
            text("INSERT INTO samples (measurement_id, idx, latency_ms) VALUES (1, 0, 1.5), (1, 1, 1.6)")
        )
    store.close()
    with ResultStore(db) as store:  # opening applies the pending migration
        assert store.schema_version() == LATEST
        rows = store.measurements(kind="cell")
        assert len(rows) == 1 and rows[0]["median_ms"] == 1.5 and rows[0]["kind"] == "cell"
        assert store.samples(1).tolist() == [1.5, 1.6]
        assert store.baseline("k")["id"] == 1
        assert store.verdicts(1) == []


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    ResultStore(db).close()
    eng = create_engine(f"sqlite:///{db}")
    with eng.begin() as conn:
        conn.execute(
            text(f"INSERT INTO schema_version (version, applied) VALUES ({LATEST + 5}, '2030-01-01')")
        )
    eng.dispose()
    with pytest.raises(UserError, match="newer than this"):
        ResultStore(db)


def test_cell_is_one_transaction_and_append_only(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        run = store.start_run("s")
        mid = record(store, run, [1.0, 1.1, 1.2, 0.9])
        assert store.samples(mid).tolist() == [1.0, 1.1, 1.2, 0.9]
        assert store.completed_cells(run) == {CELL["key"]}
        before = store.counts()
        with pytest.raises(IntegrityError):  # a second verdict for the same cell and run
            record(store, run, [2.0, 2.1])
        assert store.counts() == before  # nothing of the failed cell was written
        store.record_cell(
            run,
            {**CELL, "key": "other"},
            measurement([], ok=False, error="refused", error_kind="connection"),
            artifact_id=None,
            target=TARGET,
            verdict={"key": "other", "verdict": "infra_failure"},
        )
        rows = {r["cell_key"]: r for r in store.measurements(run_id=run)}
        assert rows["other"]["status"] == "infra_failure" and rows["other"]["error"] == "refused"
        assert rows[CELL["key"]]["target_id"] is not None


def test_interleaved_rows_are_stored_with_the_cell(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.put_artifact(ArtifactRecord("a1", "m", None, "asis", None, 10, str(tmp_path), {"files": {}}))
        store.put_artifact(
            ArtifactRecord("a1", "m", None, "asis", None, 10, str(tmp_path), {"files": {}})
        )  # idempotent
        run = store.start_run("s")
        rounds = [
            {"role": role, "round": r, "artifact_id": "a1", "measurement": measurement([1.0 + r, 1.1])}
            for r in range(2)
            for role in ("baseline", "candidate")
        ]
        store.record_cell(
            run,
            CELL,
            measurement([1.0, 1.2]),
            artifact_id="a1",
            target=TARGET,
            verdict={"key": CELL["key"], "verdict": "ok", "evidence": "interleaved"},
            interleaved=rounds,
        )
        assert len(store.measurements(run_id=run)) == 1
        inter = store.measurements(run_id=run, kind="interleaved")
        assert [(r["role"], r["round"]) for r in inter] == [
            ("baseline", 0),
            ("candidate", 0),
            ("baseline", 1),
            ("candidate", 1),
        ]
        assert store.counts()["samples"] == 2 + 4 * 2
        assert store.get_artifact("a1").bytes == 10


def test_baseline_is_last_accepted_finished_run_or_pinned(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        r1 = store.start_run("s")
        record(store, r1, [1.0, 1.0])
        store.finish_run(r1, exit_code=0, accept=True)
        r2 = store.start_run("s")
        record(store, r2, [2.0, 2.0])
        store.finish_run(r2, exit_code=0)  # not accepted
        r3 = store.start_run("s")
        record(store, r3, [3.0, 3.0])
        store.finish_run(r3, exit_code=0, accept=True)
        r4 = store.start_run("s")  # unfinished
        assert store.baseline(CELL["key"], exclude_run_id=r4)["run_id"] == r3
        assert store.baseline(CELL["key"], pinned_run_id=r2)["run_id"] == r2
        assert [h["run_id"] for h in store.history(CELL["key"])] == [r3, r1]
        assert store.last_unfinished_run("s")["id"] == r4
        assert store.last_unfinished_run("other") is None


def test_store_urls(tmp_path: Path) -> None:
    with ResultStore(f"sqlite:///{tmp_path / 'u.sqlite'}") as store:
        assert store.path == tmp_path / "u.sqlite"
    with pytest.raises(UserError, match="does not exist"):
        ResultStore(tmp_path / "no" / "dir" / "s.sqlite")
    with pytest.raises(UserError):
        ResultStore("nosuchdialect://x/y")
