"""The device-side agent, run as on a target: ``python agent.py request.json`` -> one JSON line.

Most tests run the real agent in a subprocess from the staged bundle (agent.py, runtimes.py,
energy.py, throttle.py side by side); the throttle re-measure logic and the statistics are
tested in-process with a fake clock and a scripted detector.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runners.agent import host
from tests.runners.models import make_linear_onnx, make_onnx_model, make_tflite_model

POWER = {"name": "host", "idle_w": 10.0, "active_w": 35.0, "cores_total": 2}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return host.stage_bundle(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("m") / "conv.onnx", channels=8, size=16, layers=2)


def run_agent(
    bundle: Path,
    tmp: Path,
    req: dict[str, Any] | None,
    *,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    args: list[str] | None = None,
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    argv = [python, str(bundle / "agent.py")]
    if req is not None:
        path = tmp / "request.json"
        path.write_text(json.dumps(req))
        argv.append(str(path))
    argv += args or []
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (
        f"stdout must be exactly one JSON line, got {proc.stdout!r} / {proc.stderr[-2000:]}"
    )
    return json.loads(lines[0]), proc


def quick(model: Path, **kw: Any) -> dict[str, Any]:
    req = {"model": str(model), "min_count": 30, "min_duration_s": 0.05, "warmup": 2, "cooldown_s": 0.05}
    req.update(kw)
    return req


def test_measures_onnx_with_consistent_stats(bundle_dir: Path, onnx_model: Path, tmp_path: Path) -> None:
    res, proc = run_agent(bundle_dir, tmp_path, quick(onnx_model, power=POWER, seed=3))
    assert proc.returncode == 0 and res["ok"], res
    lat = np.array(res["latency_ms"])
    s = res["stats"]
    assert s["count"] == len(lat) >= 30
    assert s["median_ms"] == pytest.approx(np.median(lat))
    assert s["p90_ms"] == pytest.approx(np.percentile(lat, 90))
    assert s["p99_ms"] == pytest.approx(np.percentile(lat, 99))
    assert s["mean_ms"] == pytest.approx(lat.mean()) and s["std_ms"] == pytest.approx(lat.std(ddof=1))
    assert (s["min_ms"], s["max_ms"]) == (lat.min(), lat.max())
    lo, hi = s["median_ci95_ms"]
    assert lo <= s["median_ms"] <= hi
    assert res["runtime"] == "onnxruntime" and res["runtime_version"]
    assert res["load_ms"] > 0 and res["first_inference_ms"] > 0 and res["peak_rss_bytes"] > 10e6
    assert res["machine"] and res["threads"] == 1 and res["cpu_affinity"]
    # no sensor on this machine: the estimate from the power model, labelled as such
    e = res["energy"]
    assert e["measured"] is False and e["source"].startswith("estimate") and e["joules_per_inference"] > 0
    assert res["extra"]["inputs"][0]["dtype"] == "float32"


def test_npz_inputs_and_accuracy(bundle_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    model = make_linear_onnx(tmp_path / "lin.onnx", w)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = (x @ w).argmax(1)
    y[:10] = (y[:10] + 1) % 3  # exactly 10 wrong labels
    np.savez(tmp_path / "acc.npz", x=x, y=y)
    np.savez(tmp_path / "in.npz", x=x[:4])
    res, _ = run_agent(
        bundle_dir,
        tmp_path,
        quick(model, inputs_npz=str(tmp_path / "in.npz"), accuracy_npz=str(tmp_path / "acc.npz")),
    )
    assert res["ok"], res
    assert res["accuracy"] == pytest.approx(30 / 40) and res["extra"]["accuracy_samples"] == 40
    assert res["extra"]["inputs_source"] == "npz"


def test_npz_with_wrong_names_is_a_usage_error(bundle_dir: Path, onnx_model: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", a=np.zeros(1), b=np.zeros(1))
    res, proc = run_agent(bundle_dir, tmp_path, quick(onnx_model, inputs_npz=str(tmp_path / "in.npz")))
    assert proc.returncode == 1 and not res["ok"] and res["error_kind"] == "usage"
    assert "model's inputs are x" in res["error"]


def test_corrupt_model_is_a_json_failure(bundle_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x01this is not a protobuf" * 10)
    res, proc = run_agent(bundle_dir, tmp_path, quick(bad))
    assert proc.returncode == 1
    assert res["ok"] is False and res["error_kind"] == "agent"
    assert "could not load the model broken.onnx" in res["error"] and "\n" not in res["error"]
    assert "Traceback" not in proc.stdout


def test_missing_numpy_is_a_json_failure(bundle_dir: Path, onnx_model: Path, tmp_path: Path) -> None:
    bare = "/usr/bin/python3"
    if (
        not os.access(bare, os.X_OK)
        or subprocess.run([bare, "-c", "import numpy"], capture_output=True).returncode == 0
    ):
        pytest.skip("needs a python3 without numpy")
    res, _ = run_agent(bundle_dir, tmp_path, quick(onnx_model), python=bare)
    assert res["ok"] is False and res["error_kind"] == "agent" and "numpy is not installed" in res["error"]


def test_bad_core_mask_is_usage(bundle_dir: Path, onnx_model: Path, tmp_path: Path) -> None:
    res, _ = run_agent(bundle_dir, tmp_path, quick(onnx_model, core_mask="1000000"))
    assert res["error_kind"] == "usage" and "selects no CPU available" in res["error"]


def fake_sysfs(root: Path, watts: float = 2.5) -> Path:
    hw = root / "sys/class/hwmon/hwmon3"
    hw.mkdir(parents=True)
    (hw / "name").write_text("ina226\n")
    (hw / "power1_input").write_text(f"{int(watts * 1e6)}\n")
    for cpu, khz in ((0, 1800000), (1, 1200000)):
        d = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{khz}\n")
    tz = root / "sys/class/thermal/thermal_zone0"
    tz.mkdir(parents=True)
    (tz / "temp").write_text("51234\n")
    (tz / "type").write_text("cpu-thermal\n")
    return root


def test_meter_from_fake_sysfs_and_core_mask(bundle_dir: Path, onnx_model: Path, tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "fs")
    res, _ = run_agent(
        bundle_dir,
        tmp_path,
        quick(onnx_model, power=POWER, core_mask="1", min_duration_s=0.2),
        env={"EDGE_COMPRESS_SYSFS_ROOT": str(root)},
    )
    assert res["ok"], res
    e = res["energy"]
    assert e["measured"] is True and e["source"].startswith("hwmon:ina226")
    assert e["avg_watts"] == pytest.approx(2.5, rel=0.01)
    assert res["cpu_affinity"] == [0]
    assert res["cpu_freq_mhz"] == [1800.0, 1800.0]  # only cpu0 is in the affinity set
    assert res["temperature_c"] == [pytest.approx(51.234)] * 2
    assert res["extra"]["thermal_c_before"] == {"thermal_zone0:cpu-thermal": pytest.approx(51.234)}


def test_energy_disabled_and_no_power_model(bundle_dir: Path, onnx_model: Path, tmp_path: Path) -> None:
    res, _ = run_agent(bundle_dir, tmp_path, quick(onnx_model, energy=False, power=POWER))
    assert res["ok"] and res["energy"] is None
    res, _ = run_agent(bundle_dir, tmp_path, quick(onnx_model))
    assert res["energy"] is None and "no power model" in res["extra"]["energy_note"]


def test_probe_lists_runtimes_and_meters(bundle_dir: Path, tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "fs")
    res, _ = run_agent(
        bundle_dir, tmp_path, None, args=["--probe"], env={"EDGE_COMPRESS_SYSFS_ROOT": str(root)}
    )
    assert res["ok"] and res["runtimes"]["onnxruntime"] and res["runtimes"]["numpy"]
    assert [m["source"] for m in res["meters"]] == ["hwmon:ina226(power1)"]


@pytest.mark.parametrize("int8", [False, True])
def test_tflite_random_and_quantized_inputs(bundle_dir: Path, tmp_path: Path, int8: bool) -> None:
    pytest.importorskip("ai_edge_litert")
    rng = np.random.default_rng(1)
    w = rng.uniform(-1, 1, (8, 4)).astype(np.float32)
    model = make_tflite_model(tmp_path / "fc.tflite", w, int8=int8)
    x = rng.uniform(-1, 1, (30, 8)).astype(np.float32)
    np.savez(tmp_path / "acc.npz", x=x, y=(x @ w).argmax(1))
    res, _ = run_agent(bundle_dir, tmp_path, quick(model, accuracy_npz=str(tmp_path / "acc.npz")))
    assert res["ok"], res
    assert res["runtime"] == "litert"
    assert res["extra"]["inputs"][0]["dtype"] == ("int8" if int8 else "float32")
    assert res["accuracy"] >= (0.8 if int8 else 1.0)


# ---------------------------------------------------------------------------------------------
# in-process: throttle handling and statistics


@pytest.fixture(scope="module")
def agent_mod(bundle_dir: Path) -> Any:
    sys.path.insert(0, str(bundle_dir))
    try:
        yield importlib.import_module("agent")
    finally:
        sys.path.remove(str(bundle_dir))


class FakeDevice:
    """``once()`` advances a fake clock by a scripted latency (ms): fast, then throttled."""

    def __init__(self, script: Any) -> None:
        self.t = 0.0
        self.n = 0
        self.script = script

    def clock(self) -> float:
        return self.t

    def once(self) -> None:
        self.t += self.script(self.n) / 1e3
        self.n += 1


def test_throttle_triggers_cooldown_and_one_remeasure(agent_mod: Any) -> None:
    from throttle import IMMDetector

    state = {"cool": False}
    jitter = [-0.04, 0.0, 0.02, -0.02, 0.04, 0.0, 0.01]  # deterministic, ~2.5% noise

    def script(n: int) -> float:
        return (1.0 if state["cool"] or n < 150 else 2.0) + jitter[n % len(jitter)]

    dev = FakeDevice(script)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        state["cool"] = True

    cfg = agent_mod.LoopConfig(min_count=400, min_duration_s=0.0, max_count=10_000, cooldown_s=7.0)
    out = agent_mod.measure(dev.once, cfg, detector_factory=IMMDetector, sleep=sleep, clock=dev.clock)
    assert slept == [7.0]
    assert out["throttled"] is True and out["remeasured"] is True
    assert out["throttled_samples"] > 0
    assert 150 <= out["extra"]["throttle_onset_sample"] <= 160
    assert out["extra"]["still_throttled"] is False
    assert len(out["samples"]) == 400 and max(out["samples"]) < 1.5  # the re-measured, cool pass
    assert out["extra"]["discarded_samples"] < 400  # the first pass stopped early


def test_no_throttle_no_remeasure(agent_mod: Any) -> None:
    from throttle import IMMDetector

    jitter = [-0.04, 0.0, 0.02, -0.02, 0.04, 0.0, 0.01]
    dev = FakeDevice(lambda n: 1.0 + jitter[n % len(jitter)])
    cfg = agent_mod.LoopConfig(min_count=300, min_duration_s=0.0, max_count=10_000, cooldown_s=1.0)
    out = agent_mod.measure(dev.once, cfg, detector_factory=IMMDetector, sleep=pytest.fail, clock=dev.clock)
    assert (out["throttled"], out["remeasured"], out["throttled_samples"]) == (False, False, 0)


def test_loop_bounds(agent_mod: Any) -> None:
    dev = FakeDevice(lambda n: 10.0)  # 10 ms per inference
    cfg = agent_mod.LoopConfig(min_count=5, min_duration_s=1.0, max_count=1000, cooldown_s=0)
    assert len(agent_mod.timed_loop(dev.once, cfg, clock=dev.clock)) == 100  # duration-bound
    cfg = agent_mod.LoopConfig(min_count=50, min_duration_s=0.1, max_count=1000, cooldown_s=0)
    assert len(agent_mod.timed_loop(dev.once, cfg, clock=dev.clock)) == 50  # count-bound
    cfg = agent_mod.LoopConfig(min_count=5, min_duration_s=100.0, max_count=20, cooldown_s=0)
    assert len(agent_mod.timed_loop(dev.once, cfg, clock=dev.clock)) == 20  # capped


def test_bootstrap_ci_is_deterministic_and_covers(agent_mod: Any) -> None:
    rng = np.random.default_rng(5)
    a = rng.lognormal(0, 0.3, 2000)
    ci1 = agent_mod.bootstrap_median_ci(a, seed=0)
    assert ci1 == agent_mod.bootstrap_median_ci(a, seed=0)
    assert ci1[0] < np.median(a) < ci1[1] and ci1[1] - ci1[0] < 0.1
    s = agent_mod.summarize(list(a), seed=0)
    assert s["count"] == 2000 and tuple(s["median_ci95_ms"]) == ci1


@pytest.mark.parametrize("n", [301, 2000])
def test_bootstrap_ci_matches_brute_force_resampling(agent_mod: Any, n: int) -> None:
    """The order-statistic draw has the distribution of resampling: its interval matches one from
    20,000 brute-force resampled medians (odd and even n, skewed data with ties)."""
    rng = np.random.default_rng(11)
    a = np.round(rng.lognormal(0, 0.4, n), 2)  # rounded: ties, as timer resolution makes them
    brute = np.median(a[rng.integers(0, n, size=(20000, n))], axis=1)
    lo, hi = np.percentile(brute, [2.5, 97.5])
    ci = agent_mod.bootstrap_median_ci(a, seed=1, resamples=20000)
    width = hi - lo
    assert abs(ci[0] - lo) < 0.08 * width and abs(ci[1] - hi) < 0.08 * width, (ci, (lo, hi))
    # and its bootstrap distribution, not just the interval: same mean and spread
    u = np.random.default_rng(2)
    x = np.sort(a)
    k = (n + 1) // 2 if n % 2 else n // 2
    u1 = u.beta(k, n - k + 1, 20000)
    if n % 2:
        fast = x[np.ceil(u1 * n).astype(int) - 1]
    else:
        u2 = u1 + (1 - u1) * (1 - u.random(20000) ** (1 / (n - k)))
        fast = 0.5 * (x[np.ceil(u1 * n).astype(int) - 1] + x[np.ceil(u2 * n).astype(int) - 1])
    assert abs(fast.mean() - brute.mean()) < 0.05 * brute.std()
    assert fast.std() == pytest.approx(brute.std(), rel=0.05)


def test_serve_forks_a_fresh_run_per_line_and_cleans_up(
    bundle_dir: Path, onnx_model: Path, tmp_path: Path
) -> None:
    """``agent.py --serve``: a ready line, then one reply per run dir (the run's JSON document and
    stderr, from a forked child that is not the serving process), the run dir removed; a bad line
    is answered with an error and the agent keeps serving; end of input ends it."""
    proc = subprocess.Popen(
        [sys.executable, str(bundle_dir / "agent.py"), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        hello = json.loads(proc.stdout.readline())
        assert hello["ready"] is True and hello["pid"] == proc.pid
        # numpy and the agent's modules at start; a runtime only once a model of its format comes
        assert {"numpy", "runtimes"} <= set(hello["preloaded"])
        assert not {"onnxruntime", "ai_edge_litert", "tflite_runtime"} & set(hello["preloaded"])
        replies = []
        for i, req in enumerate([quick(onnx_model, seed=1), {"model": str(tmp_path / "missing.onnx")}]):
            run = tmp_path / f"run{i}"
            run.mkdir()
            (run / "request.json").write_text(json.dumps(req))
            proc.stdin.write(json.dumps({"dir": str(run)}) + "\n")
            proc.stdin.flush()
            replies.append(json.loads(proc.stdout.readline()))
            assert not run.exists()
        ok, missing = replies
        assert ok["rc"] == 0 and ok["pid"] not in (proc.pid, missing["pid"])
        assert "onnxruntime" in ok["preloaded"] and "ai_edge_litert" not in ok["preloaded"]
        res = json.loads(ok["stdout"])
        assert res["ok"] and res["stats"]["count"] >= 30 and res["peak_rss_bytes"] > 10e6
        # the imports were done before the fork: the run did not import numpy itself
        assert res["extra"]["phases_s"]["import_numpy_s"] < res["extra"]["phases_s"]["measure_s"]
        bad = json.loads(missing["stdout"])
        assert missing["rc"] == 1 and bad["ok"] is False and bad["error_kind"] == "usage"
        proc.stdin.write(json.dumps({"preload": ".tflite"}) + "\n")
        proc.stdin.flush()
        assert set(json.loads(proc.stdout.readline())["preloaded"]) >= {"numpy", "onnxruntime"}
        proc.stdin.write("not json\n")
        proc.stdin.flush()
        assert "bad job line" in json.loads(proc.stdout.readline())["error"]
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
