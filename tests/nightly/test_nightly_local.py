"""`edge-compress nightly` end to end on the local target with real models and a real SQLite file."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from edge_compress.store import ResultStore
from tests.nightly.conftest import run_main, small_model, write_suite


def test_slowed_artifact_is_a_regression_on_interleaved_evidence(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(workdir / "suite.yaml")
    db = workdir / "results.sqlite"
    args = ("nightly", str(suite), "--store", str(db), "--json")

    rc, stdout, stderr = run_main(capsys, *args, "--accept")
    assert rc == 0, stderr
    out = json.loads(stdout)
    assert out["counts"] == {"no_baseline": 1} and out["accepted"]

    rc, stdout, stderr = run_main(capsys, *args, "--junit", str(workdir / "same.xml"))
    assert rc == 0, stderr + stdout
    cell = json.loads(stdout)["cells"][0]
    assert cell["verdict"] in ("ok", "improvement")
    assert cell["evidence"] in ("historical", "interleaved")
    assert cell["baseline_artifact_id"] == cell["candidate_artifact_id"]

    small_model(workdir / "model.onnx", layers=8)  # the same path, now with 4x the conv work
    rc, stdout, stderr = run_main(
        capsys, *args, "--junit", str(workdir / "slow.xml"), "--html", str(workdir / "r.html")
    )
    assert rc == 1, stderr + stdout
    res = json.loads(stdout)
    cell = res["cells"][0]
    assert cell["verdict"] == "regression" and cell["evidence"] == "interleaved"
    assert cell["interleaved_rounds"] == 4 and cell["baseline_artifact_id"] != cell["candidate_artifact_id"]
    med = next(m for m in cell["metrics"] if m["metric"] == "latency_median")
    assert med["verdict"] == "regression" and med["evidence"] == "interleaved"
    assert med["effect_pct"] > 50 and med["ci_pct"][0] > 0 and med["p_value"] < 0.01

    with ResultStore(db) as store:
        run = store.get_run(res["run_id"])
        assert run["status"] == "finished" and run["exit_code"] == 1 and not run["accepted"]
        rows = store.measurements(run_id=res["run_id"])
        assert len(rows) == 1 and rows[0]["status"] == "ok"
        assert len(store.samples(rows[0]["id"])) == rows[0]["count"]  # every raw sample is stored
        inter = store.measurements(run_id=res["run_id"], kind="interleaved")
        assert sorted((r["role"], r["round"]) for r in inter) == sorted(
            [("warmup", -1)] + [(role, r) for r in range(4) for role in ("baseline", "candidate")]
        )
        assert {r["artifact_id"] for r in inter} == {
            cell["baseline_artifact_id"],
            cell["candidate_artifact_id"],
        }
        assert len(store.runs(suite="t")) == 3

    failures = ET.parse(workdir / "slow.xml").getroot().findall(".//testcase/failure")
    assert len(failures) == 1 and "latency_median" in failures[0].get("message")
    assert ET.parse(workdir / "same.xml").getroot().findall(".//failure") == []
    assert "data:image/png;base64," in (workdir / "r.html").read_text()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_budget_violation_and_unreachable_target(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = workdir / "inventory.yaml"
    inv.write_text(
        yaml.safe_dump(
            {
                "targets": {
                    "gone": {
                        "transport": "ssh",
                        "host": "127.0.0.1",
                        "port": _closed_port(),
                        "profile": "host",
                        "known_hosts": str(workdir / "kh"),
                    }
                }
            }
        )
    )
    small_model(workdir / "other.onnx", layers=1, seed=3)
    suite = write_suite(
        workdir / "suite.yaml",
        models=["model.onnx", "other.onnx"],
        targets=["gone", "local"],
        budgets=["latency_p99=0.001ms"],
    )
    db = workdir / "results.sqlite"
    rc, stdout, stderr = run_main(
        capsys,
        "nightly",
        str(suite),
        "--inventory",
        str(inv),
        "--store",
        str(db),
        "--junit",
        str(workdir / "j.xml"),
    )
    assert rc == 3, stderr + stdout  # infrastructure failures only: no regression
    assert "budget_violation" in stdout and "infra_failure" in stdout
    with ResultStore(db) as store:
        run = store.runs()[-1]
        verdicts = {v["key"]: v for v in store.verdicts(run["id"])}
    assert len(verdicts) == 4
    for key, v in verdicts.items():
        if key.endswith("|gone"):
            assert v["verdict"] == "infra_failure" and v["error_kind"] == "connection", v
        else:  # the local cells completed despite the dead device
            assert v["verdict"] == "budget_violation"
            assert [b["budget"] for b in v["budget_violations"]] == ["latency_p99_ms"]
            assert not any(m["verdict"] == "regression" for m in v["metrics"])
    root = ET.parse(workdir / "j.xml").getroot()
    suite_el = root.find("testsuite")
    assert suite_el.get("tests") == "4" and suite_el.get("errors") == "2" and suite_el.get("failures") == "0"
    assert len(root.findall(".//testcase/error")) == 2


def test_peak_memory_is_not_compared_across_agent_modes(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A baseline measured by a process of its own and a candidate forked from a warm agent have
    different peak-RSS baselines: no peak-memory verdict between them (and no regression from it);
    once both are measured the same way, peak memory is compared again."""
    inv = workdir / "inventory.yaml"

    def board(warm: bool) -> None:
        entry = {"transport": "local", "profile": "host", "warm_agent": warm}
        inv.write_text(yaml.safe_dump({"targets": {"board": entry}}))

    suite = write_suite(workdir / "suite.yaml", targets=["board"])
    args = ("nightly", str(suite), "--inventory", str(inv), "--store", str(workdir / "r.sqlite"), "--json")
    board(False)
    rc, stdout, stderr = run_main(capsys, *args, "--accept")
    assert rc == 0, stderr
    board(True)
    rc, stdout, stderr = run_main(capsys, *args, "--accept")
    cell = json.loads(stdout)["cells"][0]
    peak = next(m for m in cell["metrics"] if m["metric"] == "peak_memory")
    assert peak["verdict"] == "not_comparable" and "cold agent" in peak["note"], peak
    assert cell["verdict"] != "regression" or "peak_memory" not in str(cell.get("regressed_metrics"))
    rc, stdout, stderr = run_main(capsys, *args)
    cell = json.loads(stdout)["cells"][0]
    peak = next(m for m in cell["metrics"] if m["metric"] == "peak_memory")
    assert peak["verdict"] != "not_comparable" and peak["baseline"] and peak["candidate"], peak
