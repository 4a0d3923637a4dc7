"""A nightly SIGKILLed mid-run loses no completed cell; --resume measures only the missing ones."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_compress.store import ResultStore
from tests.nightly.conftest import run_main, write_suite

CELLS = 5


def _verdicts(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT count(*) FROM verdicts").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_sigkill_then_resume_completes_exactly_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(
        workdir / "suite.yaml", compile=[{"name": f"v{i}", "method": "none"} for i in range(CELLS)]
    )
    db = workdir / "results.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_compress", "nightly", str(suite), "--store", str(db), "--json"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        deadline = time.monotonic() + 240
        while _verdicts(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its agent child: no clean-up code runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()

    with ResultStore(db) as store:
        (run,) = store.runs()
        assert run["status"] == "running"
        done = store.completed_cells(run["id"])
        assert 2 <= len(done) < CELLS
        # no half-written cell: every stored cell measurement has its verdict and all its samples
        rows = store.measurements(run_id=run["id"])
        assert {r["cell_key"] for r in rows} == done
        assert all(len(store.samples(r["id"])) == r["count"] for r in rows)

    rc, out, err = run_main(capsys, "nightly", str(suite), "--store", str(db), "--resume", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["run_id"] == run["id"] and res["resumed"]
    assert res["measured_now"] == CELLS - len(done)
    assert res["counts"] == {"no_baseline": CELLS}

    with ResultStore(db) as store:
        rows = store.measurements(run_id=run["id"])
        keys = [r["cell_key"] for r in rows]
        assert len(keys) == CELLS and len(set(keys)) == CELLS  # exactly one measurement per cell
        assert len(store.verdicts(run["id"])) == CELLS
        assert store.get_run(run["id"])["status"] == "finished"
        assert len(store.runs()) == 1
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
