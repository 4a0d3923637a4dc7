"""Power and energy meters read on the target device.

This file is pushed as a plain file next to the device-side agent: it imports only the Python
standard library (numpy is allowed but not needed) and nothing from the ``runners`` package.

Units, everywhere in this module unless a name says otherwise:

* energy in joules (J); sysfs counters are microjoules (uJ) and are converted on read;
* power in watts (W); sysfs power is microwatts (uW), current milliamps (mA) or microamps (uA),
  voltage millivolts (mV) or microvolts (uV), converted on read;
* time in seconds (s) from a monotonic clock (injectable for tests).

Every sysfs reader takes a ``root`` directory (default ``"/"``), so tests run them against a tree
built in a temporary directory. Two kinds of meters exist:

* counter meters (Intel RAPL, hwmon ``energy*_input``) read a cumulative uJ counter at start and
  stop, and poll it from a background thread so that counter wrap-arounds are all counted;
* sampled meters (hwmon INA2xx/INA3221 power, Raspberry Pi 5 PMIC, Android battery, Jetson
  tegrastats) read instantaneous power from a background thread and integrate it over time with
  the trapezoid rule.

Use :func:`discover_meters` to get the available meters, best first, then ``start()`` /
``stop()`` one of them around the timed loop. :func:`estimate_energy` gives an unmeasured estimate
from a device profile's power model when no meter exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]
RunCmd = Callable[[list[str]], str]
PowerRead = Callable[[], tuple[float, str]]

UJ_PER_J = 1e6
ESTIMATE_SOURCE = "estimate:profile power model"
INA_NAME = re.compile(r"^ina\d+")
TOTAL_RAIL = re.compile(r"(^|_)V?IN(_|$)|^SYS5V$")
RAPL_ZONE = re.compile(r"^intel-rapl:\d+$")


class MeterError(RuntimeError):
    """A meter cannot be read; the message is one sentence naming the file or command."""


@dataclass(frozen=True)
class MeterResult:
    """Energy over one measured window.

    ``joules`` (J) over ``seconds`` (s); ``measured`` is False for estimates; ``samples`` counts
    sensor reads (sampled and polled meters); ``note`` flags anything that makes the number less
    trustworthy (charging, wrapped counters, failed reads).
    """

    joules: float
    seconds: float
    source: str
    measured: bool
    samples: int = 0
    note: str = ""

    @property
    def avg_watts(self) -> float:
        """Average power in W over the window; 0.0 for an empty window."""
        return self.joules / self.seconds if self.seconds > 0 else 0.0


@runtime_checkable
class Meter(Protocol):
    """Something that measures energy between ``start()`` and ``stop()``."""

    source: str
    measured: bool

    def start(self) -> None: ...

    def stop(self) -> MeterResult: ...


@dataclass
class MeterProbe:
    """What :func:`probe_meters` found: usable meters (best first) and why others are unusable."""

    meters: list[Meter] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)  # (source, one-sentence reason)


# --------------------------------------------------------------------------------------------
# sysfs helpers


def read_sysfs(path: str | Path) -> str:
    """Return the stripped text of one sysfs attribute (the single point of file access)."""
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read().strip()


def _read_number(path: Path) -> float:
    """Read one numeric sysfs attribute; raise MeterError with one sentence on any failure."""
    try:
        text = read_sysfs(path)
    except PermissionError:
        raise MeterError(f"Cannot read {path}: permission denied (run as root or relax its mode).") from None
    except OSError as exc:
        raise MeterError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    try:
        return float(text)
    except ValueError:
        raise MeterError(f"{path} holds {text!r}, not a number.") from None


def _read_label(path: Path) -> str:
    """Read a ``name`` / ``*_label`` / ``status`` attribute; '' when absent or unreadable."""
    try:
        return read_sysfs(path).strip().strip('"').strip()
    except OSError:
        return ""


def _join_notes(notes: Iterable[str]) -> str:
    return "; ".join(sorted({n for n in notes if n}))


class _Ticker:
    """Calls ``fn`` every ``interval_s`` seconds from a daemon thread until stopped."""

    def __init__(self, interval_s: float, fn: Callable[[], object]) -> None:
        self._interval_s = interval_s
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="energy-meter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._fn()


# --------------------------------------------------------------------------------------------
# counter meters (RAPL, hwmon energy*_input)


@dataclass(frozen=True)
class Counter:
    """One cumulative energy counter file in uJ; ``max_range_uj`` is where it wraps (None: 64-bit)."""

    path: Path
    max_range_uj: float | None = None


def _counter_step(prev: float, cur: float, max_range_uj: float | None) -> tuple[float, str]:
    """Energy in uJ between two readings of one counter, and '' | 'wrap' | 'reset'."""
    if cur >= prev:
        return cur - prev, ""
    if max_range_uj:
        return cur + max_range_uj - prev, "wrap"
    return cur, "reset"


class CounterMeter:
    """Energy from one or more cumulative uJ counters (summed), polled to count every wrap.

    ``poll_interval_s`` must be shorter than the time the counter takes to wrap at the highest
    power; ``None`` disables the background thread (call :meth:`poll` yourself).
    """

    measured = True

    def __init__(
        self,
        source: str,
        counters: Sequence[Counter],
        *,
        poll_interval_s: float | None = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.counters = list(counters)
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._ticker: _Ticker | None = None
        self._last: list[float] = []
        self._t0: float | None = None
        self._uj = 0.0
        self._reads = 0
        self._events: dict[str, int] = {}
        self._failed = 0

    @property
    def reads(self) -> int:
        """Counter reads since start() (start, background polls, stop)."""
        with self._lock:
            return self._reads

    def _read_all(self) -> list[float]:
        return [_read_number(c.path) for c in self.counters]

    def start(self) -> None:
        """Read every counter (raises MeterError when unreadable) and start polling."""
        self._stop_ticker()
        values = self._read_all()
        with self._lock:
            self._last, self._uj, self._reads = values, 0.0, 1
            self._events, self._failed = {}, 0
            self._t0 = self._clock()
        if self.poll_interval_s is not None:
            self._ticker = _Ticker(self.poll_interval_s, self._poll_quietly)
            self._ticker.start()

    def poll(self) -> None:
        """Read every counter once and add the energy since the previous read."""
        with self._lock:  # read under the lock: a stale read racing a newer one would look like a wrap
            if self._t0 is None:
                raise MeterError(f"{self.source}: poll() called before start().")
            values = self._read_all()
            for i, (counter, cur) in enumerate(zip(self.counters, values, strict=True)):
                step, event = _counter_step(self._last[i], cur, counter.max_range_uj)
                self._uj += step
                if event:
                    self._events[event] = self._events.get(event, 0) + 1
            self._last = values
            self._reads += 1

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def _poll_quietly(self) -> None:
        try:
            self.poll()
        except MeterError:
            with self._lock:
                self._failed += 1

    def stop(self) -> MeterResult:
        """Stop polling, read the counters a last time and return the energy since start()."""
        if self._t0 is None:
            raise MeterError(f"{self.source}: stop() called before start().")
        self._stop_ticker()
        self.poll()
        t1 = self._clock()
        with self._lock:
            words = {"wrap": "wrapped", "reset": "reset"}
            notes = [f"counter {words[kind]} {n}x" for kind, n in self._events.items()]
            if self._failed:
                notes.append(f"{self._failed} background reads failed")
            result = MeterResult(
                joules=self._uj / UJ_PER_J,
                seconds=t1 - self._t0,
                source=self.source,
                measured=True,
                samples=self._reads,
                note=_join_notes(notes),
            )
            self._t0 = None
        return result


# --------------------------------------------------------------------------------------------
# sampled meters (power sensors)


class SampledMeter:
    """Energy from an instantaneous power reading, sampled and integrated (trapezoid rule).

    ``read`` returns ``(watts, note)``; ``interval_s`` is the sampling period in s (``None``:
    no background thread, call :meth:`sample` yourself). Each sample is timestamped at the
    midpoint of its read, so slow reads (a subprocess) do not skew the time axis.
    """

    measured = True

    def __init__(
        self,
        source: str,
        read: PowerRead,
        *,
        interval_s: float | None = 0.01,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._ticker: _Ticker | None = None
        self._reset()

    def _reset(self) -> None:
        self._t_first: float | None = None
        self._last: tuple[float, float] | None = None
        self._joules = 0.0
        self._samples = 0
        self._failed = 0
        self._notes: set[str] = set()

    def start(self) -> None:
        """Take the first sample (raises MeterError when the sensor is unreadable) and start."""
        self._stop_ticker()
        with self._lock:
            self._reset()
        self.sample()
        if self.interval_s is not None:
            self._ticker = _Ticker(self.interval_s, self._sample_quietly)
            self._ticker.start()

    def sample(self) -> float:
        """Read power once, integrate since the previous sample, return the reading in W."""
        t0 = self._clock()
        watts, note = self._read()
        t = (t0 + self._clock()) / 2
        with self._lock:
            if self._last is not None:
                t_prev, w_prev = self._last
                self._joules += (w_prev + watts) / 2 * max(t - t_prev, 0.0)
            else:
                self._t_first = t
            self._last = (t, watts)
            self._samples += 1
            if note:
                self._notes.add(note)
        return watts

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def _sample_quietly(self) -> None:
        try:
            self.sample()
        except (MeterError, OSError, subprocess.SubprocessError):
            with self._lock:
                self._failed += 1

    def stop(self) -> MeterResult:
        """Stop sampling, take a last sample and return the integrated energy since start()."""
        if self._t_first is None:
            raise MeterError(f"{self.source}: stop() called before start().")
        self._stop_ticker()
        self.sample()
        with self._lock:
            assert self._last is not None
            notes = set(self._notes)
            if self._failed:
                notes.add(f"{self._failed} samples failed")
            result = MeterResult(
                joules=self._joules,
                seconds=self._last[0] - self._t_first,
                source=self.source,
                measured=True,
                samples=self._samples,
                note=_join_notes(notes),
            )
            self._t_first = None
        return result


# --------------------------------------------------------------------------------------------
# Intel RAPL


def _auto_poll_interval(max_range_uj: float, worst_watts: float = 1000.0) -> float:
    """Poll period (s) that sees every wrap: a quarter of the wrap time at ``worst_watts``."""
    wrap_s = max_range_uj / UJ_PER_J / worst_watts
    return min(1.0, max(0.01, wrap_s / 4))


def _rapl_zone(zone: Path) -> tuple[str, Counter]:
    """Name and counter of one RAPL zone directory; raises MeterError when unreadable."""
    name = _read_label(zone / "name") or zone.name
    max_range = _read_number(zone / "max_energy_range_uj")
    _read_number(zone / "energy_uj")  # probe readability now, not in start()
    return name, Counter(zone / "energy_uj", max_range)


def probe_rapl(root: str | Path = "/", *, clock: Clock = time.monotonic) -> MeterProbe:
    """RAPL meters: ``psys`` (whole platform) first, then all packages summed, then each package."""
    probe = MeterProbe()
    base = Path(root) / "sys/class/powercap"
    zones = [p for p in base.glob("intel-rapl:*") if RAPL_ZONE.match(p.name)] if base.is_dir() else []
    zones.sort(key=lambda p: int(p.name.split(":")[1]))
    found: list[tuple[str, Counter]] = []
    for zone in zones:
        name = _read_label(zone / "name") or zone.name
        try:
            found.append(_rapl_zone(zone))
        except MeterError as exc:
            probe.unavailable.append((f"rapl:{name}", str(exc)))

    def make(names: list[str], counters: list[Counter]) -> CounterMeter:
        interval = min(_auto_poll_interval(c.max_range_uj or 2**64) for c in counters)
        return CounterMeter("rapl:" + "+".join(names), counters, poll_interval_s=interval, clock=clock)

    psys = [(n, c) for n, c in found if n == "psys"]
    packages = [(n, c) for n, c in found if n != "psys"]
    for name, counter in psys:
        probe.meters.append(make([name], [counter]))
    if len(packages) > 1:
        probe.meters.append(make([n for n, _ in packages], [c for _, c in packages]))
    for name, counter in packages:
        probe.meters.append(make([name], [counter]))
    return probe


# --------------------------------------------------------------------------------------------
# hwmon (INA219/226/260/3221 power monitors, generic energy counters)


@dataclass(frozen=True)
class HwmonDevice:
    """One hwmon directory, identified by ``name`` (the index in hwmonN is not stable).

    ``tag`` is the name used in meter sources: the name, plus ``@<device>`` (e.g. the I2C address
    ``1-0040``) when several hwmon devices share that name.
    """

    path: Path
    name: str
    tag: str


def _device_id(hwmon_dir: Path) -> str:
    link = hwmon_dir / "device"
    return link.resolve().name if link.exists() else hwmon_dir.name


def hwmon_devices(root: str | Path = "/") -> list[HwmonDevice]:
    """All hwmon devices under ``root``, ordered by name and device (never by unstable index)."""
    base = Path(root) / "sys/class/hwmon"
    if not base.is_dir():
        return []
    found = sorted(
        (_read_label(p / "name"), _device_id(p), p) for p in base.iterdir() if p.name.startswith("hwmon")
    )
    names = [name for name, _, _ in found]
    return [
        HwmonDevice(p, name, name if names.count(name) == 1 else f"{name}@{dev}") for name, dev, p in found
    ]


def hwmon_channels(device: HwmonDevice, kind: str) -> dict[int, str]:
    """Channel numbers of ``{kind}{N}_input`` files mapped to their label ('' if none).

    The label is ``{kind}{N}_label``; for ``curr`` / ``power`` also ``in{N}_label`` (INA3221
    labels its rails on the ``in`` channels).
    """
    channels: dict[int, str] = {}
    for p in device.path.glob(f"{kind}*_input"):
        m = re.fullmatch(rf"{kind}(\d+)_input", p.name)
        if m:
            n = int(m.group(1))
            label = _read_label(device.path / f"{kind}{n}_label")
            if not label and kind in ("curr", "power"):
                label = _read_label(device.path / f"in{n}_label")
            channels[n] = label
    return dict(sorted(channels.items()))


def ina_power_reader(device: HwmonDevice, channel: int) -> PowerRead:
    """Reader of one INA channel in W: ``power{N}_input`` (uW), else ``curr{N}`` (mA) x ``in{N}`` (mV)."""
    power = device.path / f"power{channel}_input"
    curr = device.path / f"curr{channel}_input"
    volt = device.path / f"in{channel}_input"
    if power.exists():
        return lambda: (_read_number(power) / 1e6, "")
    return lambda: (_read_number(curr) * _read_number(volt) / 1e6, "")  # mA * mV = uW


def _ina_channel_source(device: HwmonDevice, channel: int, label: str) -> str:
    has_power = (device.path / f"power{channel}_input").exists()
    what = f"power{channel}" if has_power else f"curr{channel}*in{channel}"
    return f"hwmon:{device.tag}({label or what})"


def _probe_reader(source: str, read: PowerRead, probe: MeterProbe) -> bool:
    """Try one read now so unreadable sensors are reported at discovery, not mid-run."""
    try:
        read()
    except MeterError as exc:
        probe.unavailable.append((source, str(exc)))
        return False
    return True


def _ina3221_meter(device: HwmonDevice, interval_s: float | None, clock: Clock, probe: MeterProbe) -> None:
    """Add the INA3221 total input rail (VDD_IN, POM_5V_IN, ...) or, failing that, the channel sum."""
    labels = hwmon_channels(device, "curr")
    totals = [n for n, lab in labels.items() if TOTAL_RAIL.search(lab.upper())]
    if totals:
        channel = totals[0]
        source = _ina_channel_source(device, channel, labels[channel])
        read = ina_power_reader(device, channel)
        if _probe_reader(source, read, probe):
            probe.meters.append(SampledMeter(source, read, interval_s=interval_s, clock=clock))
        return
    readers = [ina_power_reader(device, n) for n in labels]
    if not readers:
        return
    source = f"hwmon:{device.tag}(sum:{'+'.join(lab or f'curr{n}' for n, lab in labels.items())})"

    def read_sum() -> tuple[float, str]:
        return sum(r()[0] for r in readers), "no total input rail: sum of channels"

    if _probe_reader(source, read_sum, probe):
        probe.meters.append(SampledMeter(source, read_sum, interval_s=interval_s, clock=clock))


def _ina_meters(device: HwmonDevice, interval_s: float | None, clock: Clock, probe: MeterProbe) -> None:
    """Add one sampled meter per power channel of an INA219/226/260-class monitor."""
    channels = hwmon_channels(device, "power") or hwmon_channels(device, "curr")
    for channel, label in channels.items():
        source = _ina_channel_source(device, channel, label)
        read = ina_power_reader(device, channel)
        if _probe_reader(source, read, probe):
            probe.meters.append(SampledMeter(source, read, interval_s=interval_s, clock=clock))


def probe_hwmon(
    root: str | Path = "/", *, interval_s: float | None = 0.01, clock: Clock = time.monotonic
) -> MeterProbe:
    """hwmon meters: INA power monitors (sampled) first, then any ``energy*_input`` counters."""
    probe = MeterProbe()
    devices = hwmon_devices(root)
    for device in devices:
        if device.name == "ina3221":
            _ina3221_meter(device, interval_s, clock, probe)
        elif INA_NAME.match(device.name):
            _ina_meters(device, interval_s, clock, probe)
    for device in devices:
        for channel, label in hwmon_channels(device, "energy").items():
            source = f"hwmon:{device.tag}({label or f'energy{channel}'})"
            path = device.path / f"energy{channel}_input"
            try:
                _read_number(path)
            except MeterError as exc:
                probe.unavailable.append((source, str(exc)))
                continue
            probe.meters.append(CounterMeter(source, [Counter(path)], poll_interval_s=1.0, clock=clock))
    return probe


# --------------------------------------------------------------------------------------------
# Raspberry Pi 5 PMIC (vcgencmd pmic_read_adc)

PMIC_LINE = re.compile(
    r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+)[AV]\s*$"
)


def run_command(argv: list[str]) -> str:
    """Run ``argv`` (no shell) with a 5 s timeout and return its stdout (stderr if stdout is empty)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    return proc.stdout if proc.stdout.strip() else proc.stderr


