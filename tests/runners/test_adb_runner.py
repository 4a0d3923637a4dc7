"""AdbRunner against a stand-in ``adb``.

TEST DOUBLE: no Android device (and no real adb server) can run here, so these tests write a
small Python script that plays ``adb``: ``push`` / ``pull`` copy files, ``shell CMD`` runs CMD
with /bin/sh on this machine (paths under ``/sys/`` are redirected to a fake sysfs tree so the
battery can be read), and every invocation's argv is logged for the quoting checks. The device
work dir is a local directory. A stand-in ``benchmark_model`` prints the real output format of
TFLite's tool (REFERENCES.md), including scientific notation, and logs its argv.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from runners.base import RunRequest
from runners.inventory import Target
from tests.runners.models import make_onnx_model, make_tflite_model

WEIRD = "dev dir;$(touch pwned)'\""

FAKE_ADB = """
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
if serial == "missing":
    sys.stderr.write("error: device 'missing' not found\\n")
    sys.exit(1)
cmd, rest = args[0], args[1:]
if cmd in ("push", "pull"):
    src, dst = rest
    if dst.endswith("/") or os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src))
    shutil.copyfile(src, dst)
    print(f"{src}: 1 file pushed")
elif cmd == "shell":
    command = " ".join(rest).replace("/sys/", os.environ["FAKE_ADB_SYSROOT"] + "/sys/")
    sys.exit(subprocess.call(["/bin/sh", "-c", command]))
elif cmd == "get-state":
    print("device")
else:
    sys.exit(f"fake adb: unsupported command {cmd}")
