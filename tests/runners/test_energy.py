"""Tests of runners/energy.py against real-format sysfs trees built in tmp_path."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runners import energy
from runners.energy import (
    AndroidBatteryReader,
    Counter,
    CounterMeter,
    MeterError,
    MeterResult,
    SampledMeter,
    TegrastatsMeter,
    discover_meters,
    estimate_energy,
    parse_pmic_read_adc,
    parse_tegrastats_line,
    probe_android,
    probe_hwmon,
    probe_meters,
    probe_pi5,
    probe_rapl,
    run_command,
)

# ------------------------------------------------------------------------------------------
# helpers


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def put(path: Path, value: object) -> None:
    """Write a sysfs attribute atomically (a polling thread never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def rapl_zone(root: Path, index: str, name: str, energy_uj: int, max_uj: int = 262143328850) -> Path:
    zone = root / f"sys/class/powercap/intel-rapl:{index}"
    put(zone / "name", name)
    put(zone / "energy_uj", energy_uj)
    put(zone / "max_energy_range_uj", max_uj)
    put(zone / "enabled", 1)
    return zone


def hwmon(root: Path, index: int, name: str, files: dict[str, object]) -> Path:
    d = root / f"sys/class/hwmon/hwmon{index}"
    put(d / "name", name)
    for key, value in files.items():
        put(d / key, value)
    return d


def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Wait for a background thread to make progress (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + 10
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def emulate_unprivileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores file modes: make reads of mode-000 files fail as they do for a normal user."""
    real = energy.read_sysfs

    def strict(path: str | Path) -> str:
        if os.stat(path).st_mode & 0o444 == 0:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(energy, "read_sysfs", strict)


# ------------------------------------------------------------------------------------------
# MeterResult and estimate


def test_meter_result_avg_watts() -> None:
    assert MeterResult(12.0, 4.0, "x", True).avg_watts == 3.0
    assert MeterResult(1.0, 0.0, "x", True).avg_watts == 0.0


def test_estimate_energy_power_model() -> None:
    r = estimate_energy(busy_s=4.0, wall_s=10.0, idle_w=2.0, active_w=6.0, cores_used=2, cores_total=4)
    # idle 2 W x 10 s + (6 - 2) W x 4 s x 2/4 cores = 20 + 8
    assert r.joules == pytest.approx(28.0)
    assert r.seconds == 10.0
    assert r.avg_watts == pytest.approx(2.8)
    assert r.measured is False
    assert r.source == "estimate:profile power model"
    full = estimate_energy(busy_s=10.0, wall_s=10.0, idle_w=2.0, active_w=6.0)
    assert full.joules == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"busy_s": 11.0}, "cannot exceed wall_s"),
        ({"active_w": 1.0}, "must be at least idle_w"),
        ({"cores_used": 5}, "between 1 and cores_total"),
        ({"wall_s": -1.0}, "non-negative"),
    ],
)
def test_estimate_energy_rejects_bad_inputs(kwargs: dict[str, float], needle: str) -> None:
    args = {"busy_s": 4.0, "wall_s": 10.0, "idle_w": 2.0, "active_w": 6.0} | kwargs
    cores_used = int(args.pop("cores_used", 1))
    with pytest.raises(ValueError, match=needle):
        estimate_energy(**args, cores_used=cores_used, cores_total=4)


# ------------------------------------------------------------------------------------------
# RAPL


def test_rapl_counter_difference(tmp_path: Path) -> None:
    zone = rapl_zone(tmp_path, "0", "package-0", 1_000_000)
    rapl_zone(tmp_path, "0:0", "core", 500_000)  # a subzone: part of package-0, not a meter
    clock = FakeClock(100.0)
    probe = probe_rapl(tmp_path, clock=clock)
    assert [m.source for m in probe.meters] == ["rapl:package-0"]
    meter = probe.meters[0]
    meter.start()
    put(zone / "energy_uj", 3_500_000)
    clock.t = 102.0
    r = meter.stop()
    assert r.joules == pytest.approx(2.5)
    assert r.seconds == pytest.approx(2.0)
    assert r.avg_watts == pytest.approx(1.25)
    assert (r.source, r.measured, r.note) == ("rapl:package-0", True, "")


def test_rapl_single_wrap_adds_max_range(tmp_path: Path) -> None:
    zone = rapl_zone(tmp_path, "0", "package-0", 262143000000)
    meter = probe_rapl(tmp_path, clock=FakeClock()).meters[0]
    meter.start()
    put(zone / "energy_uj", 1_000_000)  # wrapped past 262143328850
    r = meter.stop()
    assert r.joules == pytest.approx((262143328850 - 262143000000 + 1_000_000) / 1e6)
    assert r.note == "counter wrapped 1x"


WRAP_SEQUENCE = [900_000, 200_000, 700_000, 100_000, 600_000, 50_000, 150_000]
# deltas with a 1 J range: 300k (wrap) + 500k + 400k (wrap) + 500k + 450k (wrap) + 100k = 2.25 J
WRAP_TOTAL_J = 2.25


def test_counter_meter_counts_multiple_wraps_with_manual_polls(tmp_path: Path) -> None:
    path = tmp_path / "energy_uj"
    put(path, WRAP_SEQUENCE[0])
    meter = CounterMeter(
        "rapl:package-0", [Counter(path, 1_000_000)], poll_interval_s=None, clock=FakeClock()
    )
    meter.start()
    for value in WRAP_SEQUENCE[1:-1]:
        put(path, value)
        meter.poll()
    put(path, WRAP_SEQUENCE[-1])
    r = meter.stop()
    assert r.joules == pytest.approx(WRAP_TOTAL_J)
    assert r.note == "counter wrapped 3x"
    assert r.samples == len(WRAP_SEQUENCE)


def test_rapl_background_thread_counts_multiple_wraps(tmp_path: Path) -> None:
    zone = rapl_zone(tmp_path, "0", "package-0", WRAP_SEQUENCE[0], max_uj=1_000_000)
    meter = probe_rapl(tmp_path).meters[0]
    assert isinstance(meter, CounterMeter)
    assert meter.poll_interval_s == pytest.approx(0.01)  # a 1 J range wraps fast: poll often
    meter.start()
    for value in WRAP_SEQUENCE[1:-1]:
        put(zone / "energy_uj", value)
        seen = meter.reads
        wait_until(lambda seen=seen: meter.reads >= seen + 2, "a background poll after the write")
    put(zone / "energy_uj", WRAP_SEQUENCE[-1])
    r = meter.stop()
    # start/stop alone would see 900000 -> 150000: one wrap, 0.25 J
    assert r.joules == pytest.approx(WRAP_TOTAL_J)
    assert r.note == "counter wrapped 3x"


def test_rapl_permission_denied_is_unavailable_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    denied = rapl_zone(tmp_path, "0", "package-0", 1_000)
    rapl_zone(tmp_path, "1", "package-1", 2_000)
    os.chmod(denied / "energy_uj", 0o000)  # the post-2020 kernel default for energy_uj is 0400 root
    emulate_unprivileged(monkeypatch)
    probe = probe_rapl(tmp_path)
    assert [m.source for m in probe.meters] == ["rapl:package-1"]
    assert len(probe.unavailable) == 1
    source, reason = probe.unavailable[0]
    assert source == "rapl:package-0"
    assert "permission denied" in reason and "intel-rapl:0/energy_uj" in reason
    assert reason.count(".") >= 1 and "\n" not in reason


def test_rapl_psys_then_summed_packages_then_each(tmp_path: Path) -> None:
    p0 = rapl_zone(tmp_path, "0", "package-0", 1_000_000)
    p1 = rapl_zone(tmp_path, "1", "package-1", 5_000_000)
    psys = rapl_zone(tmp_path, "2", "psys", 0)
    meters = probe_rapl(tmp_path, clock=FakeClock()).meters
    assert [m.source for m in meters] == [
        "rapl:psys",
        "rapl:package-0+package-1",
        "rapl:package-0",
        "rapl:package-1",
    ]
    for m in meters:
        m.start()
    put(p0 / "energy_uj", 2_000_000)
    put(p1 / "energy_uj", 8_000_000)
    put(psys / "energy_uj", 10_000_000)
    joules = {m.source: m.stop().joules for m in meters}
    assert joules == pytest.approx(
        {"rapl:psys": 10.0, "rapl:package-0+package-1": 4.0, "rapl:package-0": 1.0, "rapl:package-1": 3.0}
    )


def test_stop_before_start_raises() -> None:
    meter = CounterMeter("rapl:x", [], poll_interval_s=None)
    with pytest.raises(MeterError, match="before start"):
        meter.stop()


# ------------------------------------------------------------------------------------------
# hwmon


def test_hwmon_ina_power_and_current_times_voltage(tmp_path: Path) -> None:
    # indices are deliberately not in name order: resolution goes by name, never by index
    ina226 = hwmon(tmp_path, 0, "ina226", {"power1_input": 2_000_000, "curr1_input": 400, "in1_input": 5000})
    hwmon(tmp_path, 1, "coretemp", {"temp1_input": 45000})
    ina219 = hwmon(tmp_path, 2, "ina219", {"curr1_input": 500, "in1_input": 5000, "in0_input": 2})
    clock = FakeClock()
    meters = probe_hwmon(tmp_path, interval_s=None, clock=clock).meters
    assert [m.source for m in meters] == ["hwmon:ina219(curr1*in1)", "hwmon:ina226(power1)"]
    m219, m226 = meters
    m219.start()
    m226.start()
    clock.t = 1.0
    put(ina226 / "power1_input", 4_000_000)  # uW
    put(ina219 / "curr1_input", 700)  # mA at 5000 mV: 3.5 W
    for m in meters:
        assert isinstance(m, SampledMeter)
        m.sample()
    clock.t = 2.0
    r226, r219 = m226.stop(), m219.stop()
    # trapezoid: (2 + 4)/2 x 1 s + 4 x 1 s
    assert r226.joules == pytest.approx(7.0)
    assert (r226.seconds, r226.samples) == (2.0, 3)
    # 500 mA x 5 V = 2.5 W, then 3.5 W: (2.5 + 3.5)/2 + 3.5
    assert r219.joules == pytest.approx(6.5)
    assert r219.avg_watts == pytest.approx(3.25)


def ina3221_tree(root: Path, index: int, labels: list[str], milliamps: list[int]) -> Path:
    files: dict[str, object] = {}
    for n, (label, ma) in enumerate(zip(labels, milliamps, strict=True), start=1):
        files |= {f"in{n}_label": label, f"curr{n}_input": ma, f"in{n}_input": 5000, f"in{n + 3}_input": 4}
    return hwmon(root, index, "ina3221", files)


def test_ina3221_picks_total_input_rail_by_label_across_boots(tmp_path: Path) -> None:
    boot_a, boot_b = tmp_path / "a", tmp_path / "b"
    # boot A: ina3221 is hwmon1 and VDD_IN is channel 1
    hwmon(boot_a, 0, "thermal", {"temp1_input": 40000})
    ina3221_tree(boot_a, 1, ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"], [1200, 300, 250])
    # boot B: indices moved, the label is quoted and VDD_IN is channel 3
    ina3221_tree(boot_b, 0, ["VDD_CPU_GPU_CV", "VDD_SOC", '"VDD_IN"'], [300, 250, 1200])
    hwmon(boot_b, 1, "thermal", {"temp1_input": 40000})
    for root in (boot_a, boot_b):
        clock = FakeClock()
        meters = probe_hwmon(root, interval_s=None, clock=clock).meters
        assert [m.source for m in meters] == ["hwmon:ina3221(VDD_IN)"]
        meters[0].start()
        clock.t = 2.0
        r = meters[0].stop()
        assert r.avg_watts == pytest.approx(1.2 * 5.0)  # 1200 mA x 5000 mV
        assert r.joules == pytest.approx(12.0)


def test_ina3221_without_total_rail_sums_channels(tmp_path: Path) -> None:
    ina3221_tree(tmp_path, 3, ["GPU", "CPU", "SOC"], [100, 300, 200])
    clock = FakeClock()
    (meter,) = probe_hwmon(tmp_path, interval_s=None, clock=clock).meters
    assert meter.source == "hwmon:ina3221(sum:GPU+CPU+SOC)"
    meter.start()
    clock.t = 1.0
    r = meter.stop()
    assert r.joules == pytest.approx(0.6 * 5.0)
    assert r.note == "no total input rail: sum of channels"


def test_hwmon_energy_counter_and_reset(tmp_path: Path) -> None:
    d = hwmon(tmp_path, 5, "amd_energy", {"energy1_input": 5_000_000, "energy1_label": "Esocket0"})
    clock = FakeClock()
    (meter,) = probe_hwmon(tmp_path, clock=clock).meters
    assert meter.source == "hwmon:amd_energy(Esocket0)"
    meter.start()
    put(d / "energy1_input", 8_000_000)
    clock.t = 3.0
    r = meter.stop()
    assert (r.joules, r.avg_watts, r.note) == (pytest.approx(3.0), pytest.approx(1.0), "")
    meter.start()
    put(d / "energy1_input", 1_000_000)  # went down with no wrap range: the counter was reset
    r = meter.stop()
    assert r.joules == pytest.approx(1.0)
    assert r.note == "counter reset 1x"


def test_unreadable_hwmon_sensor_is_reported(tmp_path: Path) -> None:
    d = hwmon(tmp_path, 0, "ina226", {"curr1_input": 400, "in1_input": 5000})
    (d / "power1_input").mkdir()  # exists but cannot be read as a file
    probe = probe_hwmon(tmp_path)
    assert probe.meters == []
    assert probe.unavailable == [
        ("hwmon:ina226(power1)", f"Cannot read {d / 'power1_input'}: Is a directory.")
    ]


def test_duplicate_hwmon_names_are_told_apart_by_device(tmp_path: Path) -> None:
    for index, addr, uw in [(0, "1-0041", 1_000_000), (1, "1-0040", 2_000_000)]:
        d = hwmon(tmp_path, index, "ina226", {"power1_input": uw})
        dev = tmp_path / "sys/devices/i2c-1" / addr
        dev.mkdir(parents=True)
        (d / "device").symlink_to(dev)
    meters = probe_hwmon(tmp_path, interval_s=None, clock=FakeClock()).meters
    assert [m.source for m in meters] == ["hwmon:ina226@1-0040(power1)", "hwmon:ina226@1-0041(power1)"]


def test_sampled_meter_background_thread_integrates() -> None:
    calls = 0
    enough = threading.Event()

    def read() -> tuple[float, str]:
        nonlocal calls
        calls += 1
        if calls >= 6:
            enough.set()
        return 3.0, ""

    meter = SampledMeter("const", read, interval_s=0.001)
    meter.start()
    assert enough.wait(10)
    r = meter.stop()
    assert r.samples >= 6
    assert r.seconds > 0
    assert r.avg_watts == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------
# Raspberry Pi 5

PI5_OUTPUT = """\
     3V7_WL_SW_A current(0)=0.00390372A
       3V3_SYS_A current(1)=0.05660400A
       1V8_SYS_A current(2)=0.17663280A
      DDR_VDD2_A current(3)=0.02537418A
      DDR_VDDQ_A current(4)=0.00000000A
       1V1_SYS_A current(5)=0.18837240A
       0V8_SYS_A current(6)=0.34352640A
      VDD_CORE_A current(7)=1.08053000A
       3V3_DAC_A current(17)=0.00000000A
       3V3_ADC_A current(18)=0.00024420A
       0V8_AON_A current(16)=0.00512820A
          HDMI_A current(22)=0.02051280A
     3V7_WL_SW_V volt(8)=3.71335800V
       3V3_SYS_V volt(9)=3.31554900V
       1V8_SYS_V volt(10)=1.79487000V
      DDR_VDD2_V volt(11)=1.11135400V
      DDR_VDDQ_V volt(12)=0.60586000V
       1V1_SYS_V volt(13)=1.11160300V
       0V8_SYS_V volt(14)=0.80073240V
      VDD_CORE_V volt(15)=0.72178200V
       3V3_DAC_V volt(20)=3.31000200V
       3V3_ADC_V volt(21)=3.31275000V
       0V8_AON_V volt(19)=0.80463000V
          HDMI_V volt(23)=5.15046000V
         EXT5V_V volt(24)=5.15096000V
          BATT_V volt(25)=0.00000000V
"""
PI5_PAIRS = [
    (0.00390372, 3.71335800),
    (0.05660400, 3.31554900),
    (0.17663280, 1.79487000),
    (0.02537418, 1.11135400),
    (0.00000000, 0.60586000),
    (0.18837240, 1.11160300),
    (0.34352640, 0.80073240),
    (1.08053000, 0.72178200),
    (0.00000000, 3.31000200),
    (0.00024420, 3.31275000),
    (0.00512820, 0.80463000),
    (0.02051280, 5.15046000),
]
PI5_WATTS = sum(a * v for a, v in PI5_PAIRS)
OLD_PI_OUTPUT = 'error=1 error_msg="Command not registered"\n'


def test_parse_pmic_read_adc_pairs_rails_and_skips_voltage_only() -> None:
    rails = parse_pmic_read_adc(PI5_OUTPUT)
    assert len(rails) == 12
    assert "EXT5V" not in rails and "BATT" not in rails
    assert rails["VDD_CORE"] == (1.08053, 0.721782)
    assert sum(a * v for a, v in rails.values()) == pytest.approx(PI5_WATTS)
    assert PI5_WATTS == pytest.approx(1.9224, abs=1e-4)  # by hand: 0.0145 + 0.1877 + ... + 0.1057


def test_pi5_meter_integrates_pmic_power() -> None:
    calls: list[list[str]] = []
    hot_output = PI5_OUTPUT.replace("VDD_CORE_A current(7)=1.08053000A", "VDD_CORE_A current(7)=3.08053000A")
    outputs = [PI5_OUTPUT, PI5_OUTPUT, hot_output]  # probe, start, stop

    def run_cmd(argv: list[str]) -> str:
        calls.append(argv)
        return outputs[len(calls) - 1]

    clock = FakeClock()
    probe = probe_pi5(run_cmd, interval_s=None, clock=clock)
    (meter,) = probe.meters
    assert meter.source == "pi5-pmic" and probe.unavailable == []
    meter.start()
    clock.t = 1.0
    r = meter.stop()
    assert calls == [["vcgencmd", "pmic_read_adc"]] * 3  # probe, start, stop
    hot = PI5_WATTS + 2.0 * 0.721782
    assert r.joules == pytest.approx((PI5_WATTS + hot) / 2)
    assert r.samples == 2


def test_old_pi_answers_command_not_registered() -> None:
    probe = probe_pi5(lambda argv: OLD_PI_OUTPUT)
    assert probe.meters == []
    ((source, reason),) = probe.unavailable
    assert source == "pi5-pmic"
    assert "Command not registered" in reason and "not a Raspberry Pi 5" in reason


def test_pi5_missing_vcgencmd_is_unavailable() -> None:
    def run_cmd(argv: list[str]) -> str:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    probe = probe_pi5(run_cmd)
    assert probe.meters == []
    assert "Cannot run vcgencmd pmic_read_adc" in probe.unavailable[0][1]


def test_default_run_command_uses_argument_list() -> None:
    out = run_command([sys.executable, "-c", "print('VDD_CORE_A current(7)=1.5A')"])
    assert out == "VDD_CORE_A current(7)=1.5A\n"


# ------------------------------------------------------------------------------------------
# Android battery


def battery(root: Path, current: int, voltage_uv: int, status: str) -> Path:
    d = root / "sys/class/power_supply/battery"
    put(d / "current_now", current)
    put(d / "voltage_now", voltage_uv)
    put(d / "status", status)
    put(d / "type", "Battery")
    return d


@pytest.mark.parametrize(
    ("current", "unit"),
    [(450_000, "uA"), (-450_000, "uA"), (450, "mA"), (-450, "mA")],
)
def test_android_units_and_sign_while_discharging(tmp_path: Path, current: int, unit: str) -> None:
    d = battery(tmp_path, current, 3_850_000, "Discharging")
    reader = AndroidBatteryReader(d)
    watts, note = reader()
    assert watts == pytest.approx(0.45 * 3.85)
    assert note == ""
    assert reader.unit == unit
    assert reader.discharge_sign == (1 if current > 0 else -1)


@pytest.mark.parametrize("current", [1_000_000, -1_000_000, 1000, -1000])
def test_android_charging_is_negative_and_noted(tmp_path: Path, current: int) -> None:
    d = battery(tmp_path, current, 4_200_000, "Charging")
    watts, note = AndroidBatteryReader(d)()
    assert watts == pytest.approx(-1.0 * 4.2)  # the battery takes 1 A: it powers nothing
    assert note == "charging: readings contaminated"


def test_android_convention_is_locked_once_learned(tmp_path: Path) -> None:
    d = battery(tmp_path, -300_000, 3_800_000, "Discharging")
    reader = AndroidBatteryReader(d)
    assert reader()[0] == pytest.approx(0.3 * 3.8)
    put(d / "status", "Unknown")
    put(d / "current_now", -15_000)  # 15 mA: below the uA threshold, but the unit is locked
    assert reader()[0] == pytest.approx(0.015 * 3.8)


def test_android_meter_integrates_and_notes_charging(tmp_path: Path) -> None:
    d = battery(tmp_path, 500_000, 4_000_000, "Discharging")
    clock = FakeClock()
    (meter,) = probe_android(tmp_path, interval_s=None, clock=clock).meters
    assert meter.source == "android-battery"
    meter.start()
    clock.t = 1.0
    put(d / "current_now", 1_000_000)
    meter.sample()
    clock.t = 2.0
    put(d / "status", "Charging")
    put(d / "current_now", -250_000)  # positive while discharging, so negative = charging
    r = meter.stop()
    # 2 W, 4 W, then charging at 0.25 A: -1 W  ->  (2 + 4)/2 + (4 - 1)/2
    assert r.joules == pytest.approx(4.5)
    assert r.note == "charging: readings contaminated"


def test_android_rejects_unknown_unit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="current_unit"):
        AndroidBatteryReader(tmp_path, current_unit="A")


# ------------------------------------------------------------------------------------------
# Jetson tegrastats

ORIN_NANO = (
    "RAM 2711/7620MB (lfb 6x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,0%@729,2%@729,0%@729,off,off] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] VIC_FREQ 115 APE 174 CPU@47.5C SOC2@43.406C SOC0@44.5C "
    "GPU@43.125C tj@47.5C SOC1@43.218C VDD_IN 5336/4970 VDD_CPU_GPU_CV 1013/1013 VDD_SOC 1447/1447"
)
AGX_ORIN = (
    "12-05-2023 10:33:02 RAM 2711/30536MB (lfb 6384x4MB) SWAP 0/15268MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 "
    "CPU@44.5C Tboard@32C SOC2@40.75C tj@44.5C VDD_GPU_SOC 2785mW/2785mW VDD_CPU_CV 397mW/397mW "
    "VIN_SYS_5V0 3620mW/3620mW NC 0mW/0mW VDDQ_VDD2_1V8AO 503mW/503mW VDD_IN 7421mW/8050mW"
)
NANO_L4T32 = (
    "RAM 2153/3964MB (lfb 125x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lb 252kB) "
    "CPU [12%@1479,8%@1479,5%@1479,7%@1479] EMC_FREQ 0% GR3D_FREQ 0% PLL@31C CPU@34C PMIC@100C "
    "GPU@32.5C AO@40.5C thermal@33.25C POM_5V_IN 2517/2517 POM_5V_GPU 0/0 POM_5V_CPU 394/394"
)


def test_parse_tegrastats_plain_format() -> None:
    assert parse_tegrastats_line(ORIN_NANO) == {
        "VDD_IN": (5336.0, 4970.0),
        "VDD_CPU_GPU_CV": (1013.0, 1013.0),
        "VDD_SOC": (1447.0, 1447.0),
    }
    assert parse_tegrastats_line(NANO_L4T32) == {
        "POM_5V_IN": (2517.0, 2517.0),
        "POM_5V_GPU": (0.0, 0.0),
        "POM_5V_CPU": (394.0, 394.0),
    }


def test_parse_tegrastats_mw_format() -> None:
    rails = parse_tegrastats_line(AGX_ORIN)
    assert rails["VDD_IN"] == (7421.0, 8050.0)
    assert rails["VIN_SYS_5V0"] == (3620.0, 3620.0)
    assert set(rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO", "VDD_IN"}
    assert parse_tegrastats_line("RAM 2711/30536MB SWAP 0/15268MB") == {}


def test_tegrastats_meter_reads_a_stream() -> None:
    clock = FakeClock()
    powers_mw = [5000, 5000, 6000, 6000]

    def lines():
        for i, mw in enumerate(powers_mw, start=1):
            clock.t = float(i)  # one line per second, as `tegrastats --interval 1000`
            yield ORIN_NANO.replace("VDD_IN 5336/4970", f"VDD_IN {mw}/5500")

    meter = TegrastatsMeter(lines=lines(), clock=clock)
    assert meter.source == "jetson:VDD_IN"
    meter.start()
    wait_until(lambda: meter.samples == 4, "the stream to be consumed")
    clock.t = 5.0
    r = meter.stop()
    # held 5 W from 0 to 1 s, then 5, 5->6, 6, held 6 W to 5 s
    assert r.joules == pytest.approx(5 + 5 + 5.5 + 6 + 6)
    assert (r.seconds, r.samples, r.note) == (5.0, 4, "")


def test_tegrastats_meter_feed_mw_format_and_missing_rail() -> None:
    clock = FakeClock()
    meter = TegrastatsMeter("VDD_IN", lines=[], clock=clock)
    meter.start()
    meter.feed(AGX_ORIN, t=0.5)
    meter.feed("RAM 2711/30536MB (lfb 6384x4MB)", t=1.0)
    meter.feed(AGX_ORIN.replace("7421mW/8050mW", "9421mW/8050mW"), t=1.5)
    clock.t = 2.0
    r = meter.stop()
    assert r.joules == pytest.approx(7.421 * 0.5 + (7.421 + 9.421) / 2 + 9.421 * 0.5)
    assert r.note == "1 lines without VDD_IN"


def test_tegrastats_meter_without_readings_raises() -> None:
    meter = TegrastatsMeter(lines=[NANO_L4T32], clock=FakeClock())  # the Nano has no VDD_IN
    meter.start()
    with pytest.raises(MeterError, match="no VDD_IN reading"):
        meter.stop()


def test_tegrastats_missing_binary_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MeterError, match=r"^Cannot start tegrastats: .*\.$"):
        TegrastatsMeter().start()


# ------------------------------------------------------------------------------------------
# discovery


def test_discover_meters_empty_tree(tmp_path: Path) -> None:
    assert discover_meters(str(tmp_path), run_cmd=lambda argv: OLD_PI_OUTPUT) == []


def test_discover_meters_orders_best_first(tmp_path: Path) -> None:
    battery(tmp_path, 450_000, 3_850_000, "Discharging")
    rapl_zone(tmp_path, "0", "package-0", 1_000)
    hwmon(tmp_path, 0, "amd_energy", {"energy1_input": 5, "energy1_label": "Esocket0"})
    hwmon(tmp_path, 1, "ina260", {"power1_input": 1_500_000})
    probe = probe_meters(tmp_path, run_cmd=lambda argv: PI5_OUTPUT)
    assert [m.source for m in probe.meters] == [
        "hwmon:ina260(power1)",
        "hwmon:amd_energy(Esocket0)",
        "rapl:package-0",
        "pi5-pmic",
        "android-battery",
    ]
    assert [m.measured for m in probe.meters] == [True] * 5
    sources = [m.source for m in discover_meters(str(tmp_path), run_cmd=lambda argv: PI5_OUTPUT)]
    assert sources == [m.source for m in probe.meters]
