"""A nightly suite on a real multi-node Ray cluster (a head and two lab nodes, separate process
groups on this machine), each lab node reaching its own loopback sshd targets.

The tests share one cluster (module scope) and run in file order: the last one kills a node.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from edge_compress.store import ResultStore
from tests.lab.conftest import NODES, Lab, cli, make_models, write_suite

pytestmark = [pytest.mark.slow, pytest.mark.ssh]
ALL = [t for ts in NODES.values() for t in ts]
NODE_OF = {t: n for n, ts in NODES.items() for t in ts}


def lab_rows(db: Path, run_id: int) -> list[dict[str, Any]]:
    with ResultStore(db) as store:
        rows = store.measurements(run_id=run_id)
    for r in rows:
        r["lab"] = json.loads(r["extra_json"] or "{}").get("extra", {}).get("lab")
    return rows


def nightly(lab: Lab, suite: Path, db: Path, *extra: str, cluster: str | None = None) -> dict[str, Any]:
    args = ["nightly", str(suite), "--store", str(db), "--json", *extra]
    if cluster:
        args += ["--cluster", cluster]
    r = cli(*args, timeout=600)
    assert r.returncode in (0, 3), r.stderr[-3000:] + r.stdout[-2000:]
    return json.loads(r.stdout)  # stdout holds exactly the JSON document, whatever Ray printed


POLLER = textwrap.dedent(
    """
    import json, sys, time
    from edge_compress.lab.cluster import connect, lab_status
    ray, _ = connect(sys.argv[1])
    with open(sys.argv[2], "w") as f:
        while True:
            f.write(json.dumps(lab_status(ray)) + "\\n")
            f.flush()
            time.sleep(0.2)
    """
)


def test_each_node_advertises_the_devices_of_its_own_inventory(lab: Lab) -> None:
    st = lab.status()
    nodes = {n["name"]: n for n in st["nodes"]}
    assert set(nodes) == {"head", "lab-a", "lab-b"}
    assert nodes["head"]["head"] and nodes["head"]["devices"] == [] and nodes["head"]["cpus"] == 0
    for name, targets in NODES.items():
        assert nodes[name]["devices"] == list(targets) and "ssh" in nodes[name]["capabilities"]
    assert {d["target"]: (d["node"], d["state"]) for d in st["devices"]} == {
        t: (NODE_OF[t], "idle") for t in ALL
    }
    assert st["runs"] == [] and st["queued_cells"] == 0


def test_cells_run_on_the_node_reaching_their_device_like_the_local_pool(lab: Lab, tmp_path: Path) -> None:
    models = make_models(tmp_path, 2)
    suite = write_suite(tmp_path / "suite.yaml", models, ALL)
    node_ids = lab.node_ids()
    log = tmp_path / "status.jsonl"
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, lab.address, str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        ray_db = tmp_path / "lab.sqlite"
        res = nightly(lab, suite, ray_db, cluster=lab.client_address)  # a Ray Client driver (ray://)
    finally:
        poller.kill()
        poller.wait()
    assert res["exit_code"] == 0 and res["counts"] == {"no_baseline": 8}, res["counts"]

    rows = lab_rows(ray_db, res["run_id"])
    assert len(rows) == 8 and all(r["status"] == "ok" and r["count"] >= 20 for r in rows)
    for r in rows:
        node = NODE_OF[r["target"]]
        assert r["lab"]["node_id"] == node_ids[node] and r["lab"]["node"] == node, r["lab"]
        # the model file came through the object store into that node's own cache
        cache = lab.nodes[node].cache
        assert cache and Path(r["lab"]["model_file"]).is_relative_to(cache.resolve()), r["lab"]
    for t in ALL:  # one cell per device at a time
        spans = sorted(
            (r["lab"]["started_unix"], r["lab"]["finished_unix"]) for r in rows if r["target"] == t
        )
        assert len(spans) == 2 and spans[0][1] <= spans[1][0], (t, spans)

    # `lab status` saw the run while it went on: queued or running cells on busy devices
    snaps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    during = [s for s in snaps if s["runs"]]
    assert during, f"{len(snaps)} status snapshots, none during the run"
    assert any(s["running_cells"] and any(d["state"] == "busy" for d in s["devices"]) for s in during)
    assert all(s["runs"][0]["run_id"] == res["run_id"] for s in during)
    assert lab.status()["runs"] == []  # the run's board is gone with its driver

    # the same suite on the local pool (a head-side inventory of all four devices)
    inv = lab.write_inventory(tmp_path / "all.yaml", ALL)
    local = nightly(lab, suite, tmp_path / "local.sqlite", "--inventory", str(inv))
    assert local["counts"] == res["counts"]
    local_rows = {r["cell_key"]: r for r in lab_rows(tmp_path / "local.sqlite", local["run_id"])}
    assert set(local_rows) == {r["cell_key"] for r in rows}
    for r in rows:
        same = local_rows[r["cell_key"]]
        assert (r["artifact_id"], r["accuracy"], r["accuracy_samples"]) == (
            same["artifact_id"],
            same["accuracy"],
            same["accuracy_samples"],
        )
        assert same["lab"] is None
    assert len({r["accuracy"] for r in rows}) == 2  # two different models, measured as themselves
    verdicts = {c["key"]: c["verdict"] for c in local["cells"]}
    assert verdicts == {c["key"]: c["verdict"] for c in res["cells"]}


def test_compilation_runs_on_a_lab_node_and_the_artifact_reaches_the_head(lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("edge_compress.compiler")
    suite = write_suite(
        tmp_path / "suite.yaml",
        ["lenet5"],
        ["a0"],
        compile=[{"name": "int8", "method": "uniform8", "formats": ["onnx"]}],
        measure={"min_count": 20, "min_duration_s": 0.1, "warmup": 2, "cooldown_s": 0.1, "accuracy": True},
    )
    art_dir = tmp_path / "artifacts"
    res = nightly(lab, suite, tmp_path / "c.sqlite", "--artifacts-dir", str(art_dir), cluster=lab.address)
    assert res["exit_code"] == 0 and res["compiled"] == {"hits": 0, "compiled": 1, "failed": 0}, res
    with ResultStore(tmp_path / "c.sqlite") as store:
        art = store.get_artifact(res["cells"][0]["candidate_artifact_id"])
    head_copy = Path(art.path)
    assert head_copy.parent == art_dir and (head_copy / "manifest.json").is_file()  # written on the head
    # the head offers no CPU: the compilation ran on a lab node, into its own artifact cache
    compiled_on = [n for n in NODES if (lab.nodes[n].cache / "artifacts" / head_copy.name).is_dir()]
    assert len(compiled_on) == 1, compiled_on
    node_copy = lab.nodes[compiled_on[0]].cache / "artifacts" / head_copy.name
    assert sorted(p.name for p in node_copy.iterdir()) == sorted(p.name for p in head_copy.iterdir())
    (row,) = lab_rows(tmp_path / "c.sqlite", res["run_id"])
    assert row["status"] == "ok" and row["lab"]["node"] == "lab-a" and 0.5 < row["accuracy"] <= 1.0


def test_every_device_has_a_warm_worker_before_its_first_cell(lab: Lab, tmp_path: Path) -> None:
    """The nightly waits for a worker per device (started on the device's node, with what a
    cell imports) before its measure phase; no device's first cell waits for a worker to start."""
    from edge_compress.lab.executor import RayExecutor
    from edge_compress.nightly import run_nightly
    from edge_compress.suite import load_suite
    from runners.inventory import Inventory

    suite_path = write_suite(tmp_path / "suite.yaml", make_models(tmp_path, 2), ALL, name="lab-warm")
    node_ids = lab.node_ids()
    events: list[tuple[str, float]] = []
    db = tmp_path / "w.sqlite"
    with RayExecutor(lab.address, label="lab-warm") as ex:
        inv = ex.lab_inventory(Inventory(), wait_for=ALL)  # as `nightly --cluster`: warm-ups sent here
        suite = load_suite(suite_path, inventory=inv)
        with ResultStore(db) as store:
            res = run_nightly(
                suite,
                store=store,
                inventory=inv,
                executor=ex,
                artifacts_dir=tmp_path / "artifacts",
                progress=lambda event, **_: events.append((event, time.time())),
            )
        warmed = {w["target"]: w for w in ex.warmed}
        assert not ex.notes, ex.notes
    assert res.exit_code == 0 and res.counts == {"no_baseline": 8}, res.counts
    assert sorted(warmed) == sorted(ALL) and len(ex.warmed) == len(ALL)
    measure_start = next(t for e, t in events if e == "measure")
    rows = lab_rows(db, res.run_id)
    for t in ALL:
        w, node = warmed[t], NODE_OF[t]
        assert (w["node"], w["node_id"]) == (node, node_ids[node]), w
        assert w["finished_unix"] <= measure_start, (t, w, measure_start)
        first = min((r for r in rows if r["target"] == t), key=lambda r: r["lab"]["started_unix"])
        assert first["lab"]["node_id"] == w["node_id"] and w["finished_unix"] <= first["lab"]["started_unix"]
        # it ran in a worker process that was there before the measure phase (Ray may have
        # started more workers than warm-ups ran on; any of them is warm)
        assert first["lab"]["worker_started_unix"] <= measure_start, (t, first["lab"], measure_start)