"""

FAKE_BM = """
import json, os, sys, time
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
with open(os.environ["FAKE_BM_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "affinity": sorted(os.sched_getaffinity(0))}) + "\\n")
if not os.path.isfile(flags["graph"]):
    print("ERROR: Could not open '%s'." % flags["graph"]); sys.exit(1)
if float(flags.get("min_secs", 1)) > 100:
    time.sleep(600)
n = int(flags["num_runs"])
print("INFO: STARTING!")
print("INFO: Num runs: [%d]" % n)
print("INFO: Graph: [%s]" % flags["graph"])
print("INFO: #threads used for CPU inference: [%s]" % flags["num_threads"])
print("INFO: Loaded model %s" % flags["graph"])
print("INFO: The input model file size (MB): 0.012")
print("INFO: Initialized session in 87.639ms.")
print("INFO: Running benchmark for at least %s iterations and at least 0.5 seconds but terminate if exceeding 150 seconds." % flags["warmup_runs"])
print("INFO: count=%s first=106436 curr=106102 min=105900 max=106436 avg=106065 std=212 p5=105912 median=106050 p95=106400" % flags["warmup_runs"])
print("INFO: Running benchmark for at least %d iterations and at least 1 seconds but terminate if exceeding 150 seconds." % n)
print("INFO: count=%d first=106022 curr=105780 min=105416 max=106528 avg=105784 std=260 p5=105485 median=105718 p95=1.06281e+05" % n)
print("INFO: Inference timings in us: Init: 87639, First inference: 106436, Warmup (avg): 106065, Inference (avg): 105784")
print("INFO: Memory footprint delta from the start of the tool (MB): init=14.4414 overall=14.8164")
print("INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383")
"""


class FakeDevice:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp
        self.adb = tmp / "adb"
        self.adb.write_text(f"#!{sys.executable} -S\n{textwrap.dedent(FAKE_ADB)}")  # -S: fast start
        self.adb.chmod(0o755)
        self.bm = tmp / "benchmark_model"
        self.bm.write_text(f"#!{sys.executable} -S\n{textwrap.dedent(FAKE_BM)}")
        self.bm.chmod(0o755)
        self.adb_log = tmp / "adb.log"
        self.bm_log = tmp / "bm.log"
        self.sysroot = tmp / "sysroot"
        self.workdir = tmp / WEIRD / "edge-compress"

    def battery(
        self, current_ua: int = -300_000, voltage_uv: int = 3_900_000, status: str = "Discharging"
    ) -> None:
        d = self.sysroot / "sys/class/power_supply/battery"
        d.mkdir(parents=True, exist_ok=True)
        (d / "current_now").write_text(f"{current_ua}\n")
        (d / "voltage_now").write_text(f"{voltage_uv}\n")
        (d / "status").write_text(f"{status}\n")

    def target(self, **kw: Any) -> Target:
        entry: dict[str, Any] = {
            "name": "phone1",
            "transport": "adb",
            "serial": "emulator-5554",
            "adb_path": str(self.adb),
            "workdir": str(self.workdir),
            "python": "no-python-on-this-phone",
            "profile": "phone",
            "benchmark_model": str(self.bm),
        }
        entry.update(kw)
        return Target(**entry)

    def adb_calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.adb_log.read_text().splitlines()]

    def bm_calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.bm_log.read_text().splitlines()]


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    dev = FakeDevice(tmp_path)
    monkeypatch.setenv("FAKE_ADB_LOG", str(dev.adb_log))
    monkeypatch.setenv("FAKE_BM_LOG", str(dev.bm_log))
    monkeypatch.setenv("FAKE_ADB_SYSROOT", str(dev.sysroot))
    return dev


@pytest.fixture(scope="module")
def tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    return make_tflite_model(tmp_path_factory.mktemp("m") / f"{WEIRD}.tflite", w)


def runner(target: Target) -> Any:
    from runners.adb import AdbRunner

    return AdbRunner(target)


def test_benchmark_model_mode(device: FakeDevice, tflite: Path) -> None:
    device.battery()
    r = runner(device.target())
    m = r.run(RunRequest(str(tflite), threads=2, core_mask="0x1", warmup=3, min_count=40, min_duration_s=0.5))
    assert m.ok, m.error
    assert m.latency_ms == [] and m.runtime == "benchmark_model"
    s = m.stats
    assert s is not None and s.count == 40
    assert (s.mean_ms, s.median_ms, s.min_ms, s.max_ms, s.std_ms) == pytest.approx(
        (105.784, 105.718, 105.416, 106.528, 0.26)
    )
    assert m.first_inference_ms == pytest.approx(106.436) and m.load_ms == pytest.approx(87.639)
    assert m.peak_rss_bytes == int(93.2383 * 2**20)
    # battery: 0.3 A x 3.9 V, measured (two readings), per inference = W x mean latency
    assert m.energy is not None and m.energy.measured and m.energy.avg_watts == pytest.approx(1.17)
    assert m.energy.joules_per_inference == pytest.approx(1.17 * 0.105784)

    (bm,) = device.bm_calls()
    model_on_device = f"{device.workdir}/blobs/"
    assert bm["affinity"] == [0]  # taskset applied the mask
    flags = bm["argv"]
    assert flags[0].startswith(f"--graph={model_on_device}") and flags[0].endswith(f"/{WEIRD}.tflite")
    assert flags[1:] == ["--num_threads=2", "--warmup_runs=3", "--num_runs=40", "--min_secs=0.5"]
    calls = device.adb_calls()
    assert all(c[:2] == ["-s", "emulator-5554"] for c in calls)
    shells = [c[3] for c in calls if c[2] == "shell"]
    (run_cmd,) = [c for c in shells if "--graph=" in c]
    words = shlex.split(run_cmd)
    i = words.index("taskset")
    assert words[i + 1] == "1" and words[i + 2].endswith("/benchmark_model") and words[i + 3] == flags[0]
    assert not list(device.root.rglob("pwned")) and not list(Path.cwd().glob("pwned"))

    again = r.run(RunRequest(str(tflite), min_count=5, min_duration_s=0.0))
    assert again.ok and again.pushed_bytes == 0
    assert "taskset" not in [
        w for c in device.adb_calls()[len(calls) :] if c[2] == "shell" for w in shlex.split(c[3])
    ]
    assert list((device.workdir / "runs").iterdir()) == []


def test_no_battery_gives_a_labelled_estimate(device: FakeDevice, tflite: Path) -> None:
    m = runner(device.target()).run(RunRequest(str(tflite), min_count=5))
    assert m.ok and m.energy is not None and m.energy.measured is False
    assert m.energy.source.startswith("estimate") and "(phone)" in m.energy.source


def test_agent_mode_when_the_device_has_python(device: FakeDevice, tmp_path: Path) -> None:
    model = make_onnx_model(tmp_path / "conv.onnx", channels=4, size=8, layers=1)
    r = runner(device.target(python=sys.executable, benchmark_model=None))
    m = r.run(RunRequest(str(model), min_count=10, min_duration_s=0.0, warmup=1))
    assert m.ok, m.error
    assert m.extra["mode"] == "agent" and len(m.latency_ms) == m.stats.count >= 10
    assert m.runtime == "onnxruntime"


def test_onnx_without_python_is_usage(device: FakeDevice, tmp_path: Path) -> None:
    model = make_onnx_model(tmp_path / "conv.onnx", channels=4, size=8, layers=1)
    m = runner(device.target()).run(RunRequest(str(model)))
    assert m.error_kind == "usage" and ".tflite models only" in m.error


def test_missing_device_is_a_connection_error(device: FakeDevice, tflite: Path) -> None:
    m = runner(device.target(serial="missing")).run(RunRequest(str(tflite)))
    assert m.ok is False and m.error_kind == "connection" and "not reachable" in m.error


def test_timeout_kills_benchmark_model(device: FakeDevice, tflite: Path) -> None:
    m = runner(device.target()).run(RunRequest(str(tflite), min_duration_s=1000, timeout_s=2))
    assert m.error_kind == "timeout" and "killed" in m.error
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _bm_running(device):
        time.sleep(0.1)
    assert not _bm_running(device)


def _bm_running(device: FakeDevice) -> bool:
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "benchmark_model" in cmd and str(device.workdir) in cmd and "--graph" in cmd:
            return True
    return False
