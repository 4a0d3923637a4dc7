"""A suite over two real OpenSSH servers on loopback, measured in parallel."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_compress.store import ResultStore
from tests.nightly.conftest import run_main, write_suite
from tests.sshd import SSHServer

pytestmark = pytest.mark.ssh


def test_suite_over_two_ssh_targets(
    workdir: Path, sshd_factory: Callable[[int], list[SSHServer]], capsys: pytest.CaptureFixture[str]
) -> None:
    servers = sshd_factory(2)
    inv = workdir / "inventory.yaml"
    for i, s in enumerate(servers):
        s.write_inventory(
            inv, f"board{i}", python=sys.executable, workdir=str(workdir / f"remote{i}"), profile="host"
        )
    # this test is about the plumbing over ssh; practical thresholds wide enough that a busy CI
    # machine does not turn load into a verdict (the statistics have their own tests)
    suite = write_suite(
        workdir / "suite.yaml",
        targets=["board0", "board1"],
        thresholds={"latency_median": "50%", "latency_p99": "100%", "energy": "100%"},
    )
    db = workdir / "lab.sqlite"
    args = ("nightly", str(suite), "--inventory", str(inv), "--store", f"sqlite:///{db}", "--json")

    rc, out, err = run_main(capsys, *args, "--accept")
    assert rc == 0, err + out
    first = json.loads(out)
    assert first["counts"] == {"no_baseline": 2}

    rc, out, err = run_main(capsys, *args)
    assert rc == 0, err + out
    second = json.loads(out)
    assert sum(second["counts"].get(k, 0) for k in ("ok", "improvement")) == 2, second["counts"]

    with ResultStore(db) as store:
        rows = store.measurements(run_id=second["run_id"])
        assert sorted(r["target"] for r in rows) == ["board0", "board1"]
        assert all(r["status"] == "ok" and r["count"] >= 20 for r in rows)
        assert len({r["target_id"] for r in rows}) == 2  # one target row per device (machine, runtime)
        for v in store.verdicts(second["run_id"]):
            assert v["baseline_run_id"] == first["run_id"]