def parse_pmic_read_adc(text: str) -> dict[str, tuple[float, float]]:
    """Rails with both a current and a voltage: ``{rail: (amps, volts)}``.

    Rails with a voltage only (EXT5V, BATT) are left out; an ``error=`` answer (older Pis print
    ``error=1 error_msg="Command not registered"``) raises MeterError.
    """
    if re.search(r"^\s*error=", text, re.MULTILINE):
        msg = re.search(r'error_msg="([^"]*)"', text)
        reason = msg.group(1) if msg else text.strip()
        raise MeterError(f"vcgencmd pmic_read_adc failed ({reason}): this is not a Raspberry Pi 5.")
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = PMIC_LINE.match(line)
        if m:
            (amps if m["kind"] == "A" else volts)[m["rail"]] = float(m["value"])
    return {rail: (amps[rail], volts[rail]) for rail in sorted(amps.keys() & volts.keys())}


def pi5_pmic_reader(run_cmd: RunCmd = run_command) -> PowerRead:
    """Reader of the Pi 5 PMIC in W: the sum of current x voltage over all paired rails."""

    def read() -> tuple[float, str]:
        try:
            text = run_cmd(["vcgencmd", "pmic_read_adc"])
        except (OSError, subprocess.SubprocessError) as exc:
            raise MeterError(f"Cannot run vcgencmd pmic_read_adc: {exc}.") from None
        rails = parse_pmic_read_adc(text)
        if not rails:
            raise MeterError("vcgencmd pmic_read_adc printed no rail with both current and voltage.")
        return sum(a * v for a, v in rails.values()), ""

    return read