def test_a_node_dying_mid_suite_fails_only_its_own_cells(lab: Lab, tmp_path: Path) -> None:
    models = make_models(tmp_path, 3)
    measure = {"min_count": 20, "min_duration_s": 1.5, "warmup": 2, "cooldown_s": 0.1, "timeout_s": 120}
    suite = write_suite(tmp_path / "suite.yaml", models, ALL, name="lab-kill", measure=measure)
    db = tmp_path / "k.sqlite"
    out = tmp_path / "out.json"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_compress",
                "nightly",
                str(suite),
                "--store",
                str(db),
                "--json",
                "--cluster",
                lab.address,
            ],  # fmt: skip
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    victim = lab.nodes["lab-b"]
    deadline = time.monotonic() + 300
    done_before: set[str] = set()
    while not done_before:  # kill lab-b as soon as it has finished one cell: it is measuring the next
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                q = "SELECT cell_key FROM measurements WHERE target IN ('b0', 'b1')"
                done_before = {k for (k,) in conn.execute(q)}
        except sqlite3.OperationalError:  # the store is not there yet
            pass
        time.sleep(0.1)
    victim.kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]  # infrastructure failures only: the suite completed
    res = json.loads(out.read_text())
    assert len(res["cells"]) == 12
    by_key = {c["key"]: c for c in res["cells"]}
    rows = {r["cell_key"]: r for r in lab_rows(db, res["run_id"])}
    a_cells = [k for k in by_key if k.rsplit("|", 1)[1] in NODES["lab-a"]]
    b_cells = [k for k in by_key if k.rsplit("|", 1)[1] in NODES["lab-b"]]
    assert all(by_key[k]["verdict"] == "no_baseline" and rows[k]["lab"]["node"] == "lab-a" for k in a_cells)
    lost = [k for k in b_cells if by_key[k]["verdict"] == "infra_failure"]
    assert lost and set(b_cells) - set(lost) >= done_before
    assert all(
        rows[k]["status"] == "infra_failure" and rows[k]["error_kind"] == "infrastructure" for k in lost
    )
    assert all("left the cluster" in by_key[k]["error"] for k in lost)
    mid = [k for k in lost if "while measuring" in by_key[k]["error"]]
    assert mid, [by_key[k]["error"] for k in lost]  # the cell lab-b was measuring when it died
    assert all(rows[k]["lab"]["node"] == "lab-b" and rows[k]["lab"]["lost"] for k in mid)
    with ResultStore(db) as store:
        run = store.get_run(res["run_id"])
    assert run["exit_code"] == 3 and run["finished"] is not None
