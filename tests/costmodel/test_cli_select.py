"""`edge-compress select ... --json` without a target: every number is labelled predicted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_compress.cli import main


def test_select_json_without_target_is_predicted(
    cache: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "pareto.png"
    rc = main(
        [
            "select",
            "lenet5",
            "--profile",
            "host",
            "--json",
            "--alphas",
            "",
            "--prune",
            "",
            "--ranks",
            "",
            "--budget",
            "bytes=40KB,latency_median=50ms",
            "--plot",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(out)
    assert doc["basis"] == "predicted" and doc["numbers"] == "predicted (no target given)"
    assert doc["cost_model"]["calibrated"] is False and doc["measurements"] == 0
    assert any("not calibrated" in n for n in doc["notes"])
    assert all(c["basis"] == "predicted" and c["measured"] is None for c in doc["candidates"])
    assert doc["chosen"]["id"] == "lenet5/w4a8"  # the only one under 40 KB
    rej = {r["id"]: r for r in doc["rejections"]}
    assert rej["lenet5/fp32"]["violations"]["model_bytes"]["over_pct"] > 0
    assert doc["budgets"]["model_bytes"] == 40_000 and doc["budgets"]["latency_median_ms"] == 50.0
    assert png.stat().st_size > 1000 and doc["plot"] == str(png)


def test_select_impossible_budget_is_a_one_line_error(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "select",
            "lenet5",
            "--profile",
            "host",
            "--alphas",
            "",
            "--prune",
            "",
            "--ranks",
            "",
            "--budget",
            "bytes=1KB",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "model_bytes" in err and "closest" in err and "lenet5/w4a8" in err and "Traceback" not in err


@pytest.mark.slow
def test_select_on_a_target_keeps_its_model_in_the_result_store(
    cache: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from edge_compress.store import ResultStore

    db = tmp_path / "results.sqlite"
    args = ["select", "lenet5", "--profile", "host", "--target", "local", "--store", str(db), "--json"]
    args += ["--alphas", "", "--prune", "", "--ranks", "", "--budget", "latency_median=50ms"]
    args += ["--min-duration", "0.05", "--max-measurements", "2"]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    first = json.loads(out)
    assert first["basis"] == "measured" and first["measurements"] >= 1
    with ResultStore(db) as store:
        fits = store.costmodel_fits("local")
        assert len(fits) == 1 and fits[0]["source"] == "select" and fits[0]["profile"] == "host"
        assert fits[0]["observations"] == first["measurements"]
    # the next selection starts from the stored, calibrated model of the target
    rc = main(args)
    second = json.loads(capsys.readouterr().out)
    assert rc == 0 and second["cost_model"]["calibrated"] is True