def probe_pi5(
    run_cmd: RunCmd | None = None, *, interval_s: float | None = 0.1, clock: Clock = time.monotonic
) -> MeterProbe:
    """The Pi 5 PMIC meter when ``vcgencmd pmic_read_adc`` answers with rails."""
    probe = MeterProbe()
    if run_cmd is None:
        if shutil.which("vcgencmd") is None:
            return probe
        run_cmd = run_command
    read = pi5_pmic_reader(run_cmd)
    if _probe_reader("pi5-pmic", read, probe):
        probe.meters.append(SampledMeter("pi5-pmic", read, interval_s=interval_s, clock=clock))
    return probe


# --------------------------------------------------------------------------------------------
# Android battery (power_supply)


def _to_volts(raw: float) -> float:
    """voltage_now is uV by the ABI; a few devices report mV (or V)."""
    if abs(raw) > 100_000:
        return raw / 1e6
    if abs(raw) > 100:
        return raw / 1e3
    return raw


class AndroidBatteryReader:
    """Battery discharge power in W from ``current_now`` and ``voltage_now``.

    Units and sign vary by device: the current unit is uA when ``|current_now| >= 20000``, else mA
    (``current_unit`` forces one); the sign meaning "discharging" is learned from the first sample
    taken while ``status`` is Discharging or Charging (Linux ABI default: negative = discharging).
    Both are locked after the first decision so a run never mixes conventions. Readings taken while
    charging or on external power carry a note: USB power contaminates them.
    """

    UA_THRESHOLD = 20_000

    def __init__(self, battery_dir: Path, *, current_unit: str = "auto") -> None:
        if current_unit not in ("auto", "uA", "mA"):
            raise ValueError(f"current_unit must be 'auto', 'uA' or 'mA', not {current_unit!r}.")
        self.dir = battery_dir
        self.unit: str | None = None if current_unit == "auto" else current_unit
        self.discharge_sign: int | None = None

    def _amps(self, raw: float) -> float:
        if self.unit is None and raw != 0:
            self.unit = "uA" if abs(raw) >= self.UA_THRESHOLD else "mA"
        return raw / (1e6 if self.unit == "uA" else 1e3)

    def _learn_sign(self, raw: float, status: str) -> int:
        if self.discharge_sign is None and raw != 0 and status in ("Discharging", "Charging"):
            positive = (raw > 0) == (status == "Discharging")
            self.discharge_sign = 1 if positive else -1
        return self.discharge_sign if self.discharge_sign is not None else -1

    def __call__(self) -> tuple[float, str]:
        raw_i = _read_number(self.dir / "current_now")
        volts = _to_volts(_read_number(self.dir / "voltage_now"))
        status = _read_label(self.dir / "status")
        amps = self._amps(raw_i) * self._learn_sign(raw_i, status)
        note = ""
        if status == "Charging":
            note = "charging: readings contaminated"
        elif status in ("Full", "Not charging"):
            note = "on external power: readings contaminated"
        return amps * volts, note


