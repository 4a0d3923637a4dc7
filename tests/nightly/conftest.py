"""Shared helpers of the nightly tests: small real ONNX models and suite files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.runners.models import make_onnx_model

# short, duration-bound measurements: the whole nightly test set runs in well under 3 minutes
QUICK_MEASURE = {"min_count": 20, "min_duration_s": 0.1, "warmup": 2, "cooldown_s": 0.1, "timeout_s": 120}


def small_model(path: Path, layers: int = 2, **kw: Any) -> Path:
    """A conv stack of about 0.3 ms per layer on one core; more layers = a known extra cost."""
    return make_onnx_model(path, channels=16, size=24, layers=layers, **kw)


def write_suite(path: Path, **fields: Any) -> Path:
    data: dict[str, Any] = {
        "name": "t",
        "models": ["model.onnx"],
        "compile": [{"name": "asis", "method": "none"}],
        "targets": ["local"],
        "measure": dict(QUICK_MEASURE),
        "interleave": {"rounds": 4, "max_rounds": 4, "block_rounds": 4, "max_block_rounds": 4},
    }
    data.update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``edge-compress`` in a subprocess (its real exit code and streams)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "edge_compress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    small_model(tmp_path / "model.onnx")
    return tmp_path


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    from edge_compress.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err
