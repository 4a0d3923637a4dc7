"""A nightly over a zoo model through the real compiler: compiled once, a cache hit afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_compress.store import ResultStore
from tests.nightly.conftest import run_main, write_suite

pytest.importorskip("edge_compress.compiler")
pytestmark = pytest.mark.slow


def test_zoo_model_is_compiled_once_then_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(
        tmp_path / "suite.yaml",
        models=["lenet5"],
        compile=[{"name": "int8", "method": "uniform8", "formats": ["onnx"]}],
        measure={"min_count": 20, "min_duration_s": 0.05, "warmup": 2, "cooldown_s": 0.1, "accuracy": True},
        interleave={"enabled": False},
    )
    db = tmp_path / "r.sqlite"
    args = ("nightly", str(suite), "--store", str(db), "--artifacts-dir", str(tmp_path / "art"), "--json")
    rc, out, err = run_main(capsys, *args, "--accept")
    assert rc == 0, err + out
    first = json.loads(out)
    assert first["compiled"] == {"hits": 0, "compiled": 1, "failed": 0}, first
    assert first["counts"] == {"no_baseline": 1}

    rc, out, err = run_main(capsys, *args)
    assert rc in (0, 1), err + out
    second = json.loads(out)
    assert second["compiled"] == {"hits": 1, "compiled": 0, "failed": 0}
    cell = second["cells"][0]
    assert cell["candidate_artifact_id"] == cell["baseline_artifact_id"]
    acc = next(m for m in cell["metrics"] if m["metric"] == "accuracy")
    assert acc["verdict"] == "ok" and acc["effect_pct"] == 0.0  # same artifact, same test split
    size = next(m for m in cell["metrics"] if m["metric"] == "bytes")
    assert size["verdict"] == "ok" and size["effect_pct"] == 0.0

    with ResultStore(db) as store:
        art = store.get_artifact(cell["candidate_artifact_id"])
        assert art.model == "lenet5" and art.plan_digest and art.manifest["files"]
        (row,) = store.measurements(run_id=second["run_id"])
        assert 0.5 < row["accuracy"] <= 1.0 and row["accuracy_samples"] > 100