def probe_android(
    root: str | Path = "/", *, interval_s: float | None = 0.1, clock: Clock = time.monotonic
) -> MeterProbe:
    """The Android battery meter when ``power_supply/battery`` has current_now and voltage_now."""
    probe = MeterProbe()
    battery = Path(root) / "sys/class/power_supply/battery"
    if not (battery / "current_now").exists() or not (battery / "voltage_now").exists():
        return probe
    read = AndroidBatteryReader(battery)
    if _probe_reader("android-battery", read, probe):
        # The probe read may have locked unit and sign from a stale status: start afresh.
        read = AndroidBatteryReader(battery)
        probe.meters.append(SampledMeter("android-battery", read, interval_s=interval_s, clock=clock))
    return probe


# --------------------------------------------------------------------------------------------
# Jetson tegrastats

TEGRA_RAIL = re.compile(
    r"(?<![\w@])(?P<rail>[A-Za-z][A-Za-z0-9_]*)\s+"
    r"(?P<cur>\d+(?:\.\d+)?)(?P<mw>mW)?/(?P<avg>\d+(?:\.\d+)?)(?(mw)mW)(?![\w%/])"
)


def parse_tegrastats_line(line: str) -> dict[str, tuple[float, float]]:
    """Power rails of one tegrastats line: ``{rail: (current_mw, average_mw)}``.

    Both formats are understood: ``VDD_IN 5336/4970`` and ``VDD_IN 7421mW/8050mW`` (mW). Memory
    fields such as ``RAM 2153/3964MB`` are not rails and are skipped.
    """
    return {m["rail"]: (float(m["cur"]), float(m["avg"])) for m in TEGRA_RAIL.finditer(line)}


