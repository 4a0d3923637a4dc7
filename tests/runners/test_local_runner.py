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


def test_host_reference_is_timed_between_calls_and_reported(model: Path) -> None:
    m = LocalRunner().run(quick(model, min_count=60, reference_every=10))
    assert m.ok, m.error
    ref = m.extra["host_reference"]
    n = len(m.latency_ms)
    assert ref["every"] == 10 and ref["count"] == (n - 1) // 10  # never after the last call
    assert ref["median_ms"] > 0 and "matmul" in ref["workload"]
    assert ref["latency_median_over_reference"] == pytest.approx(np.median(m.latency_ms) / ref["median_ms"])
    # off by default: nothing is added to the loop
    plain = LocalRunner().run(quick(model))
    assert plain.ok and "host_reference" not in plain.extra


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"reference_every": -1}, "reference_every"),
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


def test_timeout_kills_the_run_and_the_warm_agent_keeps_serving(model: Path) -> None:
    import psutil

    r = LocalRunner("warm-timeout")
    first = r.run(quick(model))
    assert first.ok and first.extra["agent_mode"] == "warm", first.error
    m = r.run(quick(model, min_duration_s=60, timeout_s=2))
    assert m.error_kind == "timeout" and not m.ok
    again = r.run(quick(model))
    assert again.ok and again.extra["warm_agent_pid"] == first.extra["warm_agent_pid"], again.error
    agent = psutil.Process(first.extra["warm_agent_pid"])
    assert [c for c in agent.children() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []


def test_warm_agent_runs_each_measurement_in_a_fresh_child(model: Path) -> None:
    """Runs go through one warm agent per target (a new forked child each time); an agent that
    died is replaced at the next run; ``warm_agent=False`` starts one process per run."""
    import psutil

    r = LocalRunner("warm-test")
    a, b = r.run(quick(model)), r.run(quick(model))
    assert a.ok and b.ok, (a.error, b.error)
    assert a.extra["agent_mode"] == b.extra["agent_mode"] == "warm"
    assert a.extra["warm_agent_pid"] == b.extra["warm_agent_pid"]
    assert len({a.extra["run_pid"], b.extra["run_pid"], a.extra["warm_agent_pid"]}) == 3
    assert a.peak_rss_bytes and a.peak_rss_bytes > 10e6
    agent = psutil.Process(a.extra["warm_agent_pid"])
    agent.kill()
    agent.wait(10)
    c = r.run(quick(model))  # the dead agent's run falls back to one process, the next is warm again
    d = r.run(quick(model))
    assert c.ok and d.ok, (c.error, d.error)
    assert d.extra["agent_mode"] == "warm" and d.extra["warm_agent_pid"] != a.extra["warm_agent_pid"]
    cold = LocalRunner("cold-test", warm_agent=False).run(quick(model))
    assert cold.ok and cold.extra["agent_mode"] == "cold", cold.error


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


def test_paired_blocks_alternate_in_one_process_and_see_the_heavier_model(
    model: Path, tmp_path: Path
) -> None:
    """Paired A/B: one agent loads both models and times A B / B A blocks back to back."""
    heavy = make_onnx_model(tmp_path / "heavy.onnx", channels=8, size=16, layers=16)  # 8x the conv work
    m = LocalRunner().run(
        quick(
            model,
            min_duration_s=0.05,
            paired_model_path=str(heavy),
            paired_rounds=4,
            paired_first_round=2,
            paired_warmup=True,
            detect_throttle=False,
        )
    )
    assert m.ok, m.error
    blocks = m.extra["paired_blocks"]
    assert [(b["role"], b["round"]) for b in blocks] == [
        ("warmup", -1),
        ("baseline", 2),
        ("candidate", 2),
        ("candidate", 3),
        ("baseline", 3),
        ("baseline", 4),
        ("candidate", 4),
        ("candidate", 5),
        ("baseline", 5),
    ]
    for b in blocks:
        r = Measurement.from_json({**b["result"], "target": "local", "model_path": "x"})
        assert r.ok and r.stats is not None and r.stats.count == len(r.latency_ms) >= 20
        assert r.peak_rss_bytes is None  # one process holds both models: not a per-model figure
        assert r.energy is not None and not r.energy.measured
    med = {(b["role"], b["round"]): b["result"]["stats"]["median_ms"] for b in blocks}
    slower = [med[("candidate", r)] > med[("baseline", r)] for r in range(2, 6)]
    assert sum(slower) >= 3, med


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"paired_model_path": "/nonexistent/b.onnx", "paired_rounds": 2}, "paired model file"),
        ({"paired_rounds": 0}, "at least one round"),
        ({"paired_rounds": 2, "paired_suffix": ".tflite"}, "same format"),
    ],
)
def test_paired_usage_errors(model: Path, tmp_path: Path, over: dict, needle: str) -> None:
    over = dict(over)
    suffix = over.pop("paired_suffix", ".onnx")
    if "paired_model_path" not in over:
        other = tmp_path / f"b{suffix}"
        other.write_bytes(model.read_bytes())
        over["paired_model_path"] = str(other)
    m = LocalRunner().run(quick(model, **over))
    assert not m.ok and m.error_kind == "usage" and needle in m.error
