"""LocalRunner (the agent in a subprocess here) and the per-device lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runners.agent import host
from runners.base import Measurement, RunRequest
from runners.local import LocalRunner
from tests.runners.models import make_onnx_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("m") / "conv.onnx", channels=8, size=16, layers=2)


def quick(model: Path, **kw: object) -> RunRequest:
    base: dict = {"min_count": 20, "min_duration_s": 0.05, "warmup": 2, "cooldown_s": 0.05}
    base.update(kw)
    return RunRequest(str(model), **base)


def test_local_run_matches_samples(model: Path) -> None:
    m = LocalRunner().run(quick(model, label="cell-1"))
    assert m.ok, m.error
    assert m.target == "local" and m.model_path == str(model) and m.pushed_bytes == 0
    lat = np.asarray(m.latency_ms)
    assert (
        m.stats is not None
        and m.stats.count == len(lat)
        and m.stats.median_ms == pytest.approx(np.median(lat))
    )
    assert m.energy is not None and not m.energy.measured and "(host)" in m.energy.source
    assert m.wall_s is not None and m.wall_s > 0
    assert Measurement.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"model_path": "/nonexistent/m.onnx"}, "does not exist"),
        ({"core_mask": "xyz"}, "not hexadecimal"),
        ({"inputs_npz": "/nonexistent.npz"}, "inputs file"),
        ({"profile": "no-such-profile"}, "unknown profile"),
    ],
)
def test_usage_failures_are_data(model: Path, kw: dict, needle: str) -> None:
    req = quick(model, **{k: v for k, v in kw.items() if k != "model_path"})
    if "model_path" in kw:
        req = quick(Path(kw["model_path"]))
    m = LocalRunner().run(req)
    assert m.ok is False and m.error_kind == "usage" and needle in m.error


def test_timeout(model: Path) -> None:
    m = LocalRunner().run(quick(model, min_duration_s=60, timeout_s=2))
    assert m.error_kind == "timeout" and not m.ok and m.latency_ms == []


def test_device_lock_serializes_threads(tmp_path: Path) -> None:
    order: list[str] = []

    def hold(name: str) -> None:
        with host.device_lock("dev-a", 10, cache_dir=tmp_path):
            order.append(f"{name}+")
            time.sleep(0.2)
            order.append(f"{name}-")

    threads = [threading.Thread(target=hold, args=(n,)) for n in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (["x+", "x-", "y+", "y-"], ["y+", "y-", "x+", "x-"])
    with host.device_lock("dev-a", 1, cache_dir=tmp_path), host.device_lock("dev-b", 1, cache_dir=tmp_path):
        pass  # different devices do not block each other


def test_device_lock_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from runners.agent import host\n"
        "with host.device_lock('dev-c', 5, cache_dir=Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(host.DeviceBusy, match="another process"):
            with host.device_lock("dev-c", 0.3, cache_dir=tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with host.device_lock("dev-c", 2, cache_dir=tmp_path):
        pass  # released when the holder died