class TegrastatsMeter:
    """Energy of one Jetson rail (default ``VDD_IN``, the board input) from a tegrastats stream.

    ``lines`` is the line source (default: a ``tegrastats --interval interval_ms`` subprocess).
    Each line is timestamped on arrival with ``clock`` and integrated with the trapezoid rule;
    the first and last readings are held to the window edges. :meth:`feed` is public so any
    line source (or a test) can drive the meter.
    """

    measured = True

    def __init__(
        self,
        rail: str = "VDD_IN",
        *,
        lines: Iterable[str] | None = None,
        interval_ms: int = 100,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rail = rail
        self.source = f"jetson:{rail}"
        self.interval_ms = interval_ms
        self._lines = lines
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._t0: float | None = None
        self._points: list[tuple[float, float]] = []
        self._missing = 0

    @property
    def samples(self) -> int:
        """Readings of the rail received since start()."""
        with self._lock:
            return len(self._points)

    def _line_source(self) -> Iterator[str]:
        if self._lines is not None:
            return iter(self._lines)
        try:
            self._proc = subprocess.Popen(
                ["tegrastats", "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            raise MeterError(f"Cannot start tegrastats: {exc.strerror or exc}.") from None
        assert self._proc.stdout is not None
        return iter(self._proc.stdout)

    def start(self) -> None:
        """Start reading lines in a background thread."""
        with self._lock:
            self._points, self._missing = [], 0
            self._t0 = self._clock()
        self._stop.clear()
        source = self._line_source()
        self._thread = threading.Thread(target=self._pump, args=(source,), name="tegrastats", daemon=True)
        self._thread.start()

    def _pump(self, source: Iterator[str]) -> None:
        for line in source:
            if self._stop.is_set():
                break
            self.feed(line)

    def feed(self, line: str, t: float | None = None) -> None:
        """Add one tegrastats line taken at time ``t`` (s; default: now)."""
        rails = parse_tegrastats_line(line)
        t = self._clock() if t is None else t
        with self._lock:
            if self.rail in rails:
                self._points.append((t, rails[self.rail][0] / 1e3))
            elif line.strip():
                self._missing += 1

    def stop(self) -> MeterResult:
        """Stop reading and return the energy of the rail since start()."""
        if self._t0 is None:
            raise MeterError(f"{self.source}: stop() called before start().")
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        t1 = self._clock()
        with self._lock:
            points, t0, self._t0 = list(self._points), self._t0, None
            missing = self._missing
        if not points:
            raise MeterError(f"tegrastats printed no {self.rail} reading during the measurement.")
        edges = [(t0, points[0][1]), *points, (t1, points[-1][1])]
        joules = sum((w0 + w1) / 2 * max(t1_ - t0_, 0.0) for (t0_, w0), (t1_, w1) in pairwise(edges))
        note = f"{missing} lines without {self.rail}" if missing else ""
        return MeterResult(joules, t1 - t0, self.source, True, samples=len(points), note=note)


# --------------------------------------------------------------------------------------------
# discovery and estimate


def probe_meters(
    root: str | Path = "/",
    *,
    run_cmd: RunCmd | None = None,
    interval_s: float | None = 0.01,
    clock: Clock = time.monotonic,
) -> MeterProbe:
    """All meters under ``root``, best first, with the reasons the unusable ones were skipped.

    Order: board power monitors (hwmon INA2xx / INA3221 input rail), hwmon energy counters, RAPL
    (platform, then packages), Raspberry Pi 5 PMIC, Android battery (coarse, contaminated by USB).
    ``run_cmd`` runs ``vcgencmd`` (default: subprocess, only if vcgencmd is installed).
    Jetson's tegrastats is a long-running stream: build a :class:`TegrastatsMeter` explicitly.
    """
    probe = MeterProbe()
    for part in (
        probe_hwmon(root, interval_s=interval_s, clock=clock),
        probe_rapl(root, clock=clock),
        probe_pi5(run_cmd, clock=clock),
        probe_android(root, clock=clock),
    ):
        probe.meters.extend(part.meters)
        probe.unavailable.extend(part.unavailable)
    return probe


def discover_meters(root: str = "/", *, run_cmd: RunCmd | None = None) -> list[Meter]:
    """Usable meters under ``root``, best first; ``[]`` when there are none."""
    return probe_meters(root, run_cmd=run_cmd).meters


def estimate_energy(
    busy_s: float,
    wall_s: float,
    idle_w: float,
    active_w: float,
    *,
    cores_used: int = 1,
    cores_total: int = 1,
) -> MeterResult:
    """Unmeasured energy (J) from a profile's power model.

    ``energy = idle_w * wall_s + (active_w - idle_w) * busy_s * cores_used / cores_total``: the
    device idles for the whole window (``wall_s``, s) and adds the active-minus-idle power (W)
    while busy (``busy_s``, s), scaled by the fraction of cores the run kept busy.
    """
    if min(busy_s, wall_s, idle_w, active_w) < 0:
        raise ValueError("busy_s, wall_s, idle_w and active_w must all be non-negative.")
    if active_w < idle_w:
        raise ValueError(f"active_w ({active_w} W) must be at least idle_w ({idle_w} W).")
    if not 1 <= cores_used <= cores_total:
        raise ValueError(f"cores_used ({cores_used}) must be between 1 and cores_total ({cores_total}).")
    if busy_s > wall_s * (1 + 1e-9):
        raise ValueError(f"busy_s ({busy_s} s) cannot exceed wall_s ({wall_s} s).")
    joules = idle_w * wall_s + (active_w - idle_w) * busy_s * cores_used / cores_total
    return MeterResult(joules=joules, seconds=wall_s, source=ESTIMATE_SOURCE, measured=False)
