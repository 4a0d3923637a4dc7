"""Reports from a real store: JUnit XML parses, JSON, and the HTML renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_compress.report import pareto_front
from edge_compress.store import ArtifactRecord, ResultStore
from tests.nightly.conftest import run_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _measurement(target: str, median: float, seed: int, accuracy: float | None) -> dict[str, Any]:
    x = (median * np.random.default_rng(seed).lognormal(0, 0.03, 200)).tolist()
    s = sorted(x)
    return {
        "target": target,
        "model_path": "m.onnx",
        "ok": True,
        "latency_ms": x,
        "stats": {
            "count": 200,
            "mean_ms": float(np.mean(x)),
            "median_ms": s[100],
            "p90_ms": s[180],
            "p99_ms": s[198],
            "std_ms": float(np.std(x)),
            "min_ms": s[0],
            "max_ms": s[-1],
            "median_ci95_ms": [s[95], s[105]],
        },
        "peak_rss_bytes": 60_000_000,
        "accuracy": accuracy,
        "throttled_samples": 0,
        "energy": {
            "joules_per_inference": median * 0.02,
            "avg_watts": 20.0,
            "source": "estimate:host",
            "measured": False,
        },
        "machine": "x86_64",
        "runtime": "onnxruntime",
        "runtime_version": "1.20",
        "extra": {"accuracy_samples": 360},
    }


def _verdict(key: str, verdict: str, effect: float) -> dict[str, Any]:
    return {
        "key": key,
        "verdict": verdict,
        "evidence": "interleaved" if verdict == "regression" else "historical",
        "metrics": [
            {
                "metric": "latency_median",
                "verdict": verdict if verdict == "regression" else "ok",
                "evidence": "interleaved",
                "baseline": 1.0,
                "candidate": 1 + effect / 100,
                "effect_pct": effect,
                "ci_pct": [effect - 2, effect + 2],
                "ci_level": 0.98,
                "p_value": 0.001,
                "threshold_pct": 5.0,
                "effective_threshold_pct": 5.0,
                "noise_pct": None,
                "n_baseline": 5,
                "n_candidate": 5,
                "suspect": True,
                "note": "",
            }
        ],
        "budget_violations": [],
        "candidate_artifact_id": "art-b",
        "notes": [],
        "throttled_excluded": {"candidate": 3},
        "interleaved_rounds": 5 if verdict == "regression" else 0,
    }


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    db = tmp_path / "r.sqlite"
    art_dir = tmp_path / "art-b"
    art_dir.mkdir()
    (art_dir / "manifest.json").write_text("{}")
    with ResultStore(db) as store:
        store.put_artifact(ArtifactRecord("art-a", "lenet5", "host", "int8", None, 40_000, str(art_dir), {}))
        store.put_artifact(ArtifactRecord("art-b", "lenet5", "host", "int4", None, 25_000, str(art_dir), {}))
        for run in range(4):
            rid = store.start_run("lab", revision=f"v0.{run}")
            for target, base in (("local", 1.0), ("pi5", 4.0)):
                for variant, aid, acc in (("int8", "art-a", 0.97), ("int4", "art-b", 0.95)):
                    slow = run == 3 and target == "pi5" and variant == "int4"
                    key = f"lenet5|{variant}|profile|{target}"
                    cell = {
                        "key": key,
                        "model": "lenet5",
                        "variant": variant,
                        "budget": None,
                        "target": target,
                    }
                    m = _measurement(
                        target, base * (0.7 if variant == "int4" else 1) * (1.2 if slow else 1), run, acc
                    )
                    v = _verdict(
                        key,
                        "regression" if slow else ("no_baseline" if run == 0 else "ok"),
                        20 if slow else 0.5,
                    )
                    store.record_cell(
                        rid, cell, m, artifact_id=aid, target={"name": target, "profile": "host"}, verdict=v
                    )
            store.record_cell(
                rid,
                {"key": "lenet5|int8|profile|gone", "model": "lenet5", "variant": "int8", "target": "gone"},
                {
                    "target": "gone",
                    "model_path": "",
                    "ok": False,
                    "error": "cannot connect <to> gone & co",
                    "error_kind": "connection",
                },
                artifact_id=None,
                target={"name": "gone"},
                verdict={
                    "key": "lenet5|int8|profile|gone",
                    "verdict": "infra_failure",
                    "error": "cannot connect <to> gone & co",
                    "error_kind": "connection",
                    "metrics": [],
                    "budget_violations": [],
                    "notes": [],
                },
            )
            store.finish_run(rid, exit_code=1 if run == 3 else 3, accept=run < 3)
    return db


def test_report_json_and_junit(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "out" / "junit.xml"
    rc, out, err = run_main(capsys, "report", "--store", str(store_path), "--junit", str(junit), "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["run"]["id"] == 4 and len(data["runs"]) == 4
    assert data["counts"] == {"ok": 3, "regression": 1, "infra_failure": 1}
    assert len(data["trends"]["lenet5 on pi5"]["lenet5|int4|profile|pi5"]) == 4
    assert len(data["pareto"]) == 4 and all(p["accuracy"] is not None for p in data["pareto"])

    root = ET.parse(junit).getroot()  # parses with the standard library
    suite = root.find("testsuite")
    assert suite.get("tests") == "5" and suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["lenet5|int4|profile|pi5"].find("failure").get("type") == "regression"
    assert "+20.0%" in cases["lenet5|int4|profile|pi5"].find("failure").get("message")
    assert cases["lenet5|int8|profile|gone"].find("error").get("type") == "infra_failure"
    assert cases["lenet5|int8|profile|local"].find("failure") is None

    rc, out, _ = run_main(capsys, "report", "--store", str(store_path), "--since", "2000-01-01")
    assert rc == 0 and "regression" in out
    rc, _, err = run_main(capsys, "report", "--store", str(tmp_path / "missing.sqlite"))
    assert rc == 2 and "no result store" in err


def test_pareto_front() -> None:
    assert pareto_front([(1, 0.9), (2, 0.95), (3, 0.93), (0.5, 0.8)]) == [(0.5, 0.8), (1, 0.9), (2, 0.95)]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_html_report_renders_in_headless_chromium(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    rc, _, err = run_main(capsys, "report", "--store", str(store_path), "--html", str(page))
    assert rc == 0, err
    text = page.read_text()
    assert "<script" not in text.lower()  # needs no JavaScript at all
    assert "&lt;to&gt; gone &amp; co" in text  # escaped
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'chrome-profile'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Nightly regression report: lab" in dom.stdout
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom.stdout)
    assert len(images) >= 3  # two trend plots (local, pi5) and the Pareto plot
    assert all(len(b) > 2000 for b in images)
    assert "lenet5 on pi5" in dom.stdout and "regression" in dom.stdout
    assert "Uncaught" not in dom.stderr and "SyntaxError" not in dom.stderr
    assert not re.search(r"CONSOLE\(\d+\)\].*error", dom.stderr, re.IGNORECASE)
    shot = tmp_path / "shot.png"
    snap = subprocess.run(
        [
            CHROMIUM,
            *flags,
            f"--user-data-dir={tmp_path / 'chrome-profile2'}",
            f"--screenshot={shot}",
            "--window-size=1400,2400",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert snap.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, snap.stderr[-2000:]
